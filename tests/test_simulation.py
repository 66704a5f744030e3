"""The whole app through Flower's Simulation Engine (real SuperLink, Ray, ServerApp, ClientApps)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from privacy.files import sha256_file
from tests.conftest import ROOT, rows_by, run_simulation

pytestmark = pytest.mark.slow


def test_simulation_trains_and_records_everything(tmp_path, sim_link) -> None:
    status, run_id, store = run_simulation(tmp_path, nodes=4, rounds=3, link=sim_link,
                                           federated_evaluation=True)
    assert status == "finished:completed"
    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["last_round"] == 3
    rounds = store.rounds(run_id)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    accs = [r["server_accuracy"] for r in rounds]
    assert accs[-1] > accs[0] and accs[-1] > 0.6, accs
    # Every node trained every round, with its metrics recorded; each node evaluated the model
    # it received inside the train reply, and the final model in one evaluate exchange.
    by_round = rows_by(store.node_results(run_id), "round")
    for rnd in (1, 2, 3):
        train = [n for n in by_round[rnd] if n["phase"] == "train"]
        assert len(train) == 4
        assert all(n["status"] == "ok" and n["num_examples"] > 0 for n in train)
        assert all(n["train_time_s"] is not None and n["loss"] is not None for n in train)
    assert len([n for n in by_round[3] if n["phase"] == "evaluate"]) == 4
    federated = {m.round: m.value for m in store.round_metrics(run_id)
                 if m.source == "federated" and m.name == "accuracy"}
    assert sorted(federated) == [1, 2, 3]  # the model after each round, every round
    assert [r["fed_accuracy"] for r in rounds] == [federated[r] for r in (1, 2, 3)]
    assert store.get_run(run_id)["headline"] == "accuracy"
    # Each round's checkpoint exists and matches the recorded hash.
    for r in rounds:
        assert sha256_file(r["checkpoint_path"]) == r["checkpoint_sha256"]
    kinds = [e["kind"] for e in store.events(run_id)]
    assert kinds[0] == "run-started" and kinds[-1] == "run-completed"


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
