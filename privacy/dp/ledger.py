"""The node's append-only privacy ledger: every DP release it ever made, across runs.

A node's privacy loss on a dataset accumulates over *all* federations it takes part in, so
the budget check must compose the whole history, not just the current run. In deployment
each Flower message starts a fresh process, so the ledger is also where the calibrated noise
multiplier is cached (a node calibrates once per run, not once per round).

Storage is SQLite in WAL mode with ``synchronous=FULL``: when :meth:`PrivacyLedger.record`
returns, the row is on disk. Callers record *before* the update leaves the node, so a crash
can only over-count a release, never lose one. Triggers make the releases table
append-only. Every operation opens its own short-lived connection, which keeps the ledger
safe to use from threads and from forked simulation workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from privacy.dp.accounting import ACCOUNTANTS, AccountingError, Release, epsilon

__all__ = [
    "KINDS",
    "BudgetDecision",
    "LedgerEntry",
    "LedgerError",
    "PrivacyLedger",
    "dataset_fingerprint",
    "format_ledger",
]

SCHEMA_ID = "fedguard-privacy-ledger/1"
KINDS: tuple[str, ...] = ("dp-sgd", "user-level")
_SHORT = 12  # characters of a fingerprint shown to humans

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', '{SCHEMA_ID}');
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    delta REAL NOT NULL,
    accountant TEXT NOT NULL,
    kind TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_by_fingerprint ON releases (fingerprint);
CREATE TRIGGER IF NOT EXISTS releases_no_update BEFORE UPDATE ON releases
BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS releases_no_delete BEFORE DELETE ON releases
BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only'); END;
CREATE TABLE IF NOT EXISTS calibrations (
    key TEXT PRIMARY KEY,
    noise_multiplier REAL NOT NULL,
    ts TEXT NOT NULL
);
"""


