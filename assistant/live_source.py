"""The assistant's `LiveSource` over the run store (and the policy engine for unrecorded
verdicts).

The store is opened read-only for every call and closed again: SQLite connections cannot be
shared between threads (Streamlit runs each session in its own thread), opening is cheap, and a
store that appears after the assistant started (first `make demo`) is picked up at once.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from privacy.compliance.manifest import ManifestError, parse_manifest
from privacy.compliance.policy import DEFAULT_PACKS, PolicyError, evaluate, load_packs
from privacy.dp.ledger import LedgerError, PrivacyLedger
from server.store import RunStore, default_data_dir
from server.store.records import shown_status

__all__ = ["RunStoreLiveSource", "compliance_summary", "metric", "node_matches"]

LEDGER_FILE = "privacy-ledger.sqlite"  # as clients/node_privacy.py names it


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    raw = row.get("metrics") or "{}"
    try:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def metric(metrics: Mapping[str, Any], *names: str) -> float | None:
    """A DP metric under any of its names: clients report `dp-delta`, `dp-epsilon-budget`...,
    older stores and the documented schema use `delta`, `privacy-budget`... ."""
    for name in names:
        for key in (name, f"dp-{name}"):
            value = _finite(metrics.get(key))
            if value is not None:
                return value
    return None


def _optional(query: Callable[[str], list[dict[str, Any]]], run_id: str) -> list[dict[str, Any]]:
    """Rows of a table that stores from earlier fedguard versions may lack ([] then)."""
    try:
        return query(run_id)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def node_matches(row: Mapping[str, Any], node: str) -> bool:
    """A user's "node 3" names the stored node id, or the node's reported partition/name.

    Flower node ids are large random integers, so in a simulation people say "node 3" meaning
    partition 3; a real node may report `node-name`.
    """
    wanted = node.strip().lower()
    if str(row.get("node_id", "")).lower() == wanted:
        return True
    metrics = _metrics(row)
    for key in ("partition-id", "node-name"):
        value = metrics.get(key)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if str(value).strip().lower() == wanted:
            return True
    return False


def compliance_summary(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Overall verdict of verdict rows (`verdict`/`rule_id` keys): any fail -> fail, etc."""
    failed = sorted({str(r["rule_id"]) for r in rows if r.get("verdict") == "fail"})
    warnings = sorted({str(r["rule_id"]) for r in rows if r.get("verdict") == "warn"})
    verdict = "fail" if failed else "warn" if warnings else "pass"
    return {"verdict": verdict, "failed": failed, "warnings": warnings}


