"""The privacy ledger: the node's own budget per data source; reserve, then settle.

Issue 12 items 6 (the budget is the node's: its own delta, delta < 1/n, no budget = no DP
work, keyed by a stable data-source identity) and 7 (check and record are one transaction).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from privacy.dp.accounting import Release, SkellamRelease, epsilon
from privacy.dp.ledger import (
    LEGACY_SOURCE,
    LedgerError,
    PrivacyLedger,
    dataset_fingerprint,
    format_ledger,
)
from tests.helpers.ledger_writer import RACE_RELEASE

REPO = Path(__file__).resolve().parents[1]
WRITER = REPO / "tests" / "helpers" / "ledger_writer.py"
#: A schema-1 ledger written by the previous release's PrivacyLedger (git 4736b94): run-1
#: (3 rounds of Release(1.1, 0.02, 50)) on fingerprint a1..., run-2 (2 rounds of
#: Release(1.3, 0.02, 50)) and run-3 (user-level Release(4.0, 1.0, 1)) on fingerprint b2...
LEDGER_V1 = REPO / "tests" / "helpers" / "ledger-v1.sqlite"
SOURCE = "hospital-a/ehr-2026"
DELTA = 1e-5
N = 10_000
FP = "a" * 64
ROUND = Release(1.1, 0.02, 50)


@pytest.fixture
def ledger(tmp_path: Path) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "node" / "privacy-ledger.sqlite")


def _reserve(ledger: PrivacyLedger, release=ROUND, *, source=SOURCE, run="run-1", rnd=1,
             fingerprint=FP, n=N, kind="dp-sgd"):
    return ledger.reserve(source, run, rnd, [(kind, release)], num_records=n,
                          fingerprint=fingerprint)


def _budget_between(k: int, release: Release = ROUND, delta: float = DELTA) -> float:
    """A budget with room for exactly k releases."""
    return (epsilon([release] * k, delta) + epsilon([release] * (k + 1), delta)) / 2


# -- budgets (item 6) ----------------------------------------------------------------------


def test_budget_is_set_by_the_node_and_never_silently_raised(ledger: PrivacyLedger) -> None:
    assert ledger.budget(SOURCE) is None
    first = ledger.set_budget(SOURCE, 3.0, 1e-6, num_records=N)
    assert (first.epsilon, first.delta, first.num_records) == (3.0, 1e-6, N)
    assert ledger.set_budget(SOURCE, 3.0, 1e-6) == first  # the same budget adds no row
    with pytest.raises(LedgerError) as info:
        ledger.set_budget(SOURCE, 4.0, 1e-6)
    assert str(info.value) == (
        f"data source {SOURCE!r} has budget epsilon 3.0 at delta 1e-06; raising it to epsilon "
        "4.0 at delta 1e-06 must be asked for explicitly (allow_raise, "
        "`fedguard-node budget set --raise`)"
    )
    with pytest.raises(LedgerError, match="must be asked for explicitly"):
        ledger.set_budget(SOURCE, 2.0, 1e-5)  # a larger delta is a weaker guarantee too
    ledger.set_budget(SOURCE, 2.0, 1e-6)  # lowering needs no flag
    ledger.set_budget(SOURCE, 5.0, 1e-6, allow_raise=True, note="ethics board 2026-11")
    history = PrivacyLedger(ledger.path).budget_history(SOURCE)
    assert [(b.epsilon, b.note) for b in history] == [
        (3.0, ""), (2.0, ""), (5.0, "ethics board 2026-11")
    ]
    assert ledger.budget(SOURCE).epsilon == 5.0
    assert ledger.sources() == [SOURCE]


def test_delta_must_be_below_one_over_n(ledger: PrivacyLedger) -> None:
    with pytest.raises(LedgerError) as info:
        ledger.set_budget(SOURCE, 3.0, 0.01, num_records=100)
    assert str(info.value) == (
        f"budget delta 0.01 for data source {SOURCE!r} is not below 1/n = 0.01 for its 100 "
        f"records: set a smaller delta with `fedguard-node budget set --source {SOURCE} "
        "--epsilon E --delta D`"
    )
    ledger.set_budget(SOURCE, 3.0, 1e-3)  # n unknown when set: checked at every reservation
    refused = _reserve(ledger, n=2000)
    assert not refused.allowed and "is not below 1/n = 0.0005 for its 2000 records" in (
        refused.message
    )
    assert ledger.releases(SOURCE) == []
    assert _reserve(ledger, n=500).allowed  # 1e-3 < 1/500


def test_a_source_without_a_budget_refuses_dp_work(ledger: PrivacyLedger) -> None:
    decision = _reserve(ledger, rnd=4)
    assert not decision.allowed and decision.reservations == ()
    assert decision.message == (
        f"node refuses round 4: it has no privacy budget for data source {SOURCE!r}; set one "
        f"with `fedguard-node budget set --source {SOURCE} --epsilon E --delta D`"
    )
    assert ledger.releases() == []
    with pytest.raises(LedgerError, match="has no budget, so no delta to account at"):
        ledger.spent(SOURCE)


def test_spend_is_composed_at_the_nodes_delta_not_the_runs(ledger: PrivacyLedger) -> None:
    """Item 6: a node at epsilon 3 for delta 1e-5 must not read as ~1 when a run asks 0.05."""
    ledger.set_budget(SOURCE, 3.0, 1e-5)
    big = Release(1.2, 0.05, 100)  # epsilon 2.79 at 1e-5, 0.82 at 0.05
    assert _reserve(ledger, big).allowed
    at_node = epsilon([big], 1e-5)
    assert ledger.spent(SOURCE) == pytest.approx(at_node)
    assert epsilon([big], 0.05) < at_node / 3  # what a server-chosen delta would have shown
    assert ledger.spent(SOURCE, delta=0.05) == pytest.approx(epsilon([big], 0.05))


def test_budget_follows_the_source_not_the_data_file(ledger: PrivacyLedger) -> None:
    """Reordering rows or adding one changes the fingerprint, not the budget's identity."""
    ledger.set_budget(SOURCE, _budget_between(2), DELTA)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    before = dataset_fingerprint(x, y)
    reordered = dataset_fingerprint(x[::-1].copy(), y[::-1].copy())
    grown = dataset_fingerprint(np.vstack([x, x[:1]]), np.append(y, 0))
    assert len({before, reordered, grown}) == 3
    assert _reserve(ledger, fingerprint=before, rnd=1).allowed
    assert _reserve(ledger, fingerprint=reordered, rnd=2).allowed
    third = _reserve(ledger, fingerprint=grown, rnd=3)
    assert not third.allowed  # the same source: its budget is spent
    assert [e.fingerprint for e in ledger.releases(SOURCE)] == [before, reordered]  # audit
    assert _reserve(ledger, source="hospital-a/other").allowed is False  # no budget there