class LedgerError(Exception):
    """The ledger file is unusable or an argument to it is invalid (message is one line)."""


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded release, as stored."""

    id: int
    ts: str
    run_id: str
    round: int
    fingerprint: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    kind: str

    @property
    def release(self) -> Release:
        return Release(self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class BudgetDecision:
    """Whether a node may make one more release, with a one-line reason for the server."""

    allowed: bool
    spent_before: float
    spent_after: float
    budget: float
    message: str


def dataset_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 over shapes, dtypes and bytes of features and labels.

    The privacy budget belongs to a dataset, so the ledger keys releases by this digest:
    the same local data gives the same fingerprint in every run and every process.
    """
    h = hashlib.sha256(b"fedguard-dataset/1\0")
    for name, arr in (("x", x), ("y", y)):
        a = np.ascontiguousarray(arr)
        h.update(f"{name}:{a.dtype.str}:{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _fmt_budget(budget: float) -> str:
    """3 -> "3.0", 2.75 -> "2.75": a budget is shown as the operator wrote it."""
    return f"{budget:.1f}" if budget == round(budget, 1) else f"{budget:g}"


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise LedgerError(
            f"accountant={accountant!r} is unknown: use one of {', '.join(ACCOUNTANTS)}"
        )


class PrivacyLedger:
    """Append-only SQLite record of a node's DP releases plus its calibration cache."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        """Open (and by default create) the ledger at ``path``.

        ``create=False`` is for read-only tools such as ``fedguard-node ledger``: looking at
        a wrong ``--data-dir`` must not leave an empty ledger behind.
        """
        self.path = Path(path)
        if self.path.is_dir():
            raise LedgerError(f"privacy ledger {self.path} is a directory: pass a file path")
        if not create and not self.path.exists():
            raise LedgerError(
                f"no privacy ledger at {self.path}: this node has not trained with DP yet, "
                "or --data-dir points elsewhere"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"cannot create folder for privacy ledger {self.path}: {exc.strerror}"
            ) from exc
        try:
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
                row = None
                if "meta" in tables:
                    row = con.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                elif not tables:  # a new (or empty) file becomes a ledger
                    # IF NOT EXISTS everywhere: two processes may create it at once.
                    con.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
                    row = (SCHEMA_ID,)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"{self.path} is not a usable fedguard privacy ledger ({exc}); "
                "restore it from backup or point --data-dir elsewhere"
            ) from exc
        if row is None or row[0] != SCHEMA_ID:
            found = row[0] if row else "none"
            raise LedgerError(
                f"{self.path} is not a fedguard privacy ledger (schema {found!r}, "
                f"expected {SCHEMA_ID!r}); point --data-dir elsewhere"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection in autocommit mode; callers open transactions explicitly."""
        try:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open privacy ledger {self.path}: {exc}") from exc
        try:
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA busy_timeout=30000")
            yield con
        finally:
            con.close()

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        try:
            with self._connect() as con:
                return con.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"privacy ledger {self.path} cannot be read: {exc}") from exc

    # -- releases ---------------------------------------------------------------------------

    def record(
        self,
        run_id: str,
        round: int,
        fingerprint: str,
        release: Release,
        delta: float,
        accountant: str,
        kind: str = "dp-sgd",
    ) -> LedgerEntry:
        """Append one release; it is durable on disk when this returns.

        Call it before the update leaves the node: a crash afterwards over-counts (safe),
        whereas recording after sending could lose a release that was made.
        """
        if not isinstance(release, Release):
            raise LedgerError(f"{release!r} is not a Release; build one with Release(...)")
        if kind not in KINDS:
            raise LedgerError(f"kind={kind!r} is unknown: use one of {', '.join(KINDS)}")
        _check_accountant(accountant)
        if not (isinstance(delta, int | float) and 0 < delta < 1):
            raise LedgerError(f"delta={delta}: must be in (0, 1); e.g. 1e-5")
        if not fingerprint:
            raise LedgerError("fingerprint is empty: compute it with dataset_fingerprint(x, y)")
        ts = _now()
        values = (
            ts, str(run_id), int(round), fingerprint, float(release.noise_multiplier),
            float(release.sample_rate), int(release.steps), float(delta), accountant, kind,
        )
        try:
            with self._connect() as con:
                con.execute("BEGIN IMMEDIATE")
                cur = con.execute(
                    "INSERT INTO releases (ts, run_id, round, fingerprint, noise_multiplier,"
                    " sample_rate, steps, delta, accountant, kind)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
                row_id = int(cur.lastrowid or 0)
                con.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot record release in {self.path}: {exc}") from exc
        return LedgerEntry(row_id, *values)

    def releases(self, fingerprint: str | None = None) -> list[LedgerEntry]:
        """All recorded releases in the order they were made, optionally for one dataset."""
        sql = "SELECT * FROM releases"
        params: tuple[object, ...] = ()
        if fingerprint is not None:
            sql += " WHERE fingerprint = ?"
            params = (fingerprint,)
        return [LedgerEntry(*row) for row in self._query(sql + " ORDER BY id", params)]

    def spent(self, fingerprint: str, delta: float, accountant: str = "rdp") -> float:
        """Epsilon at ``delta`` of everything this node ever released on ``fingerprint``.

        User-level and sample-level releases are composed together: a user-level guarantee
        implies the same sample-level one, so the sum is a valid (conservative) bound.
        """
        return self._epsilon([e.release for e in self.releases(fingerprint)], delta, accountant)

    def predict(
        self, fingerprint: str, release: Release, delta: float, accountant: str = "rdp"
    ) -> float:
        """Epsilon this dataset would reach if ``release`` were made now."""
        history = [e.release for e in self.releases(fingerprint)]
        return self._epsilon([*history, release], delta, accountant)

    def check(
        self,
        fingerprint: str,
        release: Release,
        delta: float,
        budget: float,
        accountant: str = "rdp",
        round: int | None = None,
    ) -> BudgetDecision:
        """Decide whether ``release`` keeps the dataset within its lifetime ``budget``."""
        if not (isinstance(budget, int | float) and math.isfinite(budget) and budget > 0):
            raise LedgerError(f"budget={budget}: must be a finite epsilon > 0; e.g. 3.0")
        history = [e.release for e in self.releases(fingerprint)]
        before = self._epsilon(history, delta, accountant)
        after = self._epsilon([*history, release], delta, accountant)
        what = f"round {round}" if round is not None else "release"
        where = f"(dataset {fingerprint[:_SHORT]})"
        cap = _fmt_budget(budget)
        allowed = after <= budget
        if allowed:
            message = (
                f"node accepts {what}: epsilon {before:.2f} -> {after:.2f} "
                f"<= budget {cap} {where}"
            )
        else:
            message = (
                f"node refuses {what}: epsilon would reach {after:.2f} > budget {cap} {where}"
            )
        return BudgetDecision(allowed, before, after, float(budget), message)

    @staticmethod
    def _epsilon(releases: list[Release], delta: float, accountant: str) -> float:
        try:
            return epsilon(releases, delta, accountant)
        except AccountingError as exc:
            raise LedgerError(str(exc)) from exc

    # -- calibration cache ------------------------------------------------------------------

    def cached_noise(self, key: str) -> float | None:
        """The noise multiplier stored under ``key``, or None if never calibrated."""
        rows = self._query("SELECT noise_multiplier FROM calibrations WHERE key = ?", (key,))
        return float(rows[0][0]) if rows else None

    def store_noise(self, key: str, value: float) -> None:
        """Remember a calibrated noise multiplier; the first stored value wins.

        First-wins keeps every process of a run on the same noise even if two of them
        calibrated concurrently.
        """
        if not (math.isfinite(value) and value > 0):
            raise LedgerError(f"noise multiplier {value} for {key!r}: must be finite and > 0")
        try:
            with self._connect() as con:
                con.execute("BEGIN IMMEDIATE")
                con.execute(
                    "INSERT OR IGNORE INTO calibrations (key, noise_multiplier, ts)"
                    " VALUES (?, ?, ?)",
                    (key, float(value), _now()),
                )
                con.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot store calibration in {self.path}: {exc}") from exc

    # -- reporting --------------------------------------------------------------------------

    def summary(
        self, delta: float | None = None, accountant: str = "rdp"
    ) -> list[dict[str, Any]]:
        """One row per (dataset, run): rounds, steps and cumulative epsilon after that run.

        ``delta`` defaults to the smallest delta recorded for the dataset (the strictest).
        """
        entries = self.releases()
        rows: list[dict[str, Any]] = []
        by_dataset: dict[str, list[LedgerEntry]] = {}
        for e in entries:
            by_dataset.setdefault(e.fingerprint, []).append(e)
        for fp, items in by_dataset.items():
            d = delta if delta is not None else min(e.delta for e in items)
            runs: dict[str, list[LedgerEntry]] = {}
            for e in items:
                runs.setdefault(e.run_id, []).append(e)
            history: list[Release] = []
            for run_id, run_items in runs.items():
                history.extend(e.release for e in run_items)
                rows.append(
                    {
                        "dataset": fp[:_SHORT],
                        "run_id": run_id,
                        "kinds": ",".join(sorted({e.kind for e in run_items})),
                        "rounds": len({e.round for e in run_items}),
                        "steps": sum(e.steps for e in run_items),
                        "first": run_items[0].ts,
                        "last": run_items[-1].ts,
                        "delta": d,
                        "epsilon_cumulative": self._epsilon(list(history), d, accountant),
                    }
                )
        return rows


def format_ledger(ledger: PrivacyLedger, accountant: str = "rdp") -> str:
    """Plain-text table of :meth:`PrivacyLedger.summary` for ``fedguard-node ledger``."""
    rows = ledger.summary(accountant=accountant)
    if not rows:
        return f"privacy ledger {ledger.path}: no releases recorded"
    header = ("dataset", "run", "kinds", "rounds", "steps", "delta", "epsilon (cumulative)")
    table = [
        (
            r["dataset"], r["run_id"], r["kinds"], str(r["rounds"]), str(r["steps"]),
            f"{r['delta']:.0e}", f"{r['epsilon_cumulative']:.3f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    lines = [f"privacy ledger {ledger.path} ({accountant} accountant)"]
    for cells in (header, tuple("-" * w for w in widths), *table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(lines)
