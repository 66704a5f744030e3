"""The whole app through Flower's Simulation Engine (real SuperLink, Ray, ServerApp, ClientApps)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from privacy.files import sha256_file
from server.deploy.superlink import SuperLink
from tests.conftest import ROOT, rows_by, run_simulation

NODES = 4
DIGITS = ROOT / "clients" / "tasks" / "manifests" / "digits.toml"


def _fedguard_policy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "privacy.compliance.cli", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)

pytestmark = pytest.mark.slow


def test_simulation_trains_excludes_a_failing_node_and_records_everything(
        tmp_path: Path, sim_link: SuperLink) -> None:
    """One real run (Ray, ServerApp, ClientApps) for training, the policy gate, the audit log
    and provenance: 4 nodes, one with non-commercial data in a commercial run."""
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    for i in range(NODES):
        shutil.copy(DIGITS, mdir / f"partition-{i}.toml")
    nc = DIGITS.read_text().replace('licence = "CC-BY-4.0"', 'licence = "CC-BY-NC-4.0"')
    (mdir / "partition-0.toml").write_text(nc)
    status, run_id, store = run_simulation(tmp_path, nodes=NODES, rounds=3, link=sim_link,
                                           federated_evaluation=True, manifest_dir=str(mdir),
                                           purpose="commercial")
    assert status == "finished:completed"
    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["last_round"] == 3
    rounds = store.rounds(run_id)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    accs = [r["server_accuracy"] for r in rounds]
    assert accs[-1] > accs[0] and accs[-1] > 0.6, accs

    # The gate excluded the non-commercial node, naming the rule, and it never trained.
    (excluded,) = store.events(run_id, "node-excluded")
    assert "P9.noncommercial-licence" in excluded["message"]
    bad = excluded["node_id"]
    verdicts = store.verdicts(run_id)
    v = {(r.rule_id, r.node_id): r.verdict for r in verdicts}
    assert v[("P9.noncommercial-licence", bad)] == "fail"
    # the stored verdict carries what the UI shows: the explanation in both languages
    assert next(r for r in verdicts if r.rule_id == "P9.noncommercial-licence"
                and r.node_id == bad).explain["zh"]
    assert len(store.manifests(run_id)) == NODES

    # Every other node trained every round, with its metrics recorded; each evaluated the
    # model it received inside the train reply, and the final model in one evaluate exchange.
    by_round = rows_by(store.node_results(run_id), "round")
    for rnd in (1, 2, 3):
        train = [n for n in by_round[rnd] if n["phase"] == "train"]
        assert len(train) == NODES - 1 and bad not in {n["node_id"] for n in train}
        assert all(n["status"] == "ok" and n["num_examples"] > 0 for n in train)
        assert all(n["train_time_s"] is not None and n["loss"] is not None for n in train)
    assert len([n for n in by_round[3] if n["phase"] == "evaluate"]) == NODES - 1
    federated = {m.round: m.value for m in store.round_metrics(run_id)
                 if m.source == "federated" and m.name == "accuracy"}
    assert sorted(federated) == [1, 2, 3]  # the model after each round, every round
    assert [r["fed_accuracy"] for r in rounds] == [federated[r] for r in (1, 2, 3)]
    assert run["headline"] == "accuracy"
    for r in rounds:  # each round's checkpoint exists and matches the recorded hash
        assert sha256_file(r["checkpoint_path"]) == r["checkpoint_sha256"]
    kinds = [e["kind"] for e in store.events(run_id)]
    assert kinds[0] == "run-started" and kinds[-1] == "run-completed"

    # Report, provenance and audit log, verified by the CLI; one flipped byte is caught.
    art = store.artifacts(run_id)
    assert {"report-md", "report-json", "provenance", "audit-log"} <= set(art)
    report = json.loads(Path(art["report-json"]["path"]).read_text())
    assert any(x["rule_id"] == "P9.noncommercial-licence" for x in report["verdicts"])
    model = rounds[-1]["checkpoint_path"]
    prov, audit = art["provenance"]["path"], art["audit-log"]["path"]
    assert _fedguard_policy("verify-provenance", prov, "--model", model).returncode == 0
    assert _fedguard_policy("verify-audit", audit).returncode == 0
    audited = [json.loads(line)["kind"] for line in Path(audit).read_text().splitlines()]
    assert "node-excluded" in audited and "round-completed" in audited
    for path in (prov, audit):
        data = bytearray(Path(path).read_bytes())
        data[len(data) // 2] ^= 0x01
        Path(path).write_bytes(bytes(data))
    assert _fedguard_policy("verify-provenance", prov, "--model", model).returncode == 1
    assert _fedguard_policy("verify-audit", audit).returncode == 1


def test_failed_run_is_detected_and_reported(tmp_path) -> None:
    """`flwr run` exits 0 for a failed run; the runner must still say it failed."""
    proc = subprocess.run(
        [sys.executable, "scripts/simulate.py", "--nodes", "2", "--rounds", "1",
         "--data-dir", str(tmp_path / "d"), "--dataset", "breast-cancer", "--model", "cnn"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "did not complete" in proc.stdout
    assert "model='cnn' needs images" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
