"""The node's privacy ledger: its own budget per data source, and every release it made.

The budget belongs to the node, not to a run. The node operator names each data source with a
stable identity that survives edits of the file (e.g. ``"hospital-a/ehr-2026"``), and sets
that source's lifetime budget ``(epsilon, delta)`` with :meth:`PrivacyLedger.set_budget`;
delta must be below ``1/n`` for the ``n`` records of the source. A source without a budget
gets no DP work at all (:meth:`PrivacyLedger.reserve` refuses, naming the command that sets
one). A run's own ``(epsilon, delta)`` is the server's request; the node's spend is always
composed at the node's delta.

Every release is *reserved* before training, in one ``BEGIN IMMEDIATE`` transaction that
composes everything already settled or still reserved on the source, adds this release,
compares with the budget and inserts the reservation: two concurrent runs can no longer both
pass the check. After training the reservation is *settled* with the release actually made
(never more than reserved; reserve more first if more is needed), or *cancelled* if nothing
left the node. A crash between reserve and settle leaves the reservation counted at its
reserved size, which can only over-count.

Each release row keeps the fingerprint of the data it was computed on as an audit column;
the fingerprint is not the key, so reordering rows or adding one does not reset the budget.

Storage is SQLite in WAL mode with ``synchronous=FULL``: when a call returns, its rows are on
disk. Triggers make every table of the record append-only (budgets too: a change of budget
is a new row, and raising one must be asked for explicitly). Each thread of each process keeps
one connection (opening and closing one per call cost about half of a DP client-round at
scale: closing the last WAL connection checkpoints); every write is its own ``BEGIN
IMMEDIATE`` transaction, so threads and processes can share the ledger at once.

Ledgers written before data-source identities (schema ``fedguard-privacy-ledger/1``, keyed by
data-file hash) are migrated in place on first open: their releases are kept untouched and
count against *every* data source of the ledger, because nothing records which source they
were made on. That over-counts when one ledger served several sources, which is safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from privacy.dp.accounting import (
    ACCOUNTANTS,
    AccountingError,
    Mechanism,
    Release,
    epsilon,
    mechanism_from_json,
    mechanism_to_json,
)

__all__ = [
    "KINDS",
    "LEGACY_SOURCE",
    "Budget",
    "BudgetDecision",
    "LedgerEntry",
    "LedgerError",
    "PrivacyLedger",
    "dataset_fingerprint",
    "format_ledger",
    "no_budget_message",
    "set_budget_command",
]

SCHEMA_ID = "fedguard-privacy-ledger/2"
LEGACY_SCHEMA_ID = "fedguard-privacy-ledger/1"
#: What a release is: sample-level DP-SGD, a user-level (whole-update) release, or a noisy
#: metric release (privacy.dp.metrics).
#: What a refused node's operator (or the run) can do, appended to an overspend refusal.
OVERSPEND_FIX = ("; raise the source's budget (fedguard-node budget set --allow-raise) or ask for "
                 "less (a smaller dp-epsilon, fewer rounds)")
KINDS: tuple[str, ...] = ("dp-sgd", "user-level", "metrics")
#: How legacy (schema 1) releases are listed: they count against every source.
LEGACY_SOURCE = "(before data sources)"
_MAX_SOURCE = 200

_V2_TABLES = """
CREATE TABLE IF NOT EXISTS budgets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    source TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    num_records INTEGER,
    note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS budgets_by_source ON budgets (source);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    source TEXT NOT NULL,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    kind TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    params TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    num_records INTEGER NOT NULL,
    accountant TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_by_source ON reservations (source);
CREATE TABLE IF NOT EXISTS settlements (
    reservation_id INTEGER PRIMARY KEY REFERENCES reservations (id),
    ts TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('settled', 'cancelled')),
    mechanism TEXT,
    params TEXT
);
CREATE TABLE IF NOT EXISTS calibrations (
    key TEXT PRIMARY KEY,
    noise_multiplier REAL NOT NULL,
    ts TEXT NOT NULL
);
""" + "".join(
    f"""
