"""The admission gate before round 1: who may train, and a run blocked at once with reasons.

Driven with the real ClientApp's admission handler through an in-process Grid, so each node
answers with its real manifest bytes and its real data check.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from flwr.app import Context, Message
from flwr.supercore.task_identity import TaskIdentity

import clients.client_app as client_app
from privacy.compliance.audit import AuditLog
from server.compliance.gate import AdmissionGate, GateFailed
from server.compliance.policy_view import policy_config
from server.deploy.cli import reconcile
from server.store.records import LOST, RUNNING, STOPPED, shown_status
from tests.helpers.grids import InProcessGrid
from tests.helpers.rounds import make_run

ROOT = Path(__file__).resolve().parent.parent
DIGITS_MANIFEST = ROOT / "clients" / "tasks" / "manifests" / "digits.toml"


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


class AdmissionGrid(InProcessGrid):
    """Nodes answer the admission query with the real ClientApp handler; `node_configs` lets
    a test give one node a bad file or no manifest, as a real node would be started."""

    def __init__(self, n: int, run_config: dict, node_configs: dict[int, dict] | None = None):
        super().__init__([100 + i for i in range(n)], run_config)
        for nid, extra in (node_configs or {}).items():
            self.contexts[nid].node_config.update(extra)

    def deliver(self, msg: Message, context: Context) -> Message:
        return client_app.admission(msg, context)


def _gate(tmp_path: Path, grid: AdmissionGrid, run_config: dict, mode: str) -> AdmissionGate:
    run, cfg = make_run(tmp_path, run_config)
    audit = AuditLog(tmp_path / "audit.jsonl")
    return AdmissionGate(run, policy_config(run_config, mode), tmp_path, audit, timeout=10,
                         min_nodes=cfg.min_nodes, mode=mode)


def test_a_node_whose_data_does_not_fit_the_task_is_excluded_the_others_admitted(
        tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,0\n", encoding="utf-8")
    cfg = {"min-nodes": 3, "manifest-dir": ""}
    grid = AdmissionGrid(4, cfg, {100: {"data-path": str(bad), "manifest-path":
                                        str(DIGITS_MANIFEST)}})
    gate = _gate(tmp_path, grid, cfg, "simulation")
    gate.open(grid, wait=1)
    assert gate.allowed == {101, 102, 103}
    line = gate.excluded["100"]
    assert "data does not fit the run's task" in line and "needs 64" in line and "\n" not in line
    assert gate.metric_names == ["accuracy"]


def test_every_connected_node_excluded_blocks_at_once_with_one_line_per_node(
        tmp_path: Path) -> None:
    """Issue 16.2: three connected nodes, all excluded: blocked now, never a silent wait."""
    cfg = {"min-nodes": 3, "tls": True, "node-auth": True}
    good = tmp_path / "node.csv"  # data that fits the task: only the manifests are missing
    rows = [",".join([f"f{i}" for i in range(64)] + ["label"])]
    rows += [",".join(["0.5"] * 64 + [str(k % 10)]) for k in range(20)]
    good.write_text("\n".join(rows), encoding="utf-8")
    grid = AdmissionGrid(3, cfg, {nid: {"data-path": str(good)} for nid in (100, 101, 102)})
    gate = _gate(tmp_path, grid, cfg, "deployment")
    started = time.monotonic()
    with pytest.raises(GateFailed) as info:
        gate.open(grid, wait=300)
    assert time.monotonic() - started < 30  # at once, not after node-wait-timeout
    msg = str(info.value)
    assert "only 0 of 3 connected node(s) are eligible; min-nodes=3" in msg
    for nid in (100, 101, 102):
        assert f"node {nid}: " in msg
    assert "P8" in msg or "manifest" in msg


def test_default_min_nodes_does_not_block_secure_aggregation(tmp_path: Path) -> None:
    """Issue 16.3: `--set secagg=true` with the defaults used to be blocked by P6 at once."""
    grid = AdmissionGrid(3, {"secagg": True})
    gate = _gate(tmp_path, grid, {"secagg": True}, "simulation")
    gate.check_run()  # raises GateFailed on a run-level fail
    assert gate.report is not None
    assert gate.report.find("P6.secagg-min-nodes") is None or \
        gate.report.find("P6.secagg-min-nodes").status != "fail"


def test_a_silent_serverapp_shows_as_lost_and_is_reconciled_with_flower(tmp_path: Path) -> None:
    """Issue 16.4: after `flwr stop` (or a kill) the store must not say running for ever."""
    run, _ = make_run(tmp_path, {})
    row = run.store.get_run("r")
    assert shown_status(row, time.time()) == RUNNING
    assert shown_status(row, row["heartbeat_at"] + 3600) == LOST
    assert reconcile(run.store.path, "r", "running") is None
    assert reconcile(run.store.path, "r", "finished:stopped") == STOPPED
    row = run.store.get_run("r")
    assert row["status"] == STOPPED and "Flower: finished:stopped" in row["error"]
    assert [e["kind"] for e in run.store.events("r")][-1] == "run-lost"
    assert reconcile(run.store.path, "r", "finished:completed") is None  # already ended


def test_an_insecure_deployment_is_recorded_and_baseline_blocks_it(tmp_path: Path) -> None:
    from tests.helpers.grids import drive

    base = {"num-server-rounds": 1, "federated-evaluation": False, "tls": False,
            "node-auth": False}
    status, store = drive(tmp_path / "off", 3, {**base, "policy-packs": "none"}, "deployment")
    assert status == "completed"
    kinds = {e["kind"] for e in store.events("1")}
    assert {"insecure-transport", "policy-gate-off"} <= kinds  # both are on the record
    status, store = drive(tmp_path / "baseline", 3, base, "deployment")
    run = store.get_run("1")
    assert status == "blocked" and "P5" in run["error"], run["error"]
    assert store.rounds("1") == []