class RunStoreLiveSource:
    """Implements `assistant.live_intents.LiveSource` over `<data_dir>/runs.sqlite`."""

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()

    @contextmanager
    def _store(self) -> Iterator[RunStore | None]:
        """The store read-only, or None when no run was ever recorded (not an error)."""
        if not (self.data_dir / "runs.sqlite").is_file():
            yield None
            return
        store = RunStore.in_dir(self.data_dir, readonly=True)
        try:
            yield store
        finally:
            store.close()

    # --- LiveSource ------------------------------------------------------------------------
    def latest_run_summary(self) -> Mapping[str, Any] | None:
        with self._store() as store:
            run = store.latest_run() if store else None
            if store is None or run is None:
                return None
            run_id = run["run_id"]
            rounds = store.rounds(run_id)
            train = store.node_results(run_id, "train")
        config = run.get("config") or {}
        out: dict[str, Any] = {
            "run_id": run_id,
            "status": shown_status(run, time.time()),
            "round": run["last_round"],
            "num_rounds": run["num_rounds"],
        }
        if rounds:
            last = rounds[-1]
            acc = next(
                (last[k] for k in ("server_accuracy", "fed_accuracy", "train_accuracy")
                 if last.get(k) is not None),
                None,
            )
            loss = next(
                (last[k] for k in ("server_loss", "fed_loss", "train_loss")
                 if last.get(k) is not None),
                None,
            )
            out.update(accuracy=acc, loss=loss, round=last["round"])
        epsilons = [e for e in (_finite(r.get("epsilon")) for r in train) if e is not None]
        if epsilons:
            out["epsilon"] = max(epsilons)
        delta = _finite(config.get("dp-delta"))
        if delta is not None:
            out["delta"] = delta
        nodes = {r["node_id"] for r in train}
        if nodes:
            out["nodes"] = len(nodes)
        return {k: v for k, v in out.items() if v is not None}

    def node_privacy(self, node: str) -> Mapping[str, Any] | None:
        """The node's latest epsilon in the most recent run where it reported one; else its
        simulated ledger."""
        latest: Mapping[str, Any] = {}
        with self._store() as store:
            if store is not None:
                for run in store.list_runs():
                    config = (store.get_run(run["run_id"]) or {}).get("config") or {}
                    latest = latest or config
                    rows = [
                        r for r in store.node_results(run["run_id"], "train")
                        if node_matches(r, node) and _finite(r.get("epsilon")) is not None
                    ]
                    if rows:
                        return self._privacy_of(node, run["run_id"], rows, config)
        return self._from_ledger(node, latest)

    def _from_ledger(self, node: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """A simulated node's own ledger, `<data dir>/nodes/partition-<n>/` (the layout of
        clients/node_privacy.py): the run store knows nodes only by Flower's random ids.
        Its budget is the latest run's `node-privacy-budget`, else its `dp-epsilon`."""
        if not node.isdigit():
            return None
        path = self.data_dir / "nodes" / f"partition-{int(node)}" / LEDGER_FILE
        if not path.is_file():
            return None
        try:
            ledger = PrivacyLedger(path, create=False)
            entries = ledger.releases()
            rows = ledger.summary(accountant=entries[-1].accountant) if entries else []
        except LedgerError:
            return None
        if not rows:
            return None
        last = rows[-1]  # cumulative over every run of the latest dataset entry
        out = {
            "node": node,
            "run_id": str(last["run_id"]),
            "epsilon": float(last["epsilon_cumulative"]),
            "delta": float(last["delta"]),
            "releases": len(entries),
            "accountant": entries[-1].accountant,
        }
        budget = _finite(config.get("node-privacy-budget")) or _finite(config.get("dp-epsilon"))
        if budget:
            out["budget"] = budget
        return out

    @staticmethod
    def _privacy_of(
        node: str, run_id: str, rows: list[dict[str, Any]], config: Mapping[str, Any]
    ) -> dict[str, Any]:
        last = rows[-1]  # rows are ordered by round
        metrics = _metrics(last)
        out: dict[str, Any] = {
            "node": node,
            "run_id": run_id,
            "epsilon": _finite(last["epsilon"]),
            "releases": sum(1 for r in rows if r.get("status") == "ok"),
        }
        delta = metric(metrics, "delta")
        out["delta"] = delta if delta is not None else _finite(config.get("dp-delta"))
        budget = metric(metrics, "privacy-budget", "epsilon-budget")
        out["budget"] = budget if budget is not None else _finite(config.get("dp-epsilon"))
        accountant = metrics.get("accountant") or config.get("dp-accountant")
        if accountant:
            out["accountant"] = str(accountant)
        return {k: v for k, v in out.items() if v is not None}

    def latest_compliance(self, pack: str | None) -> Mapping[str, Any] | None:
        """Stored verdicts of the latest run; evaluated now from its manifests if none stored."""
        with self._store() as store:
            run = store.latest_run() if store else None
            if store is None or run is None:
                return None
            rows = [{"rule_id": v.rule_id, "pack": v.pack, "verdict": v.verdict,
                     "node_id": v.node_id} for v in _optional(store.verdicts, run["run_id"])]
            manifests = _optional(store.manifests, run["run_id"])
        config = run.get("config") or {}
        source = "recorded"
        if not rows:
            rows = self._evaluate(config, manifests, pack)
            source = "evaluated-now"
        if pack:
            rows = [r for r in rows if str(r.get("pack", "")).lower() == pack]
            if not rows:  # the run was not checked against this pack: check it now
                rows = [r for r in self._evaluate(config, manifests, pack)
                        if str(r.get("pack", "")).lower() == pack]
                source = "evaluated-now"
        if not rows:
            return None
        packs = sorted({str(r.get("pack", "")) for r in rows if r.get("pack")})
        return {
            "run_id": run["run_id"],
            "pack": pack or ", ".join(packs),
            **compliance_summary(rows),
            "source": source,
        }

    def _evaluate(
        self, config: Mapping[str, Any], manifests: list[dict[str, Any]], pack: str | None
    ) -> list[dict[str, Any]]:
        """Verdict rows for a run that stored manifests but no verdicts; [] if impossible."""
        if not manifests:
            return []
        try:
            names = pack or str(config.get("policy-packs") or DEFAULT_PACKS)
            packs = load_packs(names, [self.data_dir / "policy-packs"])
            parsed = {str(m["node_id"]): parse_manifest(m["manifest"]) for m in manifests}
            report = evaluate(config, parsed, packs)
        except (PolicyError, ManifestError, KeyError, TypeError):
            return []
        return [
            {"rule_id": v.rule_id, "pack": v.pack, "verdict": v.status} for v in report.verdicts
        ]
