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
    opt = ServerOptimizer.from_config(cfg)  # on the plain and the secure aggregate alike
    nodes: list[int] = []
    rnd = run.round_offset
    for local in range(1, remaining + 1):
        rnd = run.global_round(local)
        start = time.monotonic()
        run.begin_round(rnd)
        nodes = rounds.cohort(grid, rnd)
        config = ConfigRecord({"server-round": rnd})
        new = rounds.train(grid, rnd, arrays, nodes, config)
        if new is not None:
            arrays = server_step(opt, arrays, new)
        metrics = run.end_round(rnd, arrays.to_torch_state_dict())
        head = run.task.headline
        value = metrics.get(f"server_{head}")
        shown = f"server {head} {value:.4g}" if isinstance(value, float) else "no server set"
        log(f"round {rnd}/{run.round_offset + remaining}: {shown}, {len(nodes)} node(s), "
            f"{time.monotonic() - start:.1f} s")
    if cfg.federated_evaluation and nodes:
        rounds.evaluate(grid, rnd, arrays, nodes)
