"""The privacy ledger: durable, append-only, composes a dataset's whole history."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from privacy.dp.accounting import Release, epsilon
from privacy.dp.ledger import (
    LedgerError,
    PrivacyLedger,
    dataset_fingerprint,
    format_ledger,
)

REPO = Path(__file__).resolve().parents[1]
WRITER = REPO / "tests" / "helpers" / "ledger_writer.py"
DELTA = 1e-5
FP = "a" * 64
ROUND = Release(1.1, 0.02, 50)


@pytest.fixture
def ledger(tmp_path: Path) -> PrivacyLedger:
    return PrivacyLedger(tmp_path / "node" / "privacy-ledger.sqlite")


def test_records_survive_reopening_in_order(ledger: PrivacyLedger) -> None:
    for r in range(1, 4):
        ledger.record("run-1", r, FP, ROUND, DELTA, "rdp")
    ledger.record("run-1", 1, "b" * 64, Release(2.0, 1.0, 1), DELTA, "rdp", kind="user-level")
    again = PrivacyLedger(ledger.path)
    mine = again.releases(FP)
    assert [e.round for e in mine] == [1, 2, 3]
    assert all(e.release == ROUND and e.kind == "dp-sgd" for e in mine)
    assert len(again.releases()) == 4
    assert again.releases("b" * 64)[0].kind == "user-level"


def test_spent_composes_all_runs_and_grows_every_round(ledger: PrivacyLedger) -> None:
    seen = [ledger.spent(FP, DELTA)]
    assert seen == [0.0]
    for run in ("run-1", "run-2"):
        node = PrivacyLedger(ledger.path)  # each run (each message) is a fresh process
        for r in range(1, 4):
            node.record(run, r, FP, ROUND, DELTA, "rdp")
            seen.append(node.spent(FP, DELTA))
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False))
    assert seen[-1] == pytest.approx(epsilon([ROUND] * 6, DELTA), abs=1e-12)


def test_spent_is_per_dataset(ledger: PrivacyLedger) -> None:
    ledger.record("run-1", 1, FP, ROUND, DELTA, "rdp")
    assert ledger.spent("c" * 64, DELTA) == 0.0


def test_predict_matches_spent_after_recording(ledger: PrivacyLedger) -> None:
    ledger.record("run-1", 1, FP, ROUND, DELTA, "rdp")
    predicted = ledger.predict(FP, ROUND, DELTA)
    ledger.record("run-1", 2, FP, ROUND, DELTA, "rdp")
    assert ledger.spent(FP, DELTA) == pytest.approx(predicted, abs=1e-12)


def test_check_refuses_the_release_that_would_overspend(ledger: PrivacyLedger) -> None:
    per_round = epsilon([ROUND], DELTA)
    two_rounds = epsilon([ROUND, ROUND], DELTA)
    budget = (per_round + two_rounds) / 2  # room for one round, not for two
    first = ledger.check(FP, ROUND, DELTA, budget, round=1)
    assert first.allowed and first.spent_before == 0.0
    assert first.spent_after == pytest.approx(per_round)
    ledger.record("run-1", 1, FP, ROUND, DELTA, "rdp")
    second = ledger.check(FP, ROUND, DELTA, budget, round=2)
    assert not second.allowed
    assert second.spent_after == pytest.approx(two_rounds) and second.spent_after > budget
    assert second.message == (
        f"node refuses round 2: epsilon would reach {two_rounds:.2f} > budget {budget:g} "
        f"(dataset {FP[:12]})"
    )


def test_refusal_message_shows_budget_as_written(ledger: PrivacyLedger) -> None:
    big = Release(0.5, 1.0, 100)
    message = ledger.check("abc123" + "0" * 58, big, DELTA, 3.0, round=7).message
    spend = epsilon([big], DELTA)
    assert message == (
        f"node refuses round 7: epsilon would reach {spend:.2f} > budget 3.0 "
        "(dataset abc123000000)"
    )


def test_releases_table_is_append_only(ledger: PrivacyLedger) -> None:
    ledger.record("run-1", 1, FP, ROUND, DELTA, "rdp")
    con = sqlite3.connect(ledger.path)
    try:
        for sql in ("UPDATE releases SET steps = 1", "DELETE FROM releases"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                con.execute(sql)
    finally:
        con.close()
    assert ledger.releases()[0].steps == ROUND.steps


def test_ledger_uses_wal_journal(ledger: PrivacyLedger) -> None:
    con = sqlite3.connect(ledger.path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


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
        ({"accountant": "gdp"}, "accountant='gdp' is unknown"),
        ({"delta": 0.0}, r"delta=0.0: must be in \(0, 1\)"),
        ({"fingerprint": ""}, "fingerprint is empty"),
    ],
)
def test_bad_record_arguments(ledger: PrivacyLedger, kwargs: dict, match: str) -> None:
    args = {
        "run_id": "r", "round": 1, "fingerprint": FP, "release": ROUND,
        "delta": DELTA, "accountant": "rdp", **kwargs,
    }
    with pytest.raises(LedgerError, match=match):
        ledger.record(**args)
    assert ledger.releases() == []


def test_dataset_fingerprint_tracks_content_shape_and_dtype() -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    fp = dataset_fingerprint(x, y)
    assert fp == dataset_fingerprint(x.copy(), y.copy())
    assert len(fp) == 64
    changed = x.copy()
    changed[0, 0] = 100
    assert dataset_fingerprint(changed, y) != fp
    assert dataset_fingerprint(x.reshape(3, 4), y) != fp
    assert dataset_fingerprint(x.astype(np.float64), y) != fp
    assert dataset_fingerprint(np.asfortranarray(x), y) == fp  # layout is not content


def test_format_ledger_shows_cumulative_epsilon_per_run(ledger: PrivacyLedger) -> None:
    assert "no releases recorded" in format_ledger(ledger)
    for run in ("run-1", "run-2"):
        for r in (1, 2):
            ledger.record(run, r, FP, ROUND, DELTA, "rdp")
    text = format_ledger(ledger)
    rows = ledger.summary()
    assert [r["run_id"] for r in rows] == ["run-1", "run-2"]
    assert rows[1]["epsilon_cumulative"] == pytest.approx(epsilon([ROUND] * 4, DELTA))
    assert rows[0]["rounds"] == 2 and rows[0]["steps"] == 2 * ROUND.steps
    assert f"{rows[1]['epsilon_cumulative']:.3f}" in text
    assert FP[:12] in text
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
            proc.send_signal(signal.SIGKILL)  # mid-way through its next record
        for proc in procs:
            assert proc.stdout is not None
            proc.wait()
            acked.extend(_parse_ack(line) for line in proc.stdout.read().splitlines())
            proc.stdout.close()
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.returncode == -signal.SIGKILL

        stored = {(e.id, e.run_id, e.round) for e in PrivacyLedger(path).releases()}
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
        [sys.executable, str(WRITER), str(path), run_id, "60"],
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