# -- reserve, then settle (item 7) ---------------------------------------------------------


def test_reserve_composes_settled_and_outstanding_releases(ledger: PrivacyLedger) -> None:
    budget = _budget_between(2)
    ledger.set_budget(SOURCE, budget, DELTA)
    first = _reserve(ledger, rnd=1)
    assert first.allowed and first.spent_before == 0.0
    assert first.spent_after == pytest.approx(epsilon([ROUND], DELTA))
    (rid,) = first.reservations
    second = _reserve(ledger, rnd=2)  # the first is outstanding: it counts
    assert second.allowed and second.spent_before == pytest.approx(epsilon([ROUND], DELTA))
    third = _reserve(ledger, rnd=3)
    assert not third.allowed
    assert third.message == (
        f"node refuses round 3: epsilon would reach {epsilon([ROUND] * 3, DELTA):.2f} > budget "
        f"{budget:g} at delta 1e-05 (data source {SOURCE!r}); raise the source's budget "
        "(fedguard-node budget set --allow-raise) or ask for less (a smaller dp-epsilon, fewer "
        "rounds)"
    )
    ledger.settle(rid, ROUND)
    entries = ledger.releases(SOURCE)
    assert [e.status for e in entries] == ["settled", "reserved"]
    assert all(e.release == ROUND for e in entries)


