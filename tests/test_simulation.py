"""The whole app through Flower's Simulation Engine (real SuperLink, Ray, ServerApp, ClientApps)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from privacy.files import sha256_file
from server.deploy.superlink import SuperLink
from server.store import RunStore
from tests.conftest import ROOT, rows_by, run_simulation, wait_for

pytestmark = pytest.mark.slow


def test_simulation_trains_and_records_everything(tmp_path) -> None:
    status, run_id, store = run_simulation(tmp_path, nodes=4, rounds=3, fraction_evaluate=1.0)
    assert status == "finished:completed"
    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["last_round"] == 3
    rounds = store.rounds(run_id)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    accs = [r["server_accuracy"] for r in rounds]
    assert accs[-1] > accs[0] and accs[-1] > 0.6, accs
    # Every node trained and evaluated every round, with its metrics recorded.
    by_round = rows_by(store.node_results(run_id), "round")
    for rnd in (1, 2, 3):
        train = [n for n in by_round[rnd] if n["phase"] == "train"]
        evals = [n for n in by_round[rnd] if n["phase"] == "evaluate"]
        assert len(train) == 4 and len(evals) == 4
        assert all(n["status"] == "ok" and n["num_examples"] > 0 for n in train)
        assert all(n["train_time_s"] is not None and n["loss"] is not None for n in train)
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


def test_resume_after_crash_loses_and_repeats_no_round(tmp_path) -> None:
    data_dir = tmp_path / "store"
    cfg = {"num-server-rounds": 4, "data-dir": str(data_dir), "fraction-evaluate": 0.0}
    sl = SuperLink(tmp_path / "flower1", simulation=True).start()
    try:
        rid = sl.submit(ROOT, cfg, {"num-supernodes": 3, "client-resources-num-cpus": 1})
        run_id = str(rid)
        wait_for(lambda: (data_dir / "runs.sqlite").exists()
                 and len(RunStore.in_dir(data_dir, readonly=True).rounds(run_id)) >= 2,
                 240, "two completed rounds")
        sl.kill()  # the whole server side (SuperLink, ServerApp, Ray) dies at once
    finally:
        sl.stop()
    store = RunStore.in_dir(data_dir)
    before = {r["round"]: r for r in store.rounds(run_id)}
    assert store.get_run(run_id)["status"] == "running"  # it never got to finish
    done = max(before)
    assert done < 4

    status, _, store = run_simulation(tmp_path / "again", nodes=3, rounds=4,
                                      data_dir=str(data_dir), resume=run_id, fraction_evaluate=0.0)
    assert status == "finished:completed"
    after = store.rounds(run_id)
    assert [r["round"] for r in after] == [1, 2, 3, 4]  # none lost, none twice
    for r in after:
        if r["round"] <= done:  # finished rounds are untouched by the resume
            assert r["checkpoint_sha256"] == before[r["round"]]["checkpoint_sha256"]
            assert r["ended_at"] == before[r["round"]]["ended_at"]
    train = [n for n in store.node_results(run_id, "train")]
    assert len(train) == 4 * 3  # one row per node per round
    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["last_round"] == 4
    assert any(e["kind"] == "run-resumed" for e in store.events(run_id))
    assert after[-1]["server_accuracy"] >= after[done - 1]["server_accuracy"] - 0.05
