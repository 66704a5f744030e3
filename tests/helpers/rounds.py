"""Drive fedguard's real round logic in process: a run, a node's local training, one round.

Everything here calls the same code the ServerApp and the ClientApp call; only the Grid is
in-process (tests/helpers/grids.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from clients.task import RunConfig, TaskContext, load_task
from clients.training.node import NodeRuntime, TrainOutcome
from server.rounds.plain import PlainRounds
from server.rounds.replies import ReplySorter
from server.rounds.secure import SecureRounds
from server.run import FederatedRun
from server.store import RunStore


def node_train(run_config: Mapping[str, Any], node_config: Mapping[str, Any],
               state: Mapping[str, Any], rnd: int = 1, evaluate_first: bool = False
               ) -> TrainOutcome:
    """What a node running `run_config` sends back for round `rnd` (the real NodeRuntime)."""
    return NodeRuntime(run_config, node_config, 1).train(dict(state), rnd, evaluate_first)


def make_run(tmp_path: Path, run_config: Mapping[str, Any], run_id: str = "r"
             ) -> tuple[FederatedRun, RunConfig]:
    cfg = RunConfig.parse(run_config)
    ctx = TaskContext(dict(run_config), {}, cfg.seed)
    task = load_task(cfg.task, ctx)
    store = RunStore.in_dir(tmp_path)
    store.start_run(run_id, dict(run_config), cfg.num_server_rounds, headline=task.headline)
    return FederatedRun(store, run_id, tmp_path, task, ctx), cfg


def initial_arrays(run: FederatedRun) -> ArrayRecord:
    return ArrayRecord(run.initial_state())


def plain_round(run: FederatedRun, cfg: RunConfig, grid: Grid, arrays: ArrayRecord,
                rnd: int = 1) -> ArrayRecord | None:
    run.begin_round(rnd)
    rounds = PlainRounds(run, cfg, ReplySorter(run))
    return rounds.train(grid, rnd, arrays, sorted(grid.get_node_ids()),
                        ConfigRecord({"server-round": rnd}))


def secure_round(run: FederatedRun, cfg: RunConfig, grid: Grid, arrays: ArrayRecord,
                 rnd: int = 1, names: list[str] | None = None,
                 with_eval: bool = False) -> ArrayRecord | None:
    run.begin_round(rnd)
    rounds = SecureRounds(run, cfg, ReplySorter(run), names or [], with_eval,
                          lambda g, _r: sorted(g.get_node_ids()), last_round=rnd)
    return rounds.train(grid, rnd, arrays, sorted(grid.get_node_ids()),
                        ConfigRecord({"server-round": rnd}))
