"""The Flower ServerApp: config, run store, policy gate, rounds, then signed provenance."""

from __future__ import annotations

import json
from logging import ERROR, INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from clients.data import DataError
from clients.task import ConfigError
from privacy.compliance.audit import AuditLog
from privacy.compliance.signing import load_or_create_key
from server.compliance import ComplianceGate, GateFailed, write_provenance
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


def _fail(message: str) -> None:
    log(ERROR, "fedguard: %s", message)
    raise SystemExit(1)


def _mode(grid: Grid) -> str:
    """Simulation runs on Flower's in-memory grid; anything else is a real deployment."""
    return "simulation" if "InMemory" in type(grid).__name__ else "deployment"


@app.main()
def main(grid: Grid, context: Context) -> None:
    _limit_threads()
    try:
        cfg = ServerConfig.from_run_config(context.run_config)
        data_dir = default_data_dir(cfg.data_dir)
        store = RunStore.in_dir(data_dir)
    except (ConfigError, DataError, StoreError) as err:
        _fail(str(err))
        return
    run_config: dict[str, Any] = {**context.run_config, "mode": _mode(grid)}
    if cfg.central_dp and not run_config.get("dp"):  # what the policy packs should judge
        run_config.update({"dp": True, "dp-privacy-unit": "user",
                           "dp-epsilon": cfg.central_dp_epsilon,
                           "dp-max-grad-norm": cfg.central_dp_clip})

    flower_run_id = str(context.run_id)
    if cfg.resume:
        try:
            done = store.resume_run(cfg.resume, flower_run_id)
        except StoreError as err:
            _fail(str(err))
            return
        run = FederatedRun(store, cfg.resume, data_dir, cfg.task, round_offset=done)
    else:
        store.start_run(flower_run_id, run_config, cfg.num_rounds, flower_run_id)
        run = FederatedRun(store, flower_run_id, data_dir, cfg.task)
    run.audit = AuditLog(run.run_dir / "audit.jsonl", key=load_or_create_key(data_dir))
    store.set_artifact(run.run_id, "audit-log", run.audit.path)
    if cfg.resume:
        run.event("run-resumed", f"resumed after round {run.round_offset} by Flower run "
                  f"{flower_run_id}")
    else:
        run.event("run-started", f"run {run.run_id} started ({run_config['mode']})",
                  data={"data_dir": str(data_dir), "config": json.loads(json.dumps(
                      run_config, default=str))})
    if run_config["mode"] == "deployment" and not (run_config.get("tls")
                                                   and run_config.get("node-auth")):
        run.event("insecure-transport", "this deployment declares no TLS and/or no node "
                  "authentication (tls / node-auth run config)")
    log(INFO, "fedguard: run %s, store %s", run.run_id, store.path)

    gate = ComplianceGate(run, run_config, data_dir, run.audit, timeout=cfg.round_timeout,
                          min_nodes=cfg.min_nodes)
    fast = FastPollGrid(grid, node_filter=lambda ids: gate.admit(grid, ids))
    try:
        gate.check_run()
        if cfg.secagg and cfg.aggregation != "fedavg":
            run.event("aggregation-ignored", f"aggregation={cfg.aggregation!r} needs individual "
                      "updates; secure aggregation only reveals their sum, so FedAvg is used")
        remaining = cfg.num_rounds - run.round_offset
        if remaining > 0:
            _run_rounds(fast, cfg, run, remaining)
    except GateFailed as blocked:
        store.finish_run(run.run_id, "blocked", str(blocked))
        run.event("run-blocked", f"not started: {blocked}")
        log(ERROR, "fedguard: run %s blocked by policy: %s", run.run_id, blocked)
        return
    except RunStopped as stop:
        store.finish_run(run.run_id, "stopped", str(stop))
        run.event("run-stopped", str(stop))
        write_provenance(run, gate, _secagg_facts(cfg), data_dir)
        log(ERROR, "fedguard: run %s stopped: %s", run.run_id, stop)
        return
    except Exception as err:
        store.finish_run(run.run_id, "failed", f"{type(err).__name__}: {err}")
        run.event("run-failed", f"{type(err).__name__}: {err}")
        raise
    path = write_provenance(run, gate, _secagg_facts(cfg), data_dir)
    store.finish_run(run.run_id, "completed")
    run.event("run-completed", f"run {run.run_id} completed after {cfg.num_rounds} rounds",
              data={"provenance": str(path) if path else None})


def _secagg_facts(cfg: ServerConfig) -> dict[str, Any]:
    return {"enabled": cfg.secagg, **(cfg.secagg_options or {})} if cfg.secagg else {
        "enabled": False}


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

    train_config = ConfigRecord()
    if cfg.central_dp:
        from privacy.dp.accounting import Release, calibrate_noise, epsilon

        noise = calibrate_noise(cfg.central_dp_epsilon, cfg.dp_delta, 1.0, cfg.num_rounds)
        train_config["central-dp-noise"] = noise
        train_config["central-dp-clip"] = cfg.central_dp_clip
        run.event("central-dp", f"user-level DP: noise multiplier {noise:.4g}, clip "
                  f"{cfg.central_dp_clip:g}, target epsilon {cfg.central_dp_epsilon:g} at delta "
                  f"{cfg.dp_delta:g} over {cfg.num_rounds} rounds",
                  data={"noise_multiplier": noise, "clip": cfg.central_dp_clip})

    def evaluate_fn(local_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = arrays.to_torch_state_dict()
        if local_round == 0:
            loss, acc = run.evaluate_state(state)
        else:
            rnd = run.global_round(local_round)
            if cfg.central_dp:
                eps = epsilon([Release(noise, 1.0, rnd)], cfg.dp_delta)
                run.round_extra(rnd, {"central_dp": {
                    "epsilon": eps, "delta": cfg.dp_delta, "noise_multiplier": noise,
                    "clip": cfg.central_dp_clip, "accountant": "rdp", "unit": "user"}})
            m = run.end_round(rnd, state)
            loss, acc = m["server_loss"], m["server_accuracy"]
        return MetricRecord({"loss": float(loss), "accuracy": float(acc)})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(run.initial_state()),
        num_rounds=remaining,
        timeout=cfg.round_timeout,
        train_config=train_config,
        evaluate_fn=evaluate_fn,
    )