CREATE TRIGGER IF NOT EXISTS {t}_no_update BEFORE UPDATE ON {t}
BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {t}_no_delete BEFORE DELETE ON {t}
BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only'); END;"""
    for t in ("budgets", "reservations", "settlements")
)

_CREATE = f"""BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', '{SCHEMA_ID}');
{_V2_TABLES}
COMMIT;"""

# Idempotent and race-free: a second process migrating at the same time changes nothing.
_MIGRATE_V1 = f"""BEGIN IMMEDIATE;
{_V2_TABLES}
UPDATE meta SET value = '{SCHEMA_ID}' WHERE key = 'schema' AND value = '{LEGACY_SCHEMA_ID}';
COMMIT;"""


class LedgerError(Exception):
    """The ledger file is unusable or an argument to it is invalid (message is one line)."""


def set_budget_command(source: str) -> str:
    """The node command that sets a budget, as refusals name it."""
    return f"fedguard-node budget set --source {source} --epsilon E --delta D"


def no_budget_message(source: str, what: str) -> str:
    """The one-line refusal of DP work (``what``, e.g. "round 3") on a source without budget."""
    return (
        f"node refuses {what}: it has no privacy budget for data source {source!r}; "
        f"set one with `{set_budget_command(source)}`"
    )


@dataclass(frozen=True)
class Budget:
    """A data source's lifetime budget as set by the node operator at ``ts``."""

    source: str
    epsilon: float
    delta: float
    num_records: int | None
    ts: str
    note: str = ""


@dataclass(frozen=True)
class LedgerEntry:
    """One release: reserved, then settled or cancelled (or a legacy, schema-1 release).

    ``release`` is what counts against the budget: the settled release, else the reserved
    one while it is outstanding, else nothing (cancelled).
    """

    id: int
    ts: str
    source: str
    run_id: str
    round: int
    kind: str
    fingerprint: str
    status: str  # "reserved" | "settled" | "cancelled" | "legacy"
    reserved: Mechanism
    settled: Mechanism | None
    accountant: str
    num_records: int | None

    @property
    def release(self) -> Mechanism | None:
        if self.status == "cancelled":
            return None
        return self.settled if self.settled is not None else self.reserved


@dataclass(frozen=True)
class BudgetDecision:
    """Whether the node reserved the releases, with a one-line reason for the server.

    ``reservations`` holds the reservation ids, in the order the releases were given, when
    ``allowed``; it is empty for a refusal.
    """

    allowed: bool
    spent_before: float
    spent_after: float
    budget: float | None
    delta: float | None
    message: str
    reservations: tuple[int, ...] = ()


def dataset_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 over shapes, dtypes and bytes of features and labels.

    An audit column of each release (which exact data a release was computed on); the budget
    is keyed by the data source's identity, not by this digest.
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


def _check_source(source: str) -> None:
    if (
        not isinstance(source, str)
        or not source.strip()
        or len(source) > _MAX_SOURCE
        or not source.isprintable()
        or source == LEGACY_SOURCE
    ):
        raise LedgerError(
            f"data source {source!r}: must be a printable name of 1-{_MAX_SOURCE} characters "
            "that stays the same when the data file changes, e.g. 'hospital-a/ehr-2026'"
        )


def _check_records(num_records: int | None, required: bool) -> None:
    if num_records is None and not required:
        return
    if isinstance(num_records, bool) or not isinstance(num_records, int) or num_records < 1:
        raise LedgerError(f"num_records={num_records!r}: must be an integer >= 1")


def _check_epsilon_delta(eps: float, delta: float) -> None:
    if isinstance(eps, bool) or not (
        isinstance(eps, int | float) and math.isfinite(eps) and eps > 0
    ):
        raise LedgerError(f"budget epsilon={eps}: must be a finite number > 0; e.g. 3.0")
    if isinstance(delta, bool) or not (isinstance(delta, int | float) and 0 < delta < 1):
        raise LedgerError(f"budget delta={delta}: must be in (0, 1); e.g. 1e-6")


def _delta_problem(source: str, delta: float, n: int) -> str | None:
    """Delta >= 1/n allows mechanisms that publish a whole record; refuse such a budget."""
    if delta < 1.0 / n:
        return None
    return (
        f"budget delta {delta:g} for data source {source!r} is not below 1/n = {1 / n:.3g} "
        f"for its {n} records: set a smaller delta with `{set_budget_command(source)}`"
    )


