"""The rounds of a run: sample eligible nodes, train (plainly or securely), evaluate, record.

Plain Python over Flower's Grid (the Message API's extension point): the same loop drives the
Simulation and the Deployment Engine, and tests drive it with an in-process Grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from clients.task.run_config import RunConfig
from server.rounds.server_opt import ServerOptimizer
from server.run import FederatedRun


class Rounds(Protocol):
    def cohort(self, grid: Grid, rnd: int) -> list[int]: ...

    def train(self, grid: Grid, rnd: int, arrays: ArrayRecord, nodes: list[int],
              config: ConfigRecord) -> ArrayRecord | None: ...

    def evaluate(self, grid: Grid, rnd: int, arrays: ArrayRecord, nodes: list[int]) -> None: ...


def server_step(opt: ServerOptimizer, arrays: ArrayRecord, new: ArrayRecord) -> ArrayRecord:
    """The global model after the server optimiser's step on the round's aggregate `new`."""
    if not opt.active:
        return new
    glob = {k: v.numpy() for k, v in arrays.items()}
    out = opt.step(glob, {k: v.numpy() for k, v in new.items()})
    return ArrayRecord(array_dict={k: Array(v) for k, v in out.items()})


def run_rounds(
    grid: Grid,
    run: FederatedRun,
    cfg: RunConfig,
    rounds: Rounds,
    remaining: int,
    log: Callable[[str], None] = lambda _m: None,
) -> None:
    """Run `remaining` rounds after `run.round_offset`, then evaluate the final model."""
    arrays = ArrayRecord(run.initial_state())
    round_config: dict[str, float | int] = {}
    if cfg.central_dp:
        from privacy.dp.accounting import Release, calibrate_noise, epsilon

        noise = calibrate_noise(cfg.central_dp_epsilon, cfg.dp_delta, 1.0, cfg.num_server_rounds)
        round_config = {"central-dp-noise": noise, "central-dp-clip": cfg.central_dp_clip}
        run.event("central-dp", f"user-level DP: noise multiplier {noise:.4g}, clip "
                  f"{cfg.central_dp_clip:g}, target epsilon {cfg.central_dp_epsilon:g} at delta "
                  f"{cfg.dp_delta:g} over {cfg.num_server_rounds} rounds",
                  data={"noise_multiplier": noise, "clip": cfg.central_dp_clip})
    opt = ServerOptimizer.from_config(cfg)  # on the plain and the secure aggregate alike
    nodes: list[int] = []
    rnd = run.round_offset
    for local in range(1, remaining + 1):
        rnd = run.global_round(local)
        start = time.monotonic()
        run.begin_round(rnd)
        nodes = rounds.cohort(grid, rnd)
        config = ConfigRecord({"server-round": rnd, **round_config})
        new = rounds.train(grid, rnd, arrays, nodes, config)
        if new is not None:
            arrays = server_step(opt, arrays, new)
        if cfg.central_dp:
            run.round_extra(rnd, {"central_dp": {
                "epsilon": epsilon([Release(noise, 1.0, rnd)], cfg.dp_delta),
                "delta": cfg.dp_delta, "noise_multiplier": noise, "clip": cfg.central_dp_clip,
                "accountant": "rdp", "unit": "user"}})
        metrics = run.end_round(rnd, arrays.to_torch_state_dict())
        head = run.task.headline
        value = metrics.get(f"server_{head}")
        shown = f"server {head} {value:.4g}" if isinstance(value, float) else "no server set"
        log(f"round {rnd}/{run.round_offset + remaining}: {shown}, {len(nodes)} node(s), "
            f"{time.monotonic() - start:.1f} s")
    if cfg.federated_evaluation and nodes:
        rounds.evaluate(grid, rnd, arrays, nodes)
