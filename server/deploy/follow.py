"""Follow a submitted run to its end and summarise it: the part of `fedguard-server run` and
`scripts/simulate.py` that a user watches.

Progress comes from the run store (cheap SQLite reads); Flower is asked for the run's real status
only rarely and when the store says the run is over, because `flwr run` exits 0 even for a
failed run and `flwr ls` costs over a CPU-second a call.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clients.task.contract import higher_is_better
from server.deploy.superlink import SuperLink
from server.store.records import FEDERATED, RUNNING, SERVER, TRAIN
from server.store.store import RunStore, StoreError

ROUTINE = ("run-started", "run-completed", "manifest-received", "provenance-signed",
           "round-completed", "central-dp")


@dataclass
class RunOutcome:
    """What a run ended as, for the exit code and the summary."""

    run_id: str
    flower_status: str
    run: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    log_path: Path | None = None

    def reason(self) -> str:
        """Why a run did not complete, in one line."""
        if self.run and self.run.get("error"):
            return str(self.run["error"])
        if self.log_path is not None and self.log_path.exists():
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines()
                     if "ERROR" in ln or "fedguard:" in ln]
            if lines:
                return lines[-1][-300:]
        return self.flower_status

    @property
    def ok(self) -> bool:
        return (self.flower_status == "finished:completed" and self.run is not None
                and self.run["status"] == "completed")

    @property
    def headline(self) -> str:
        return str((self.run or {}).get("headline") or "accuracy")

    def value(self, rnd: int, source: str, name: str) -> float | None:
        v = self.metrics.get(rnd, {}).get(source, {}).get(name)
        return None if v is None or not math.isfinite(v) else v

    def final(self) -> tuple[str, float] | None:
        """The headline metric of the final model: server set if any, else federated."""
        if not self.rounds:
            return None
        last = self.rounds[-1]["round"]
        for source in (SERVER, FEDERATED):
            v = self.value(last, source, self.headline)
            if v is not None:
                return f"{source} {self.headline}", v
        return None


def _open(store_path: Path) -> RunStore | None:
    if not store_path.exists():
        return None
    try:
        return RunStore(store_path, readonly=True)
    except StoreError:
        return None


def load_outcome(store_path: Path, run_id: str, flower_status: str) -> RunOutcome:
    out = RunOutcome(run_id, flower_status)
    store = _open(store_path)
    if store is None:
        return out
    try:
        out.run, out.rounds = store.get_run(run_id), store.rounds(run_id)
        out.events = store.events(run_id)
        for m in store.round_metrics(run_id):
            out.metrics.setdefault(m.round, {}).setdefault(m.source, {})[m.name] = m.value
    finally:
        store.close()
    return out


def follow(sl: SuperLink, store_path: Path, run_id: str, flower_id: int, total: int,
           timeout: float, console: Console) -> str:
    """Show per-round progress from the run store until Flower reports the run finished."""
    store: RunStore | None = None
    state = {"ended": False}

    def store_says_ended() -> bool:
        nonlocal store
        store = store or _open(store_path)
        if store is None:
            return False
        run = store.get_run(run_id)
        rounds = store.rounds(run_id)
        if rounds:
            last = rounds[-1]
            head = (run or {}).get("headline") or "accuracy"
            value = next((m.value for m in store.round_metrics(run_id)
                          if m.round == last["round"] and m.name == head
                          and m.source in (SERVER, FEDERATED)), None)
            shown = f"{head} {value:.3f}" if value is not None and math.isfinite(value) else (
                "training")
            progress.update(task, completed=last["round"], description=shown)
        state["ended"] = run is not None and run["status"] != RUNNING
        return state["ended"]

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("round {task.completed:.0f}/{task.total:.0f}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting (the first imports take a few seconds)", total=total)
        status = sl.wait_finished(flower_id, timeout, ended=store_says_ended)
    if store is not None:
        store.close()
    return status


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def print_summary(out: RunOutcome, console: Console) -> None:
    head = out.headline
    table = Table(title="fedguard run summary")
    cols = ["round", "train loss", f"server {head}", f"federated {head}", "nodes", "seconds"]
    for col in cols:
        table.add_column(col, justify="right")
    for r in out.rounds:
        rnd = r["round"]
        table.add_row(str(rnd), _fmt(out.value(rnd, TRAIN, "loss")),
                      _fmt(out.value(rnd, SERVER, head)), _fmt(out.value(rnd, FEDERATED, head)),
                      str(r["num_nodes"]), f"{r['duration_s']:.2f}")
    console.print(table)
    final = out.final()
    if final is not None:
        better = "higher" if higher_is_better(head) else "lower"
        console.print(f"  final model: {final[0]} = {final[1]:.4f} ({better} is better)")
    received = sum(e["kind"] == "manifest-received" for e in out.events)
    if received:
        console.print(f"  {received} data manifests received and checked by the policy gate")
    for e in [e for e in out.events if e["kind"] not in ROUTINE][-12:]:
        console.print(f"  event [yellow]{e['kind']}[/]: {e['message']}")
    for e in out.events:
        if e["kind"] == "provenance-signed":
            data = json.loads(e["data"]) if isinstance(e["data"], str) else e["data"]
            console.print(f"  signed provenance record: {data.get('path', data)}")