class PrivacyLedger:
    """Append-only SQLite record of a node's budgets and releases, plus a calibration cache."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        """Open (and by default create) the ledger at ``path``; migrate a schema-1 ledger.

        ``create=False`` is for read-only tools such as ``fedguard-node ledger``: looking at
        a wrong ``--data-dir`` must not leave an empty ledger behind (a schema-1 ledger is
        still migrated: the migration only adds tables and keeps every row).
        """
        self.path = Path(path)
        self._local = threading.local()  # this thread's connection, and the pid it was made in
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
                    if row is not None and row[0] == LEGACY_SCHEMA_ID:
                        con.executescript(_MIGRATE_V1)
                        row = con.execute(
                            "SELECT value FROM meta WHERE key='schema'"
                        ).fetchone()
                elif not tables:  # a new (or empty) file becomes a ledger
                    con.executescript(_CREATE)
                    row = (SCHEMA_ID,)
                self._legacy = "releases" in {
                    r[0] for r in con.execute("SELECT name FROM sqlite_master")
                }
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
        """This thread's connection in autocommit mode (made on first use, and again after a
        fork: a connection never crosses processes); callers open transactions explicitly."""
        con = getattr(self._local, "con", None)
        if con is None or self._local.pid != os.getpid():
            try:
                con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot open privacy ledger {self.path}: {exc}") from exc
            try:  # a file that is no database fails here: the caller names it
                con.execute("PRAGMA synchronous=FULL")
                con.execute("PRAGMA busy_timeout=30000")
            except sqlite3.Error:
                con.close()
                raise
            self._local.con, self._local.pid = con, os.getpid()
        yield con

    def close(self) -> None:
        """Close this thread's connection (a later call opens a new one)."""
        con = getattr(self._local, "con", None)
        if con is not None and self._local.pid == os.getpid():
            con.close()
        self._local.con = None

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back otherwise."""
        try:
            with self._connect() as con:
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                    con.execute("COMMIT")
                finally:  # the connection is kept: never leave it inside a transaction
                    if con.in_transaction:
                        con.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot {what} in {self.path}: {exc}") from exc

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        try:
            with self._connect() as con:
                return con.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"privacy ledger {self.path} cannot be read: {exc}") from exc

    # -- budgets ----------------------------------------------------------------------------

    def set_budget(
        self,
        source: str,
        epsilon: float,
        delta: float,
        *,
        num_records: int | None = None,
        allow_raise: bool = False,
        note: str = "",
    ) -> Budget:
        """Set the lifetime ``(epsilon, delta)`` of ``source``; returns the budget in force.

        Lowering a budget is always allowed; raising either number (a weaker guarantee) only
        with ``allow_raise=True``, which the node's CLI exposes as an explicit flag. Setting
        the same budget again adds nothing. With ``num_records`` the delta is checked now
        (``delta < 1/n``); it is checked again at every reservation with the data in use.
        """
        _check_source(source)
        _check_epsilon_delta(epsilon, delta)
        _check_records(num_records, required=False)
        if num_records is not None and (problem := _delta_problem(source, delta, num_records)):
            raise LedgerError(problem)
        with self._write("set the budget") as con:
            current = self._budget(con, source)
            if current is not None:
                if (current.epsilon, current.delta) == (float(epsilon), float(delta)):
                    return current
                if not allow_raise and (epsilon > current.epsilon or delta > current.delta):
                    raise LedgerError(
                        f"data source {source!r} has budget epsilon {_fmt_budget(current.epsilon)}"
                        f" at delta {current.delta:g}; raising it to epsilon "
                        f"{_fmt_budget(float(epsilon))} at delta {float(delta):g} must be asked "
                        "for explicitly (allow_raise, `fedguard-node budget set --raise`)"
                    )
            ts = _now()
            con.execute(
                "INSERT INTO budgets (ts, source, epsilon, delta, num_records, note)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (ts, source, float(epsilon), float(delta), num_records, str(note)),
            )
        return Budget(source, float(epsilon), float(delta), num_records, ts, str(note))

    @staticmethod
    def _budget(con: sqlite3.Connection, source: str) -> Budget | None:
        row = con.execute(
            "SELECT source, epsilon, delta, num_records, ts, note FROM budgets"
            " WHERE source = ? ORDER BY id DESC LIMIT 1",
            (source,),
        ).fetchone()
        return Budget(*row) if row else None

    def budget(self, source: str) -> Budget | None:
        """The budget in force for ``source``, or None if the node never set one."""
        _check_source(source)
        try:
            with self._connect() as con:
                return self._budget(con, source)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"privacy ledger {self.path} cannot be read: {exc}") from exc

    def budget_history(self, source: str) -> list[Budget]:
        """Every budget ever set for ``source``, oldest first."""
        rows = self._query(
            "SELECT source, epsilon, delta, num_records, ts, note FROM budgets"
            " WHERE source = ? ORDER BY id",
            (source,),
        )
        return [Budget(*r) for r in rows]

    def sources(self) -> list[str]:
        """Every data source with a budget, in the order budgets were first set."""
        rows = self._query("SELECT source FROM budgets GROUP BY source ORDER BY MIN(id)")
        return [r[0] for r in rows]

    # -- releases ---------------------------------------------------------------------------

    def _entries(self, con: sqlite3.Connection, source: str | None) -> list[LedgerEntry]:
        out: list[LedgerEntry] = []
        if self._legacy:
            for row in con.execute(
                "SELECT id, ts, run_id, round, fingerprint, noise_multiplier, sample_rate,"
                " steps, accountant, kind FROM releases ORDER BY id"
            ):
                rid, ts, run_id, rnd, fp, sigma, q, steps, acc, kind = row
                out.append(
                    LedgerEntry(
                        rid, ts, LEGACY_SOURCE, run_id, rnd, kind, fp, "legacy",
                        Release(sigma, q, steps), None, acc, None,
                    )
                )
        sql = (
            "SELECT r.id, r.ts, r.source, r.run_id, r.round, r.kind, r.fingerprint,"
            " r.mechanism, r.params, s.outcome, s.mechanism, s.params, r.accountant,"
            " r.num_records FROM reservations r"
            " LEFT JOIN settlements s ON s.reservation_id = r.id"
        )
        params: tuple[object, ...] = ()
        if source is not None:
            sql += " WHERE r.source = ?"
            params = (source,)
        for row in con.execute(sql + " ORDER BY r.id", params):
            rid, ts, src, run_id, rnd, kind, fp, mech, par, outcome, s_mech, s_par, acc, n = row
            settled = mechanism_from_json(s_mech, s_par) if s_mech else None
            out.append(
                LedgerEntry(
                    rid, ts, src, run_id, rnd, kind, fp, outcome or "reserved",
                    mechanism_from_json(mech, par), settled, acc, n,
                )
            )
        return out

    def releases(self, source: str | None = None) -> list[LedgerEntry]:
        """Releases in the order they were reserved (legacy ones first).

        With ``source``: the releases that count against it, i.e. its own plus the legacy
        releases of a migrated schema-1 ledger.
        """
        try:
            with self._connect() as con:
                return self._entries(con, source)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"privacy ledger {self.path} cannot be read: {exc}") from exc

    @staticmethod
    def _epsilon(releases: list[Mechanism], delta: float, accountant: str) -> float:
        try:
            return epsilon(releases, delta, accountant)
        except AccountingError as exc:
            raise LedgerError(str(exc)) from exc

    def spent(self, source: str, accountant: str = "rdp", *, delta: float | None = None) -> float:
        """Epsilon of everything that counts against ``source`` (settled and outstanding).

        At the node's own delta by default. All kinds are composed together, each recorded at
        its record-level cost (a user-level round is recorded with the sensitivity of one
        record's change, see :func:`privacy.dp.user_level.record_level_release`).
        """
        _check_source(source)
        _check_accountant(accountant)
        if delta is None:
            budget = self.budget(source)
            if budget is None:
                raise LedgerError(
                    f"data source {source!r} has no budget, so no delta to account at: pass "
                    f"delta or set one with `{set_budget_command(source)}`"
                )
            delta = budget.delta
        history = [e.release for e in self.releases(source) if e.release is not None]
        return self._epsilon(history, delta, accountant)

    def reserve(
        self,
        source: str,
        run_id: str,
        round: int,
        releases: Sequence[tuple[str, Mechanism]],
        *,
        num_records: int,
        fingerprint: str,
        accountant: str = "rdp",
    ) -> BudgetDecision:
        """Reserve ``releases`` (``(kind, mechanism)`` pairs) on ``source`` if they fit.

        One transaction: the composed spend of every settled and outstanding release on the
        source plus these is compared with the source's budget at the node's delta; on
        success the reservations are inserted before the lock is released, so a concurrent
        caller sees them. Call it before training; the decision's message is one line.
        """
        _check_source(source)
        _check_accountant(accountant)
        _check_records(num_records, required=True)
        if not fingerprint:
            raise LedgerError("fingerprint is empty: compute it with dataset_fingerprint(x, y)")
        if not releases:
            raise LedgerError("nothing to reserve: pass at least one (kind, release) pair")
        rows = []
        for kind, mechanism in releases:
            if kind not in KINDS:
                raise LedgerError(f"kind={kind!r} is unknown: use one of {', '.join(KINDS)}")
            try:
                rows.append((kind, *mechanism_to_json(mechanism)))
            except AccountingError as exc:
                raise LedgerError(str(exc)) from exc
        what = f"round {round}"
        with self._write("reserve a release") as con:
            budget = self._budget(con, source)
            if budget is None:
                return BudgetDecision(False, 0.0, 0.0, None, None, no_budget_message(source, what))
            if problem := _delta_problem(source, budget.delta, num_records):
                return BudgetDecision(
                    False, 0.0, 0.0, budget.epsilon, budget.delta,
                    f"node refuses {what}: {problem}",
                )
            history = [e.release for e in self._entries(con, source) if e.release is not None]
            new = [m for _, m in releases]
            before = self._epsilon(history, budget.delta, accountant)
            after = self._epsilon([*history, *new], budget.delta, accountant)
            cap = _fmt_budget(budget.epsilon)
            where = f"at delta {budget.delta:g} (data source {source!r})"
            if after > budget.epsilon:
                return BudgetDecision(
                    False, before, after, budget.epsilon, budget.delta,
                    f"node refuses {what}: epsilon would reach {after:.2f} > budget {cap} {where}"
                    f"{OVERSPEND_FIX}",
                )
            ts = _now()
            ids = []
            for kind, name, params in rows:
                cur = con.execute(
                    "INSERT INTO reservations (ts, source, run_id, round, kind, mechanism,"
                    " params, fingerprint, num_records, accountant)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ts, source, str(run_id), int(round), kind, name, params, fingerprint,
                     num_records, accountant),
                )
                ids.append(int(cur.lastrowid or 0))
        return BudgetDecision(
            True, before, after, budget.epsilon, budget.delta,
            f"node accepts {what}: epsilon {before:.2f} -> {after:.2f} <= budget {cap} {where}",
            tuple(ids),
        )

    def _close(self, reservation_id: int, outcome: str, mechanism: Mechanism | None) -> None:
        """Insert the one settlement row of a reservation (``outcome`` settled/cancelled)."""
        name = params = None
        if mechanism is not None:
            try:
                name, params = mechanism_to_json(mechanism)
            except AccountingError as exc:
                raise LedgerError(str(exc)) from exc
        with self._write(f"close reservation {reservation_id}") as con:
            row = con.execute(
                "SELECT r.mechanism, r.params, s.outcome FROM reservations r"
                " LEFT JOIN settlements s ON s.reservation_id = r.id WHERE r.id = ?",
                (int(reservation_id),),
            ).fetchone()
            if row is None:
                raise LedgerError(f"reservation {reservation_id} does not exist in {self.path}")
            if row[2] is not None:
                raise LedgerError(f"reservation {reservation_id} is already {row[2]}")
            reserved = mechanism_from_json(row[0], row[1])
            if mechanism is not None and not mechanism.dominated_by(reserved):
                raise LedgerError(
                    f"reservation {reservation_id} was for {reserved}; {mechanism} is more "
                    "than that: reserve the difference first, then settle"
                )
            con.execute(
                "INSERT INTO settlements (reservation_id, ts, outcome, mechanism, params)"
                " VALUES (?, ?, ?, ?, ?)",
                (int(reservation_id), _now(), outcome, name, params),
            )

    def settle(self, reservation_id: int, mechanism: Mechanism) -> None:
        """Record the release actually made for a reservation (at most what was reserved).

        Call it before the result leaves the node; until then the reservation counts at its
        reserved size, so a crash in between can only over-count.
        """
        self._close(reservation_id, "settled", mechanism)

    def cancel(self, reservation_id: int) -> None:
        """Release a reservation unused. Only when nothing computed under it left the node."""
        self._close(reservation_id, "cancelled", None)

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
        with self._write("store a calibration") as con:
            con.execute(
                "INSERT OR IGNORE INTO calibrations (key, noise_multiplier, ts) VALUES (?, ?, ?)",
                (key, float(value), _now()),
            )

    # -- reporting --------------------------------------------------------------------------

    def summary(self, accountant: str = "rdp") -> list[dict[str, Any]]:
        """One row per (data source, run): kinds, rounds, open reservations, cumulative epsilon.

        Epsilon is at the source's own delta and includes the legacy releases (shown as a
        first row per source). A migrated ledger with no source yet lists its legacy releases
        at the smallest delta they were made for.
        """
        _check_accountant(accountant)
        entries = self.releases()
        legacy = [e for e in entries if e.status == "legacy"]
        rows: list[dict[str, Any]] = []
        plans: list[tuple[str, float]] = []
        for source in self.sources():
            budget = self.budget(source)
            assert budget is not None  # sources() lists sources with a budget
            plans.append((source, budget.delta))
        if not plans and legacy:
            plans.append((LEGACY_SOURCE, min(_legacy_deltas(self))))
        for source, delta in plans:
            mine = [e for e in entries if e.source == source]
            runs: dict[tuple[str, str], list[LedgerEntry]] = {}
            for e in legacy:
                runs.setdefault((LEGACY_SOURCE, e.run_id), []).append(e)
            for e in mine:
                runs.setdefault((source, e.run_id), []).append(e)
            history: list[Mechanism] = []
            for (origin, run_id), items in runs.items():
                history.extend(e.release for e in items if e.release is not None)
                rows.append(
                    {
                        "source": source,
                        "run_id": run_id if origin == source else f"{run_id} (legacy)",
                        "kinds": ",".join(sorted({e.kind for e in items})),
                        "rounds": len({e.round for e in items}),
                        "open": sum(e.status == "reserved" for e in items),
                        "first": items[0].ts,
                        "last": items[-1].ts,
                        "delta": delta,
                        "epsilon_cumulative": self._epsilon(list(history), delta, accountant),
                    }
                )
        return rows


def _legacy_deltas(ledger: PrivacyLedger) -> list[float]:
    return [float(r[0]) for r in ledger._query("SELECT delta FROM releases")]


def format_ledger(ledger: PrivacyLedger, accountant: str = "rdp") -> str:
    """Plain-text budgets and :meth:`PrivacyLedger.summary` for ``fedguard-node ledger``."""
    rows = ledger.summary(accountant=accountant)
    lines = [f"privacy ledger {ledger.path} ({accountant} accountant)"]
    for source in ledger.sources():
        b = ledger.budget(source)
        assert b is not None
        n = f", {b.num_records} records" if b.num_records else ""
        lines.append(
            f"budget {source}: epsilon {_fmt_budget(b.epsilon)} at delta {b.delta:g}{n} "
            f"(set {b.ts})"
        )
    if not rows:
        lines.append("no releases recorded")
        return "\n".join(lines)
    header = ("source", "run", "kinds", "rounds", "open", "delta", "epsilon (cumulative)")
    table = [
        (
            r["source"], r["run_id"], r["kinds"], str(r["rounds"]), str(r["open"]),
            f"{r['delta']:.0e}", f"{r['epsilon_cumulative']:.3f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    for cells in (header, tuple("-" * w for w in widths), *table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(lines)
