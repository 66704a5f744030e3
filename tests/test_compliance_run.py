"""The policy gate, audit log and provenance through real simulation runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clients.node.cli import main as node_main
from tests.conftest import ROOT, run_simulation
from tests.helpers.grids import drive

pytestmark = pytest.mark.slow

DIGITS = ROOT / "clients" / "tasks" / "manifests" / "digits.toml"


def _fedguard_policy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "privacy.compliance.cli", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_failing_node_is_excluded_and_the_run_completes_with_a_signed_record(
        tmp_path, sim_link) -> None:
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    for i in range(3):
        shutil.copy(DIGITS, mdir / f"partition-{i}.toml")
    nc = DIGITS.read_text().replace('licence = "CC-BY-4.0"', 'licence = "CC-BY-NC-4.0"')
    (mdir / "partition-0.toml").write_text(nc)  # non-commercial data in a commercial run
    status, run_id, store = run_simulation(
        tmp_path, nodes=3, rounds=2, link=sim_link, manifest_dir=str(mdir), purpose="commercial",
        min_nodes=2, federated_evaluation=False)
    assert status == "finished:completed"
    assert store.get_run(run_id)["status"] == "completed"
    (excluded,) = store.events(run_id, "node-excluded")
    assert "P9.noncommercial-licence" in excluded["message"]
    bad = excluded["node_id"]
    trained = {r["node_id"] for r in store.node_results(run_id, "train")}
    assert bad not in trained and len(trained) == 2
    v = {(r.rule_id, r.node_id): r.verdict for r in store.verdicts(run_id)}
    # the stored verdict carries what the UI shows: the explanation in both languages
    assert next(r for r in store.verdicts(run_id) if r.rule_id == "P9.noncommercial-licence"
                and r.node_id == bad).explain["zh"]
    assert v[("P9.noncommercial-licence", bad)] == "fail"
    assert len(store.manifests(run_id)) == 3

    art = store.artifacts(run_id)
    assert {"report-md", "report-json", "provenance", "audit-log"} <= set(art)
    report = json.loads(Path(art["report-json"]["path"]).read_text())
    assert any(x["rule_id"] == "P9.noncommercial-licence" for x in report["verdicts"])
    model = store.rounds(run_id)[-1]["checkpoint_path"]
    prov, audit = art["provenance"]["path"], art["audit-log"]["path"]
    assert _fedguard_policy("verify-provenance", prov, "--model", model).returncode == 0
    assert _fedguard_policy("verify-audit", audit).returncode == 0
    kinds = [json.loads(line)["kind"] for line in Path(audit).read_text().splitlines()]
    assert "node-excluded" in kinds and "round-completed" in kinds

    # One flipped byte anywhere is caught.
    for path in (prov, audit):
        data = bytearray(Path(path).read_bytes())
        data[len(data) // 2] ^= 0x01
        Path(path).write_bytes(bytes(data))
    assert _fedguard_policy("verify-provenance", prov, "--model", model).returncode == 1
    assert _fedguard_policy("verify-audit", audit).returncode == 1


def test_run_level_fail_never_starts_training(tmp_path) -> None:
    # A high-risk EU AI Act use with plain FedAvg has no poisoning defence (P7): blocked.
    status, store = drive(tmp_path, 3, {"policy-packs": "baseline,eu-ai-act", "high-risk": True,
                                        "num-server-rounds": 2})
    run_id = "1"
    assert status == "blocked"  # the run ended cleanly ...
    run = store.get_run(run_id)
    assert run["status"] == "blocked" and "P7" in run["error"]  # ... without training
    assert store.rounds(run_id) == [] and store.node_results(run_id) == []
    assert any(e["kind"] == "run-blocked" for e in store.events(run_id))


def test_manifest_init_writes_a_template_that_loads(tmp_path, capsys) -> None:
    out = tmp_path / "m.toml"
    assert node_main(["manifest", "init", "--out", str(out), "--name", "ward-7",
                      "--records", "120", "--country", "DE"]) == 0
    from privacy.compliance.manifest import load_manifest

    assert load_manifest(out).records == 120
    with pytest.raises(SystemExit) as exit_:
        node_main(["manifest", "init", "--out", str(out)])
    assert exit_.value.code == 2 and "--force" in capsys.readouterr().err
