"""One whole run on the server, as plain Python over a Grid: settings, store, gate, rounds,
provenance. The ServerApp is a thin shell over `drive_run`, so tests can call it directly.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Mapping
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

from flwr.common.logger import log
from flwr.serverapp import Grid

from clients.task.checks import expected_metric_names
from clients.task.contract import TaskContext, TaskError
from clients.task.loading import find_app_dir, load_task
from clients.task.run_config import ConfigError, RunConfig
from privacy.compliance.audit import AuditError, AuditLog
from privacy.compliance.signing import load_or_create_key, public_key_b64
from server.compliance.gate import AdmissionGate, GateFailed
from server.compliance.policy_view import policy_config
from server.compliance.provenance import write_provenance
from server.rounds.loop import run_rounds
from server.rounds.plain import PlainRounds
from server.rounds.replies import ReplySorter, RunStopped
from server.rounds.sampling import first_choices, sample_nodes
from server.rounds.secure import SecureRounds
from server.run import FederatedRun
from server.store.records import BLOCKED, COMPLETED, FAILED, HEARTBEAT_S, STOPPED
from server.store.store import RunStore, StoreError, default_data_dir


class RunRefused(Exception):
    """The run cannot even start (bad config or task); one line, logged by the ServerApp."""


def _say(message: str) -> None:
    log(INFO, "fedguard: %s", message)


class Heartbeat:
    """Writes the run's heartbeat from a thread of its own, so readers can tell a live run
    from one whose ServerApp died (its own SQLite connection: connections are per thread)."""

    def __init__(self, data_dir: Path, run_id: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(data_dir, run_id),
                                        name="fedguard-heartbeat", daemon=True)

    def _beat(self, data_dir: Path, run_id: str) -> None:
        store = RunStore.in_dir(data_dir)
        try:
            while not self._stop.wait(HEARTBEAT_S):
                with contextlib.suppress(sqlite3.Error):
                    store.heartbeat(run_id)
        finally:
            store.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def check_task_for_run(run: FederatedRun, cfg: RunConfig) -> None:
    """Before round 1: the task builds its model, and under DP Opacus can privatise it."""
    if cfg.dp:
        from clients.task.checks import check_private_model

        check_private_model(run.task.build_model(run.ctx))


def record_refusal(store: RunStore, run_id: str, config: Mapping[str, Any], rounds: int,
                   reason: str) -> None:
    """A run refused before it started (its task or settings) is still a run in the store,
    `failed` with the reason: the UI shows it, and whoever follows the store learns at once
    (Flower's own status says only "failed", and `flwr run` exits 0 either way)."""
    try:
        if store.get_run(run_id) is None:
            store.start_run(run_id, json.loads(json.dumps(config, default=str)), rounds, run_id)
        store.finish_run(run_id, FAILED, f"not started: {reason}")
    except StoreError:
        pass  # the refusal still reaches the log and Flower's status


def drive_run(grid: Grid, run_config: Mapping[str, Any], flower_run_id: int,
              mode: str) -> str:
    """Run (or resume) one federated run; returns its final status."""
    store: RunStore | None = None
    try:
        cfg = RunConfig.parse(run_config)
        data_dir = default_data_dir(cfg.data_dir)
        store = RunStore.in_dir(data_dir)
        ctx = TaskContext(dict(run_config), {}, cfg.seed, find_app_dir())
        task = load_task(cfg.task, ctx)
    except (ConfigError, TaskError, StoreError) as err:
        if store is not None and not cfg.resume:
            record_refusal(store, str(flower_run_id), {**dict(run_config), "mode": mode},
                           cfg.num_server_rounds, str(err))
        raise RunRefused(str(err)) from None
    full_config = {**cfg.to_mapping(), **dict(run_config), "mode": mode}
    run_id = cfg.resume or str(flower_run_id)
    try:
        if cfg.resume:
            done = store.resume_run(cfg.resume, str(flower_run_id))
        else:
            done = 0
            store.start_run(run_id, full_config, cfg.num_server_rounds, str(flower_run_id),
                            headline=task.headline)
        run = FederatedRun(store, run_id, data_dir, task, ctx, round_offset=done)
        key = load_or_create_key(data_dir)
        run.audit = AuditLog(run.run_dir / "audit.jsonl", key=key)
    except (StoreError, TaskError, AuditError) as err:
        if not cfg.resume:
            record_refusal(store, run_id, full_config, cfg.num_server_rounds, str(err))
        raise RunRefused(str(err)) from None
    store.set_artifact(run.run_id, "audit-log", run.audit.path)
    if cfg.resume:
        run.event("run-resumed", f"resumed after round {done} by Flower run {flower_run_id}")
    else:
        run.event("run-started", f"run {run.run_id} started ({mode}, task {cfg.task})",
                  data={"data_dir": str(data_dir), "signing_key": public_key_b64(key),
                        "config": json.loads(json.dumps(full_config, default=str))})
    if mode == "deployment" and not (cfg.tls and cfg.node_auth):
        run.event("insecure-transport", "this deployment declares no TLS and/or no node "
                  "authentication (tls / node-auth run config)")
    _say(f"run {run.run_id}, store {store.path}")
    gate = AdmissionGate(run, policy_config(run_config, mode), data_dir, run.audit,
                         timeout=cfg.round_timeout, min_nodes=cfg.min_nodes, mode=mode,
                         metric_names=expected_metric_names(task, ctx))
    secagg_facts = {"enabled": cfg.secagg, **cfg.secagg_options} if cfg.secagg else {
        "enabled": False}
    with Heartbeat(data_dir, run.run_id):
        return _drive(grid, cfg, run, gate, store, secagg_facts, data_dir)


def _drive(grid: Grid, cfg: RunConfig, run: FederatedRun, gate: AdmissionGate, store: RunStore,
           secagg_facts: Mapping[str, Any], data_dir: Path) -> str:
    try:
        check_task_for_run(run, cfg)
        gate.check_run()
        remaining = cfg.num_server_rounds - run.round_offset
        if remaining > 0:
            gate.open(grid, cfg.node_wait_timeout)
            sorter = ReplySorter(run)

            def sample(g: Grid, rnd: int) -> list[int]:
                chosen = sample_nodes(g, lambda ids: gate.admit(g, ids), rnd,
                                      cfg.fraction_train, cfg.min_nodes, cfg.seed,
                                      cfg.node_wait_timeout, _say)
                if rnd < cfg.num_server_rounds:  # the next round's newcomers ride along
                    gate.prefetch(g, first_choices(g, cfg.fraction_train, cfg.min_nodes,
                                                   cfg.seed, rnd + 1))
                return chosen

            with_eval = cfg.federated_evaluation and not (cfg.dp and cfg.dp_eval == "off")
            rounds = (SecureRounds(run, cfg, sorter, gate.metric_names or [], with_eval, sample,
                                   cfg.num_server_rounds) if cfg.secagg
                      else PlainRounds(run, cfg, sorter, sample))
            run_rounds(grid, run, cfg, rounds, remaining, _say)
    except (GateFailed, TaskError) as blocked:
        store.finish_run(run.run_id, BLOCKED, str(blocked))
        run.event("run-blocked", f"not started: {blocked}")
        log(ERROR, "fedguard: run %s blocked: %s", run.run_id, blocked)
        return BLOCKED
    except RunStopped as stop:
        store.finish_run(run.run_id, STOPPED, str(stop))
        run.event("run-stopped", str(stop))
        write_provenance(run, gate, secagg_facts, data_dir)
        log(ERROR, "fedguard: run %s stopped: %s", run.run_id, stop)
        return STOPPED
    except Exception as err:
        store.finish_run(run.run_id, FAILED, f"{type(err).__name__}: {err}")
        with contextlib.suppress(AuditError):  # the audit log may be what failed
            run.event("run-failed", f"{type(err).__name__}: {err}")
        raise
    path = write_provenance(run, gate, secagg_facts, data_dir)
    store.finish_run(run.run_id, COMPLETED)
    run.event("run-completed", f"run {run.run_id} completed after {cfg.num_server_rounds} "
              "rounds", data={"provenance": str(path) if path else None})
    return COMPLETED


def data_dir_of(run_config: Mapping[str, Any]) -> Path:
    return default_data_dir(str(run_config.get("data-dir", "") or ""))
