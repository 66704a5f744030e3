"""The policy gate before any training, and the node's manifest command. (A node the gate
excludes in a real simulation run, with the audit log and provenance verified:
tests/test_simulation.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from clients.node.cli import main as node_main
from tests.conftest import ROOT
from tests.helpers.grids import drive

pytestmark = pytest.mark.slow

DIGITS = ROOT / "clients" / "tasks" / "manifests" / "digits.toml"


def _fedguard_policy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "privacy.compliance.cli", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


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