def test_settle_records_what_was_made_and_never_more(ledger: PrivacyLedger) -> None:
    ledger.set_budget(SOURCE, 10.0, DELTA)
    (rid,) = _reserve(ledger).reservations
    with pytest.raises(LedgerError) as info:
        ledger.settle(rid, Release(1.1, 0.02, 51))
    assert "is more than that: reserve the difference first, then settle" in str(info.value)
    with pytest.raises(LedgerError):
        ledger.settle(rid, Release(1.0, 0.02, 50))  # less noise is more
    with pytest.raises(LedgerError):
        ledger.settle(rid, SkellamRelease(1e6, 10.0, 30.0, 1))  # another mechanism
    ledger.settle(rid, Release(1.2, 0.02, 30))  # more noise, fewer steps: dominated
    assert ledger.spent(SOURCE) == pytest.approx(epsilon([Release(1.2, 0.02, 30)], DELTA))
    with pytest.raises(LedgerError, match=f"reservation {rid} is already settled"):
        ledger.settle(rid, Release(1.2, 0.02, 30))
    with pytest.raises(LedgerError, match=f"reservation {rid} is already settled"):
        ledger.cancel(rid)
    with pytest.raises(LedgerError, match="reservation 999 does not exist"):
        ledger.settle(999, ROUND)


def test_cancel_gives_the_reservation_back(ledger: PrivacyLedger) -> None:
    ledger.set_budget(SOURCE, _budget_between(1), DELTA)
    (rid,) = _reserve(ledger).reservations
    assert not _reserve(ledger, rnd=2).allowed
    ledger.cancel(rid)
    assert ledger.releases(SOURCE)[0].status == "cancelled"
    assert ledger.releases(SOURCE)[0].release is None
    assert ledger.spent(SOURCE) == 0.0
    assert _reserve(ledger, rnd=2).allowed


def test_a_crash_after_reserve_leaves_the_reservation_counted(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    PrivacyLedger(path).set_budget(SOURCE, 10.0, DELTA)
    code = (
        "from privacy.dp.ledger import PrivacyLedger\n"
        "from privacy.dp.accounting import Release\n"
        "import os\n"
        f"d = PrivacyLedger({str(path)!r}).reserve({SOURCE!r}, 'r', 1, "
        "[('dp-sgd', Release(1.1, 0.02, 50))], num_records=10000, fingerprint='f')\n"
        "os._exit(9)  # dies before training, before settling\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH":
                          str(REPO)}, capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    (entry,) = PrivacyLedger(path).releases(SOURCE)
    assert entry.status == "reserved"
    assert PrivacyLedger(path).spent(SOURCE) == pytest.approx(epsilon([ROUND], DELTA))


def test_several_releases_are_reserved_all_or_nothing(ledger: PrivacyLedger) -> None:
    metric = Release(5.0, 1.0, 1)
    ledger.set_budget(SOURCE, epsilon([ROUND, metric], DELTA) * 1.001, DELTA)
    pair = [("dp-sgd", ROUND), ("metrics", metric)]
    ok = ledger.reserve(SOURCE, "r", 1, pair, num_records=N, fingerprint=FP)
    assert ok.allowed and len(ok.reservations) == 2
    assert [e.kind for e in ledger.releases(SOURCE)] == ["dp-sgd", "metrics"]
    refused = ledger.reserve(SOURCE, "r", 2, pair, num_records=N, fingerprint=FP)
    assert not refused.allowed and len(ledger.releases(SOURCE)) == 2


def test_threads_racing_on_one_ledger_never_overspend(ledger: PrivacyLedger) -> None:
    ledger.set_budget(SOURCE, _budget_between(4, RACE_RELEASE), DELTA)
    gun = threading.Barrier(6)
    results: list[bool] = []
    lock = threading.Lock()

    def racer(i: int) -> None:
        node = PrivacyLedger(ledger.path)
        gun.wait()
        for r in range(3):
            d = _reserve(node, RACE_RELEASE, run=f"t{i}", rnd=r)
            with lock:
                results.append(d.allowed)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 18 and sum(results) == 4
    assert ledger.spent(SOURCE) <= ledger.budget(SOURCE).epsilon


@pytest.mark.slow
def test_processes_racing_on_one_ledger_never_overspend(tmp_path: Path) -> None:
    """Item 7: two runs on one node both passed the check; now exactly the budget is used."""
    path = tmp_path / "ledger.sqlite"
    PrivacyLedger(path).set_budget(SOURCE, _budget_between(5, RACE_RELEASE), DELTA)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WRITER), "race", str(path), SOURCE, "4"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for _ in range(3)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    lines = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        lines += out.split()
    assert lines.count("ok") == 5 and lines.count("refused") == 7
    ledger = PrivacyLedger(path)
    assert len(ledger.releases(SOURCE)) == 5
    assert ledger.spent(SOURCE) <= ledger.budget(SOURCE).epsilon


