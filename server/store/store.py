"""The run store: one SQLite database (WAL) with every run, round, per-node result and event.

WAL mode lets the web UI and `scripts/simulate.py` read while a ServerApp writes. Each write is
one short transaction, so a crash loses at most the round that was in flight, never a finished one.
The schema is documented in README.md ("Run store").
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.store.records import RUNNING, RoundMetric, VerdictRecord

SCHEMA_VERSION = 2
# Columns added after version 1: (table, column, declaration); added on open, never dropped.
_ADDED_COLUMNS = (
    ("runs", "headline", "TEXT NOT NULL DEFAULT ''"),
    ("runs", "heartbeat_at", "REAL"),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id        TEXT PRIMARY KEY,
    flower_run_id TEXT,
    config        TEXT NOT NULL,              -- JSON of the full run config
    status        TEXT NOT NULL,              -- running | completed | failed | stopped | blocked
    started_at    REAL NOT NULL,
    ended_at      REAL,
    num_rounds    INTEGER NOT NULL,
    last_round    INTEGER NOT NULL DEFAULT 0, -- last round whose checkpoint is written
    error         TEXT,
    headline      TEXT NOT NULL DEFAULT '',   -- the task's headline metric, e.g. accuracy
    heartbeat_at  REAL                        -- last sign of life of the ServerApp
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id            TEXT NOT NULL REFERENCES runs(run_id),
    round             INTEGER NOT NULL,
    started_at        REAL NOT NULL,
    ended_at          REAL NOT NULL,
    duration_s        REAL NOT NULL,
    num_nodes         INTEGER NOT NULL,       -- nodes whose update was aggregated
    train_loss        REAL,
    train_accuracy    REAL,
    fed_loss          REAL,                   -- federated evaluation on the nodes
    fed_accuracy      REAL,
    server_loss       REAL,                   -- centralised evaluation on the held-out split
    server_accuracy   REAL,
    checkpoint_path   TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    extra             TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS node_results (
    run_id        TEXT NOT NULL REFERENCES runs(run_id),
    round         INTEGER NOT NULL,
    node_id       TEXT NOT NULL,
    phase         TEXT NOT NULL,              -- train | evaluate
    status        TEXT NOT NULL,              -- ok | refused | failed | rejected | excluded
    num_examples  INTEGER,
    loss          REAL,
    accuracy      REAL,
    train_time_s  REAL,
    epsilon       REAL,                       -- DP spent so far on this node (if DP)
    metrics       TEXT NOT NULL DEFAULT '{}', -- every other metric the node reported (JSON)
    PRIMARY KEY (run_id, round, node_id, phase)
);
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT NOT NULL,
    ts       REAL NOT NULL,
    round    INTEGER,
    node_id  TEXT,
    kind     TEXT NOT NULL,                   -- e.g. run-started, node-refused, round-failed
    message  TEXT NOT NULL,
    data     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);
CREATE TABLE IF NOT EXISTS manifests (
    run_id    TEXT NOT NULL,
    node_id   TEXT NOT NULL,
    sha256    TEXT NOT NULL,                  -- of the manifest file's bytes, as the node sent it
    manifest  TEXT NOT NULL,                  -- JSON of the parsed manifest
    PRIMARY KEY (run_id, node_id)
);
CREATE TABLE IF NOT EXISTS verdicts (
    run_id    TEXT NOT NULL,
    rule_id   TEXT NOT NULL,
    pack      TEXT NOT NULL,
    node_id   TEXT NOT NULL DEFAULT '',       -- '' for run-level rules
    verdict   TEXT NOT NULL,                  -- pass | fail | warn | info | not-applicable
    severity  TEXT NOT NULL,
    citation  TEXT NOT NULL DEFAULT '',
    detail    TEXT NOT NULL DEFAULT '{}',     -- JSON: title, message, evidence
    PRIMARY KEY (run_id, rule_id, pack, node_id)
);
CREATE TABLE IF NOT EXISTS round_metrics (
    run_id    TEXT NOT NULL,
    round     INTEGER NOT NULL,
    source    TEXT NOT NULL,                  -- server | federated | train
    name      TEXT NOT NULL,                  -- loss, accuracy, or any metric the task names
    value     REAL,
    PRIMARY KEY (run_id, round, source, name)
);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id    TEXT NOT NULL,
    kind      TEXT NOT NULL,                  -- report-md | report-json | provenance | audit-log
    path      TEXT NOT NULL,
    sha256    TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, kind)
);
"""


