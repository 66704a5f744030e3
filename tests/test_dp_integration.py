"""DP-SGD through the whole app (real driver, real ClientApp, in-process Grid): ledger spend
across rounds and runs, refusals, dp=false."""

from __future__ import annotations

import sqlite3

import pytest

from clients.node.cli import main as node_main
from privacy.dp.accounting import epsilon
from privacy.dp.ledger import PrivacyLedger
from tests.conftest import rows_by
from tests.helpers.grids import drive

DP = {"dp": True, "dp-epsilon": 2.0, "dp-delta": 1e-5, "federated-evaluation": False,
      "lr": 0.05, "batch-size": 32, "local-epochs": 1, "num-server-rounds": 2}


def _ledgers(data_dir):
    return sorted((data_dir / "nodes").glob("partition-*/privacy-ledger.sqlite"))


def test_spend_grows_across_rounds_and_runs_and_overspend_is_refused(tmp_path, capsys) -> None:
    data_dir = tmp_path / "store"
    # node-privacy-budget: each virtual node has a lifetime budget across the data dir's runs
    status, store = drive(data_dir, 3, {**DP, "node-privacy-budget": 2.0}, run_id=11)
    run1 = "11"
    assert status == "completed"
    first = rows_by(store.node_results(run1, "train"), "node_id")
    assert len(first) == 3
    for rows in first.values():
        eps = [r["epsilon"] for r in sorted(rows, key=lambda r: r["round"])]
        assert eps[0] < eps[1] <= 2.0 + 1e-6  # monotone, and the run's target is met
    ledgers = _ledgers(data_dir)
    assert len(ledgers) == 3
    for path in ledgers:
        db = sqlite3.connect(path)
        # Calibrated once for the run, although each round is a separate ClientApp call.
        assert db.execute("SELECT COUNT(*) FROM calibrations").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 2

    # A budget between "one more round" and "two more rounds" of the same mechanism for every
    # node: run 2 may train round 1 and must refuse round 2.
    lows, highs = [], []
    for path in ledgers:
        rel = [e.release for e in PrivacyLedger(path, create=False).releases()]
        lows.append(epsilon(rel + rel[:1], 1e-5))
        highs.append(epsilon(rel + rel, 1e-5))
    budget = (max(lows) + min(highs)) / 2
    assert max(lows) < budget < min(highs)
    status, store = drive(data_dir, 3, {**DP, "node-privacy-budget": budget}, run_id=12)
    run2 = "12"
    assert status == "stopped"  # the run ended cleanly ...
    run = store.get_run(run2)
    assert run["status"] == "stopped" and "too few nodes" in run["error"]  # ... and says why
    refusals = store.events(run2, "node-refused")
    assert refusals and all("budget" in e["message"] for e in refusals)
    # a virtual node: the fix is the run config's budget or a fresh data dir, not the CLI
    assert all(e["message"].endswith("else dp-epsilon for this run): raise it, or use a fresh "
                                     "--data-dir") for e in refusals)
    refused_rows = [r for r in store.node_results(run2, "train") if r["status"] == "refused"]
    assert refused_rows and all(r["round"] == 2 for r in refused_rows)
    assert all(r["epsilon"] <= budget for r in refused_rows)
    trained2 = [r for r in store.node_results(run2, "train") if r["status"] == "ok"]
    assert len(trained2) == 3 and all(r["round"] == 1 for r in trained2)
    for path in ledgers:
        ledger = PrivacyLedger(path, create=False)
        (source,) = ledger.sources()
        spent = ledger.spent(source, delta=1e-5)
        assert 2.0 < spent <= budget  # grew across runs, never over budget
        runs = {e.run_id for e in ledger.releases()}
        assert run1 in runs
        db = sqlite3.connect(path)
        assert db.execute("SELECT COUNT(*) FROM calibrations").fetchone()[0] == 2

    # The operator's view of one node's ledger.
    assert node_main(["ledger", "--data-dir", str(ledgers[0].parent)]) == 0
    out = capsys.readouterr().out
    assert run1 in out and "epsilon" in out.lower()


def test_dp_false_records_no_release(tmp_path) -> None:
    data_dir = tmp_path / "store"
    status, store = drive(data_dir, 3, {**DP, "dp": False, "num-server-rounds": 1})
    run_id = "1"
    assert status == "completed"
    assert all(r["epsilon"] is None for r in store.node_results(run_id))
    for path in _ledgers(data_dir):
        assert PrivacyLedger(path, create=False).releases() == []


def test_ledger_cli_errors_are_one_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        node_main(["ledger", "--data-dir", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "no privacy ledger" in err and "\n" not in err


def test_without_a_lifetime_budget_each_run_has_new_virtual_nodes(tmp_path) -> None:
    """The default (node-privacy-budget=0): a simulation can be run again in the same data dir,
    each run's virtual nodes spending their own dp-epsilon, every spend still in the ledger."""
    data_dir = tmp_path / "store"
    for rid in (21, 22):
        status, store = drive(data_dir, 3, DP, run_id=rid)
        assert status == "completed"
        assert not store.events(str(rid), "node-refused")
    for path in _ledgers(data_dir):
        ledger = PrivacyLedger(path, create=False)
        part = path.parent.name
        assert ledger.sources() == [f"run-21/{part}", f"run-22/{part}"]
        for source in ledger.sources():
            assert 0 < ledger.spent(source, delta=1e-5) <= 2.0 + 1e-6
            assert ledger.budget(source).epsilon == 2.0