# -- storage -------------------------------------------------------------------------------


def test_every_table_of_the_record_is_append_only(ledger: PrivacyLedger) -> None:
    ledger.set_budget(SOURCE, 10.0, DELTA)
    (rid,) = _reserve(ledger).reservations
    ledger.settle(rid, ROUND)
    con = sqlite3.connect(ledger.path)
    try:
        for table in ("budgets", "reservations", "settlements"):
            for sql in (f"UPDATE {table} SET ts = 'x'", f"DELETE FROM {table}"):
                with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                    con.execute(sql)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()
    assert ledger.releases(SOURCE)[0].status == "settled"


def test_schema_1_ledger_is_migrated_without_losing_a_release(tmp_path: Path) -> None:
    path = tmp_path / "privacy-ledger.sqlite"
    shutil.copy(LEDGER_V1, path)
    con = sqlite3.connect(path)
    old_rows = con.execute("SELECT * FROM releases ORDER BY id").fetchall()
    con.close()
    assert len(old_rows) == 6
    ledger = PrivacyLedger(path)
    legacy = ledger.releases()
    assert [e.status for e in legacy] == ["legacy"] * 6
    assert [e.run_id for e in legacy] == ["run-1"] * 3 + ["run-2"] * 2 + ["run-3"]
    assert {e.fingerprint[:2] for e in legacy} == {"a1", "b2"}
    history = [Release(1.1, 0.02, 50)] * 3 + [Release(1.3, 0.02, 50)] * 2 + [
        Release(4.0, 1.0, 1)]
    assert [e.release for e in legacy] == history
    # Nothing records which source they were made on: they count against every source.
    ledger.set_budget(SOURCE, 50.0, 1e-6)
    assert ledger.spent(SOURCE) == pytest.approx(epsilon(history, 1e-6))
    assert _reserve(ledger).allowed
    assert ledger.spent(SOURCE) == pytest.approx(epsilon([*history, ROUND], 1e-6))
    assert ledger.cached_noise("k") == 1.1
    rows = ledger.summary()
    assert [r["run_id"] for r in rows] == ["run-1 (legacy)", "run-2 (legacy)",
                                           "run-3 (legacy)", "run-1"]
    assert rows[-1]["epsilon_cumulative"] == pytest.approx(ledger.spent(SOURCE))
    again = PrivacyLedger(path)  # idempotent
    assert len(again.releases()) == 7
    con = sqlite3.connect(path)
    assert con.execute("SELECT * FROM releases ORDER BY id").fetchall() == old_rows
    assert con.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == (
        "fedguard-privacy-ledger/2")
    con.close()


def test_migrated_ledger_without_sources_lists_its_legacy_releases(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    shutil.copy(LEDGER_V1, path)
    rows = PrivacyLedger(path, create=False).summary()
    assert {r["source"] for r in rows} == {LEGACY_SOURCE}
    assert rows[-1]["delta"] == 1e-6  # the strictest delta any legacy release was made at


def test_calibration_cache_first_value_wins(ledger: PrivacyLedger) -> None:
    assert ledger.cached_noise("run-1/key") is None
    ledger.store_noise("run-1/key", 1.25)
    ledger.store_noise("run-1/key", 9.0)  # a concurrent, later calibration must not win
    assert PrivacyLedger(ledger.path).cached_noise("run-1/key") == 1.25


@pytest.mark.parametrize(
    "content",
    [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 200],
)
def test_corrupt_file_gives_one_line_ledger_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(content)
    with pytest.raises(LedgerError, match="not a usable fedguard privacy ledger") as info:
        PrivacyLedger(path)
    assert "\n" not in str(info.value)


def test_foreign_sqlite_file_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match="not a fedguard privacy ledger"):
        PrivacyLedger(path)
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    con.close()
    assert tables == {"customers"}


