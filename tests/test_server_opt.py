"""The server optimiser on each round's aggregate (FedAvgM, FedAdam), and the loop applying it."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from clients.task.run_config import ConfigError, RunConfig
from server.rounds.loop import run_rounds
from server.rounds.server_opt import ServerOptimizer
from tests.helpers.rounds import make_run

G = {"w": np.array([1.0, -2.0], dtype=np.float32), "steps": np.array([3], dtype=np.int64)}


def _agg(delta: float, steps: int = 4) -> dict[str, np.ndarray]:
    return {"w": G["w"] + np.float32(delta), "steps": np.array([steps], dtype=np.int64)}


def test_none_takes_the_aggregate_as_the_new_model() -> None:
    out = ServerOptimizer("none").step(G, _agg(0.5))
    assert np.array_equal(out["w"], G["w"] + 0.5) and out["w"].dtype == np.float32


def test_momentum_accumulates_pseudo_gradients_fedavgm() -> None:
    opt = ServerOptimizer("momentum", lr=0.5, beta1=0.9)
    first = opt.step(G, _agg(1.0))
    np.testing.assert_allclose(first["w"], G["w"] + 0.5)  # m = delta
    second = opt.step(first, {"w": first["w"] + 1.0, "steps": first["steps"]})
    np.testing.assert_allclose(second["w"], first["w"] + 0.5 * 1.9)  # m = 0.9 m + delta
    assert first["w"].dtype == np.float32


def test_adam_normalises_each_coordinate_fedadam() -> None:
    opt = ServerOptimizer("adam", lr=0.1, beta1=0.9, beta2=0.99, eps=1e-3)
    glob = {"w": np.zeros(2, dtype=np.float32)}
    out = opt.step(glob, {"w": np.array([100.0, -0.01], dtype=np.float32)})
    m = 0.1 * np.array([100.0, -0.01])
    v = 0.01 * np.array([100.0, -0.01]) ** 2
    np.testing.assert_allclose(out["w"], 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    assert abs(out["w"][0]) < 0.11  # a huge pseudo-gradient moves a coordinate by ~lr


def test_integer_tensors_take_the_aggregate() -> None:
    out = ServerOptimizer("momentum", lr=0.1).step(G, _agg(1.0, steps=9))
    assert out["steps"].tolist() == [9] and out["steps"].dtype == np.int64


def test_run_config_keys_and_their_bounds() -> None:
    cfg = RunConfig.parse({"server-optimizer": "Adam", "server-lr": 0.01})
    opt = ServerOptimizer.from_config(cfg)
    assert (opt.kind, opt.lr, opt.beta1, opt.beta2, opt.eps) == ("adam", 0.01, 0.9, 0.99, 1e-3)
    with pytest.raises(ConfigError, match="server-optimizer='sgd': use one of none, momentum"):
        RunConfig.parse({"server-optimizer": "sgd"})
    with pytest.raises(ConfigError, match="server-beta1=1.0: must be < 1"):
        RunConfig.parse({"server-beta1": 1.0})


class FixedStepRounds:
    """A round whose aggregate is the received model + 1 in every float coordinate (what plain
    FedAvg or the unmasked secure sum would hand the loop); records what it was sent."""

    def __init__(self) -> None:
        self.received: list[dict[str, np.ndarray]] = []

    def cohort(self, grid: Grid, rnd: int) -> list[int]:
        return [1, 2, 3]

    def train(self, grid: Grid, rnd: int, arrays: ArrayRecord, nodes: list[int],
              config: ConfigRecord) -> ArrayRecord | None:
        state = {k: v.numpy() for k, v in arrays.items()}
        self.received.append(state)
        if rnd == 2:
            return None  # e.g. a secure round that aborted: the model stays as it was
        return ArrayRecord(array_dict={k: Array(v + 1 if v.dtype.kind == "f" else v)
                                       for k, v in state.items()})

    def evaluate(self, grid: Grid, rnd: int, arrays: ArrayRecord, nodes: list[int]) -> None:
        self.received.append({k: v.numpy() for k, v in arrays.items()})


def test_the_loop_steps_the_server_optimiser_on_every_aggregate(tmp_path) -> None:
    config = {"num-server-rounds": 3, "server-optimizer": "momentum", "server-lr": 0.5,
              "server-beta1": 0.5, "policy-packs": "none"}
    run, cfg = make_run(tmp_path, config)
    rounds = FixedStepRounds()
    run_rounds(None, run, cfg, rounds, 3)  # type: ignore[arg-type]
    w0, w1, w2, w3 = (r["net.0.weight"].astype(np.float64) for r in rounds.received)
    np.testing.assert_allclose(w1, w0 + 0.5, atol=1e-6)  # m = 1
    np.testing.assert_allclose(w2, w1, atol=1e-6)  # no aggregate: no step, momentum kept
    np.testing.assert_allclose(w3, w2 + 0.5 * 1.5, atol=1e-6)  # m = 0.5 * 1 + 1