class StoreError(RuntimeError):
    """The run store cannot be used; the message names the file and what to do."""


def default_data_dir(configured: str = "") -> Path:
    """Data directory: the run config's `data-dir`, else $FEDGUARD_HOME, else ./.fedguard."""
    raw = configured or os.environ.get("FEDGUARD_HOME", "") or ".fedguard"
    return Path(raw).expanduser().resolve()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class RunStore:
    """Typed access to the run store; cheap to open, safe to use from several processes."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise StoreError(f"run store {self.path} does not exist; start a run first (make demo)")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            uri = f"file:{self.path}?mode=ro" if readonly else str(self.path)
            self._db = sqlite3.connect(uri, uri=readonly, timeout=30, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                self._migrate()
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            else:
                self._db.execute("SELECT 1 FROM runs LIMIT 1")
        except sqlite3.DatabaseError as err:
            raise StoreError(
                f"run store {self.path} is not a fedguard database ({err}); "
                "point data-dir at another directory"
            ) from None

    def _migrate(self) -> None:
        """Add the columns later versions introduced to a store an earlier version created."""
        for table, column, decl in _ADDED_COLUMNS:
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))

    @classmethod
    def in_dir(cls, data_dir: str | Path, readonly: bool = False) -> RunStore:
        return cls(Path(data_dir) / "runs.sqlite", readonly=readonly)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- writes -----------------------------------------------------------------------------
    def start_run(
        self, run_id: str, config: Mapping[str, Any], num_rounds: int, flower_run_id: str = "",
        headline: str = "",
    ) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (run_id, flower_run_id, config, status, started_at, num_rounds,"
                " headline, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, flower_run_id, _json(dict(config)), RUNNING, now, num_rounds, headline,
                 now),
            )

    def heartbeat(self, run_id: str) -> None:
        """The ServerApp is alive: readers treat a running run without one for long as lost."""
        with self._tx() as db:
            db.execute("UPDATE runs SET heartbeat_at=? WHERE run_id=?", (time.time(), run_id))

    def resume_run(self, run_id: str, flower_run_id: str) -> int:
        """Mark a run running again, drop rows of unfinished rounds, return the last round."""
        run = self.get_run(run_id)
        if run is None:
            raise StoreError(f"resume={run_id!r}: no such run in {self.path}; see `runs` for ids")
        last = int(run["last_round"])
        with self._tx() as db:
            db.execute("DELETE FROM node_results WHERE run_id=? AND round>?", (run_id, last))
            db.execute("DELETE FROM round_metrics WHERE run_id=? AND round>?", (run_id, last))
            db.execute(
                "UPDATE runs SET status='running', ended_at=NULL, error=NULL, flower_run_id=?, "
                "heartbeat_at=? WHERE run_id=?",
                (flower_run_id, time.time(), run_id),
            )
        return last

    def finish_run(self, run_id: str, status: str, error: str | None = None,
                   only_if_running: bool = False) -> bool:
        """Set the final status; with `only_if_running`, leave an already ended run alone."""
        sql = "UPDATE runs SET status=?, ended_at=?, error=? WHERE run_id=?"
        if only_if_running:
            sql += f" AND status='{RUNNING}'"
        with self._tx() as db:
            cur = db.execute(sql, (status, time.time(), error, run_id))
        return cur.rowcount > 0

    def record_node_result(
        self,
        run_id: str,
        round_: int,
        node_id: int | str,
        phase: str,
        status: str,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        m = dict(metrics or {})
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO node_results (run_id, round, node_id, phase, status, "
                "num_examples, loss, accuracy, train_time_s, epsilon, metrics) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    round_,
                    str(node_id),
                    phase,
                    status,
                    m.pop("num-examples", None),
                    m.pop("loss", None),
                    m.pop("accuracy", None),
                    m.pop("train-time", None),
                    m.pop("epsilon", m.pop("dp-epsilon-spent", None)),
                    _json(m),
                ),
            )

    def record_round(
        self,
        run_id: str,
        round_: int,
        started_at: float,
        num_nodes: int,
        metrics: Mapping[str, float | None],
        checkpoint_path: str,
        checkpoint_sha256: str,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Commit a finished round and advance `last_round` in one transaction."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds (run_id, round, started_at, ended_at, duration_s, "
                "num_nodes, train_loss, train_accuracy, fed_loss, fed_accuracy, server_loss, "
                "server_accuracy, checkpoint_path, checkpoint_sha256, extra) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    round_,
                    started_at,
                    now,
                    now - started_at,
                    num_nodes,
                    metrics.get("train_loss"),
                    metrics.get("train_accuracy"),
                    metrics.get("fed_loss"),
                    metrics.get("fed_accuracy"),
                    metrics.get("server_loss"),
                    metrics.get("server_accuracy"),
                    checkpoint_path,
                    checkpoint_sha256,
                    _json(dict(extra or {})),
                ),
            )
            db.execute(
                "UPDATE runs SET last_round=MAX(last_round, ?) WHERE run_id=?", (round_, run_id)
            )

    def add_event(
        self,
        run_id: str,
        kind: str,
        message: str,
        round_: int | None = None,
        node_id: int | str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO events (run_id, ts, round, node_id, kind, message, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    time.time(),
                    round_,
                    None if node_id is None else str(node_id),
                    kind,
                    message,
                    _json(dict(data or {})),
                ),
            )

    def record_manifest(
        self, run_id: str, node_id: int | str, sha256: str, manifest: Mapping[str, Any]
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO manifests VALUES (?, ?, ?, ?)",
                (run_id, str(node_id), sha256, _json(dict(manifest))),
            )

    def record_verdicts(self, run_id: str, records: list[VerdictRecord]) -> None:
        """Store policy verdicts (one row per rule, pack and node)."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, v.rule_id, v.pack, v.node_id, v.verdict, v.severity, v.citation,
                  _json(v.detail())) for v in records],
            )

    def record_round_metrics(self, run_id: str, round_: int, source: str,
                             values: Mapping[str, float | None]) -> None:
        """Named metrics of one round and source (see records.RoundMetric)."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO round_metrics VALUES (?, ?, ?, ?, ?)",
                [(run_id, round_, source, str(k), None if v is None else float(v))
                 for k, v in values.items()],
            )

    def set_round_federated(self, run_id: str, round_: int, loss: float | None,
                            accuracy: float | None) -> None:
        """Federated evaluation of a round's model arrives with the next round's replies."""
        with self._tx() as db:
            db.execute("UPDATE rounds SET fed_loss=?, fed_accuracy=? WHERE run_id=? AND round=?",
                       (loss, accuracy, run_id, round_))

    def set_artifact(self, run_id: str, kind: str, path: str | Path, sha256: str = "") -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?)",
                (run_id, kind, str(path), sha256),
            )

    # --- reads ------------------------------------------------------------------------------
    def manifests(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM manifests WHERE run_id=? ORDER BY node_id", (run_id,))
        for r in rows:
            r["manifest"] = json.loads(r["manifest"])
        return rows

    def verdicts(self, run_id: str) -> list[VerdictRecord]:
        rows = self._rows(
            "SELECT * FROM verdicts WHERE run_id=? ORDER BY node_id, pack, rule_id", (run_id,)
        )
        return [VerdictRecord.from_row(r) for r in rows]

    def round_metrics(self, run_id: str) -> list[RoundMetric]:
        rows = self._rows("SELECT * FROM round_metrics WHERE run_id=? ORDER BY round, source, "
                          "name", (run_id,))
        return [RoundMetric(int(r["round"]), str(r["source"]), str(r["name"]),
                            float("nan") if r["value"] is None else float(r["value"]))
                for r in rows]

    def artifacts(self, run_id: str) -> dict[str, dict[str, Any]]:
        rows = self._rows("SELECT * FROM artifacts WHERE run_id=?", (run_id,))
        return {r["kind"]: r for r in rows}

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def list_runs(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM runs ORDER BY started_at DESC")

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM runs WHERE run_id=?", (run_id,))
        if not rows:
            return None
        rows[0]["config"] = json.loads(rows[0]["config"])
        return rows[0]

    def latest_run(self) -> dict[str, Any] | None:
        rows = self._rows("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1")
        return self.get_run(rows[0]["run_id"]) if rows else None

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM rounds WHERE run_id=? ORDER BY round", (run_id,))

    def node_results(self, run_id: str, phase: str | None = None) -> list[dict[str, Any]]:
        if phase:
            return self._rows(
                "SELECT * FROM node_results WHERE run_id=? AND phase=? ORDER BY round, node_id",
                (run_id, phase),
            )
        return self._rows(
            "SELECT * FROM node_results WHERE run_id=? ORDER BY round, phase, node_id", (run_id,)
        )

    def events(self, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        if kind:
            return self._rows(
                "SELECT * FROM events WHERE run_id=? AND kind=? ORDER BY id", (run_id, kind)
            )
        return self._rows("SELECT * FROM events WHERE run_id=? ORDER BY id", (run_id,))