def test_read_only_open_of_missing_ledger_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "wrong-dir" / "privacy-ledger.sqlite"
    with pytest.raises(LedgerError, match="no privacy ledger at .*--data-dir points elsewhere"):
        PrivacyLedger(path, create=False)
    assert not path.parent.exists()


def test_directory_path_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="is a directory"):
        PrivacyLedger(tmp_path)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kind": "magic"}, "kind='magic' is unknown"),
        ({"fingerprint": ""}, "fingerprint is empty"),
        ({"n": 0}, "num_records=0: must be an integer >= 1"),
        ({"source": " "}, "data source ' ': must be a printable name"),
        ({"source": "a\nb"}, "must be a printable name"),
    ],
)
def test_bad_reserve_arguments(ledger: PrivacyLedger, kwargs: dict, match: str) -> None:
    ledger.set_budget(SOURCE, 10.0, DELTA)
    with pytest.raises(LedgerError, match=match) as info:
        _reserve(ledger, **kwargs)
    assert "\n" not in str(info.value)
    assert ledger.releases() == []


@pytest.mark.parametrize(
    "eps,delta,match",
    [(0.0, 1e-5, "budget epsilon=0.0"), (float("inf"), 1e-5, "budget epsilon=inf"),
     (3.0, 1.0, r"budget delta=1.0: must be in \(0, 1\)")],
)
def test_bad_budgets(ledger: PrivacyLedger, eps: float, delta: float, match: str) -> None:
    with pytest.raises(LedgerError, match=match):
        ledger.set_budget(SOURCE, eps, delta)


def test_format_ledger_shows_budget_and_cumulative_epsilon(ledger: PrivacyLedger) -> None:
    assert "no releases recorded" in format_ledger(ledger)
    ledger.set_budget(SOURCE, 20.0, DELTA, num_records=N)
    for run in ("run-1", "run-2"):
        for r in (1, 2):
            (rid,) = _reserve(ledger, run=run, rnd=r).reservations
            if run == "run-1":
                ledger.settle(rid, ROUND)
    text = format_ledger(ledger)
    rows = ledger.summary()
    assert [r["run_id"] for r in rows] == ["run-1", "run-2"]
    assert rows[1]["epsilon_cumulative"] == pytest.approx(epsilon([ROUND] * 4, DELTA))
    assert (rows[0]["rounds"], rows[0]["open"], rows[1]["open"]) == (2, 0, 2)
    assert f"budget {SOURCE}: epsilon 20.0 at delta 1e-05, {N} records" in text
    assert f"{rows[1]['epsilon_cumulative']:.3f}" in text
    assert all(line == line.rstrip() for line in text.splitlines())


@pytest.mark.slow
def test_sigkill_never_loses_an_acknowledged_release(tmp_path: Path) -> None:
    """Kill writers at random points; every release they acknowledged must be on disk.

    Two writers share the ledger each time (as a node's concurrent processes could), so
    the kill also lands while the other process holds or waits for the write lock.
    """
    path = tmp_path / "ledger.sqlite"
    rng = random.Random(20261124)
    acked: list[tuple[int, str, int]] = []
    for kill in range(4):
        procs = [_start_writer(path, f"run-{kill}-{w}") for w in range(2)]
        for proc in procs:
            assert proc.stdout is not None
            for _ in range(rng.randint(1, 25)):
                acked.append(_parse_ack(proc.stdout.readline()))
            proc.send_signal(signal.SIGKILL)  # mid-way through its next release
        for proc in procs:
            assert proc.stdout is not None
            proc.wait()
            acked.extend(_parse_ack(line) for line in proc.stdout.read().splitlines())
            proc.stdout.close()
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.returncode == -signal.SIGKILL

        stored = {(e.id, e.run_id, e.round) for e in PrivacyLedger(path).releases()
                  if e.status == "settled"}
        assert set(acked) <= stored
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
    assert len({run for _, run, _ in acked}) == 8
    assert len({row_id for row_id, _, _ in acked}) == len(acked)  # ids never reused


def _start_writer(path: Path, run_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), "crash", str(path), run_id, "60"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _parse_ack(line: str) -> tuple[int, str, int]:
    word, row_id, run_id, round_no = line.split()
    assert word == "ack"
    return int(row_id), run_id, int(round_no)
