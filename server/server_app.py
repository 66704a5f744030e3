"""The Flower ServerApp: reads the run config, opens the run store, and runs FedAvg rounds."""

from __future__ import annotations

import os
from logging import ERROR, INFO

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from clients.data import DataError
from clients.task import ConfigError
from server.config import ServerConfig
from server.fast_grid import FastPollGrid
from server.run import FederatedRun
from server.store import RunStore, StoreError, default_data_dir
from server.strategy import RunStopped, build_strategy

app = ServerApp()


def _limit_threads() -> None:
    """One BLAS/torch thread: a simulation hung with OpenBLAS spinning while Ray forked."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch.set_num_threads(1)


@app.main()
def main(grid: Grid, context: Context) -> None:
    _limit_threads()
    grid = FastPollGrid(grid)
    try:
        cfg = ServerConfig.from_run_config(context.run_config)
        data_dir = default_data_dir(cfg.data_dir)
        store = RunStore.in_dir(data_dir)
    except (ConfigError, DataError, StoreError) as err:
        log(ERROR, "fedguard: %s", err)
        raise SystemExit(1) from None

    flower_run_id = str(context.run_id)
    if cfg.resume:
        try:
            done = store.resume_run(cfg.resume, flower_run_id)
        except StoreError as err:
            log(ERROR, "fedguard: %s", err)
            raise SystemExit(1) from None
        run_id = cfg.resume
        run = FederatedRun(store, run_id, data_dir, cfg.task, round_offset=done)
        run.event("run-resumed", f"resumed after round {done} by Flower run {flower_run_id}")
    else:
        run_id = flower_run_id
        store.start_run(run_id, dict(context.run_config), cfg.num_rounds, flower_run_id)
        run = FederatedRun(store, run_id, data_dir, cfg.task)
        run.event("run-started", f"run {run_id} started", data={"data_dir": str(data_dir)})
    log(INFO, "fedguard: run %s, store %s", run_id, store.path)

    if cfg.secagg and cfg.aggregation != "fedavg":
        run.event("aggregation-ignored", f"aggregation={cfg.aggregation!r} needs individual "
                  "updates; secure aggregation only reveals their sum, so FedAvg is used")
    remaining = cfg.num_rounds - run.round_offset
    try:
        if remaining > 0:
            _run_rounds(grid, cfg, run, remaining)
    except RunStopped as stop:
        store.finish_run(run_id, "stopped", str(stop))
        run.event("run-stopped", str(stop))
        log(ERROR, "fedguard: run %s stopped: %s", run_id, stop)
        return
    except Exception as err:
        store.finish_run(run_id, "failed", f"{type(err).__name__}: {err}")
        run.event("run-failed", f"{type(err).__name__}: {err}")
        raise
    store.finish_run(run_id, "completed")
    run.event("run-completed", f"run {run_id} completed after {cfg.num_rounds} rounds")
    if os.environ.get("FEDGUARD_PRINT_RUN_ID"):
        print(f"fedguard-run-id={run_id}")


def _run_rounds(grid: Grid, cfg: ServerConfig, run: FederatedRun, remaining: int) -> None:
    strategy = build_strategy(
        cfg.aggregation,
        run,
        num_malicious=cfg.num_malicious,
        trim_beta=cfg.trim_beta,
        update_norm_bound=cfg.update_norm_bound,
        secagg=cfg.secagg_options if cfg.secagg else None,
        timeout=cfg.round_timeout,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_nodes,
        min_evaluate_nodes=cfg.min_nodes if cfg.fraction_evaluate > 0 else 0,
        min_available_nodes=cfg.min_nodes,
    )

    def evaluate_fn(local_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = arrays.to_torch_state_dict()
        if local_round == 0:
            loss, acc = run.evaluate_state(state)
        else:
            m = run.end_round(run.global_round(local_round), state)
            loss, acc = m["server_loss"], m["server_accuracy"]
        return MetricRecord({"loss": float(loss), "accuracy": float(acc)})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(run.initial_state()),
        num_rounds=remaining,
        timeout=cfg.round_timeout,
        evaluate_fn=evaluate_fn,
    )
