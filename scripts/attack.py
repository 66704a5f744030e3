"""Poisoning simulation: fedguard's real ServerApp against a federation where some nodes attack.

    python scripts/attack.py            # 10 nodes, 20% attackers, 6 aggregators x 5 conditions
    python scripts/attack.py --quick    # a short smoke run (6 runs of 3 rounds)

Each cell of the table is one real run in Flower's Simulation Engine: a simulation SuperLink we
own (server.deploy.superlink.SuperLink), the app in scripts/attack_app (fedguard's ServerApp, and a
ClientApp whose nodes with partition-id < fraction * nodes are malicious; honest nodes run
fedguard's real ClientApp and `local_train`). Results are read from the run store.

Attacks: sign-flip (global - s*(update - global)), scaled (global + s*(update - global)),
label-flip (train on y -> y+1 mod classes), nan (every float tensor NaN: the server's validation
must reject it and record `update-rejected`). Same seeds in every cell, so the clean column is
the baseline each attack is compared with.

Byzantine-robust aggregators are told how many nodes may be malicious (`aggregation-malicious`):
the true count for krum and multikrum; bulyan needs n >= 4f + 3 replies, so it gets the largest
f that fits (1 for 10 nodes). `min-nodes` is nodes - attackers, so a round in which validation
drops every attacker still goes on.

Cost is mostly per-run start-up (Ray, imports), not rounds: the default 30 runs took 20 min on
a shared, busy 2-core machine (40-60 s a run), about 15 min when it is idle.

Exit code 0 when every run ran to its end (a run the attack stopped, e.g. because the model
diverged and every update became NaN, is a result), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = Path(__file__).resolve().parent / "attack_app"
sys.path.insert(0, str(ROOT))

from server.deploy.superlink import LaunchError, SuperLink  # noqa: E402
from server.store import RunStore, StoreError, default_data_dir  # noqa: E402

AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum", "multikrum", "bulyan")
CONDITIONS = ("clean", "sign-flip", "scaled", "label-flip", "nan")
ROBUST = tuple(a for a in AGGREGATORS if a != "fedavg")
TOLERANCE = 0.05  # "robust" = within 5 accuracy points of the same aggregator's clean run

console = Console()


@dataclass
class Cell:
    """One run: an aggregator under one condition, and what the run store says about it."""

    aggregator: str
    condition: str
    run_id: str = ""
    status: str = "not run"
    accuracy: float | None = None
    accuracies: list[float] = field(default_factory=list)
    rejected: int = 0  # update-rejected events
    failed: int = 0  # node-failed events
    num_nodes: list[int] = field(default_factory=list)  # updates aggregated per round
    error: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10, help="virtual nodes (default 10)")
    p.add_argument("--rounds", type=int, default=10, help="rounds per run (default 10)")
    p.add_argument("--fraction", type=float, default=0.2, help="fraction of malicious nodes")
    p.add_argument("--aggregators", default=",".join(AGGREGATORS),
                   help="comma-separated subset of " + ",".join(AGGREGATORS))
    p.add_argument("--conditions", default=",".join(CONDITIONS),
                   help="comma-separated subset of " + ",".join(CONDITIONS))
    p.add_argument("--flip-scale", type=float, default=4.0, help="s of the sign-flip attack")
    p.add_argument("--boost", type=float, default=10.0, help="s of the scaled-update attack")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha (non-IID skew)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-dir", default="", help="where runs are stored (default: a fresh "
                   "directory under $FEDGUARD_HOME or ./.fedguard, attack-<time>)")
    p.add_argument("--json", default="", metavar="FILE", help="also write the cells as JSON")
    p.add_argument("--from-json", default="", metavar="FILE",
                   help="run nothing: print the table of an earlier --json FILE")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run before giving up")
    p.add_argument("--quick", action="store_true",
                   help="short run: 3 rounds, fedavg/median, clean/sign-flip/nan (6 runs)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 3)
        if args.aggregators == ",".join(AGGREGATORS):
            args.aggregators = "fedavg,median"
        if args.conditions == ",".join(CONDITIONS):
            args.conditions = "clean,sign-flip,nan"
    args.aggregators = _choices(p, "--aggregators", args.aggregators, AGGREGATORS)
    args.conditions = _choices(p, "--conditions", args.conditions, CONDITIONS)
    if args.nodes < 2:
        p.error(f"--nodes {args.nodes}: need at least 2 nodes")
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: need at least 1 round")
    if not 0.0 <= args.fraction < 0.5:
        p.error(f"--fraction {args.fraction}: must be in [0, 0.5), e.g. 0.2")
    return args


def _choices(p: argparse.ArgumentParser, flag: str, raw: str, allowed: tuple[str, ...]
             ) -> list[str]:
    picked = [x.strip() for x in raw.split(",") if x.strip()]
    bad = [x for x in picked if x not in allowed]
    if bad or not picked:
        p.error(f"{flag} {raw!r}: use a comma-separated subset of {','.join(allowed)}")
    return picked


def num_attackers(nodes: int, fraction: float) -> int:
    """How many partition ids satisfy pid < fraction * nodes (the attack app's rule)."""
    return sum(1 for pid in range(nodes) if pid < fraction * nodes)


def run_config(args: argparse.Namespace, aggregator: str, condition: str, data_dir: Path
               ) -> dict[str, Any]:
    """The run config of one cell."""
    attackers = num_attackers(args.nodes, args.fraction)
    valid = args.nodes - (attackers if condition == "nan" else 0)
    malicious = attackers
    if aggregator == "bulyan":  # Flower's Bulyan skips aggregation unless replies >= 4f + 3
        malicious = max(0, min(attackers, (valid - 3) // 4))
    cfg: dict[str, Any] = {
        "num-server-rounds": args.rounds,
        "data-dir": str(data_dir),
        "federated-evaluation": False,
        "min-nodes": max(1, args.nodes - attackers),
        "partition": "dirichlet",
        "dirichlet-alpha": args.alpha,
        "seed": args.seed,
        "aggregation": aggregator,
        "aggregation-malicious": malicious if aggregator in ("krum", "multikrum", "bulyan") else 0,
        "attack-kind": "none" if condition == "clean" else condition,
        "attack-fraction": args.fraction,
        "attack-scale": args.boost if condition == "scaled" else args.flip_scale,
    }
    return cfg


def read_cell(store: RunStore, cell: Cell) -> None:
    run = store.get_run(cell.run_id)
    rounds = store.rounds(cell.run_id)
    cell.accuracies = [float(r["server_accuracy"]) for r in rounds]
    cell.num_nodes = [int(r["num_nodes"]) for r in rounds]
    cell.accuracy = cell.accuracies[-1] if cell.accuracies else None
    kinds = [e["kind"] for e in store.events(cell.run_id)]
    cell.rejected = kinds.count("update-rejected")
    cell.failed = kinds.count("node-failed")
    if run is not None:
        cell.status = str(run["status"])
        cell.error = str(run.get("error") or "")


def _store_status(data_dir: Path, run_id: str) -> str:
    if not (data_dir / "runs.sqlite").exists():
        return ""
    try:
        store = RunStore.in_dir(data_dir, readonly=True)
    except StoreError:
        return ""
    try:
        run = store.get_run(run_id)
    except sqlite3.Error:  # created, but its tables not yet
        return ""
    finally:
        store.close()
    return str(run["status"]) if run else ""


def wait_run(sl: SuperLink, flower_id: int, data_dir: Path, timeout: float) -> str:
    """Flower's final status of a run.

    Follows the run store (a cheap SQLite read) and asks Flower (`flwr ls`, a Python process
    each time: costly on a busy machine) only every 15 s, or once the store says it ended.
    """
    deadline = time.monotonic() + timeout
    last_ask = time.monotonic()
    status = "unknown"
    while time.monotonic() < deadline:
        if _store_status(data_dir, str(flower_id)) in ("completed", "failed", "stopped"):
            return sl.wait_finished(flower_id, max(1.0, min(120.0, deadline - time.monotonic())),
                                    ended=lambda: True)
        if time.monotonic() - last_ask > 15.0:
            status = sl.run_status(flower_id)
            last_ask = time.monotonic()
            if status.startswith("finished"):
                return status
        time.sleep(0.5)
    return status


def run_cell(sl: SuperLink, args: argparse.Namespace, cell: Cell, data_dir: Path) -> None:
    cfg = run_config(args, cell.aggregator, cell.condition, data_dir)
    fed = {"num-supernodes": args.nodes, "client-resources-num-cpus": 1}
    flower_id = sl.submit(APP_DIR, cfg, fed)
    cell.run_id = str(flower_id)
    status = wait_run(sl, flower_id, data_dir, args.timeout)
    if not status.startswith("finished"):
        sl.stop_run(flower_id)
    store = RunStore.in_dir(data_dir, readonly=True)
    try:
        read_cell(store, cell)
    finally:
        store.close()
    if status != "finished:completed" and cell.status in ("completed", "not run"):
        cell.status = status
    if cell.status != "completed" and not cell.error:
        log = sl.flwr("log", str(flower_id), "fedguard", timeout=60).stdout
        errors = [ln.strip() for ln in log.splitlines() if "ERROR" in ln or "Error" in ln]
        cell.error = errors[-1][-200:] if errors else status


def _fmt(cell: Cell | None, clean: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.accuracy is None:
        return f"[red]{cell.status}[/]"
    text = f"{cell.accuracy:.3f}"
    if cell.condition != "clean" and clean is not None and clean.accuracy is not None:
        delta = 100 * (cell.accuracy - clean.accuracy)
        colour = "green" if delta >= -100 * TOLERANCE else "red"
        text += f" [{colour}]({delta:+.1f})[/]"
    if cell.rejected:
        text += f" [dim]{cell.rejected} rej[/]"
    if cell.status != "completed":  # e.g. stopped: the attack left too few usable updates
        text += f" [red]{cell.status} r{len(cell.accuracies)}[/]"
    return text


def print_table(args: argparse.Namespace, cells: dict[tuple[str, str], Cell]) -> None:
    attackers = num_attackers(args.nodes, args.fraction)
    table = Table(title=f"final server accuracy after {args.rounds} rounds: {args.nodes} nodes "
                  f"({attackers} malicious), digits, Dirichlet alpha={args.alpha}, "
                  f"seed {args.seed}; (change vs clean, points)")
    table.add_column("aggregator")
    for cond in args.conditions:
        label = {"sign-flip": f"sign-flip s={args.flip_scale:g}",
                 "scaled": f"scaled s={args.boost:g}"}.get(cond, cond)
        table.add_column(label, justify="right")
    for agg in args.aggregators:
        clean = cells.get((agg, "clean"))
        table.add_row(agg, *(_fmt(cells.get((agg, c)), clean) for c in args.conditions))
    console.print(table)


def verdicts(args: argparse.Namespace, cells: dict[tuple[str, str], Cell]) -> list[str]:
    """Plain statements about the goal, true or false as measured."""
    lines: list[str] = []

    def drop(agg: str, cond: str) -> float | None:
        c, a = cells.get((agg, "clean")), cells.get((agg, cond))
        if not c or not a or c.accuracy is None or a.accuracy is None:
            return None
        return c.accuracy - a.accuracy  # a stopped run counts with its last round

    for cond in ("sign-flip", "scaled"):
        if cond not in args.conditions:
            continue
        robust = {a: drop(a, cond) for a in args.aggregators if a in ROBUST}
        held = [a for a, d in robust.items() if d is not None and d <= TOLERANCE]
        broke = [a for a, d in robust.items() if d is not None and d > TOLERANCE]
        missing = [a for a, d in robust.items() if d is None]
        fed = drop("fedavg", cond) if "fedavg" in args.aggregators else None
        lines.append(
            f"{cond}: robust aggregators within {100 * TOLERANCE:.0f} points of clean: "
            f"{', '.join(held) or 'none'}"
            + (f"; NOT within: {', '.join(broke)}" if broke else "")
            + (f"; not measured: {', '.join(missing)}" if missing else "")
            + ("" if fed is None or math.isnan(fed) else
               f"; fedavg {'degrades' if fed > TOLERANCE else 'does not degrade'} "
               f"by {100 * fed:.1f} points")
        )
    if "nan" in args.conditions:
        attackers = num_attackers(args.nodes, args.fraction)
        expected = attackers * args.rounds
        counts = {a: cells[(a, "nan")].rejected for a in args.aggregators if (a, "nan") in cells}
        ok = all(v == expected for v in counts.values())
        lines.append(f"nan: update-rejected events per run {sorted(set(counts.values()))} "
                     f"(expected {expected} = {attackers} attackers x {args.rounds} rounds): "
                     + ("all NaN updates rejected by validation" if ok else "MISMATCH"))
    return lines


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM too stops the SuperLink and its Ray workers (finally)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        raw = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        cells = {(c.aggregator, c.condition): c for c in (Cell(**r) for r in raw)}
        args.aggregators = [a for a in AGGREGATORS if any(k[0] == a for k in cells)]
        args.conditions = [c for c in CONDITIONS if any(k[1] == c for k in cells)]
        args.rounds = max((len(c.accuracies) for c in cells.values()), default=0)
        return report(args, cells)
    signal.signal(signal.SIGTERM, _interrupt)
    base = Path(args.data_dir).expanduser().resolve() if args.data_dir else (
        default_data_dir() / f"attack-{time.strftime('%Y%m%d-%H%M%S')}")
    data_dir = base / "store"
    cells: dict[tuple[str, str], Cell] = {}
    todo = [(a, c) for c in args.conditions for a in args.aggregators]
    console.print(f"{len(todo)} runs ({len(args.aggregators)} aggregators x "
                  f"{len(args.conditions)} conditions), {args.nodes} nodes, {args.rounds} rounds; "
                  f"store {data_dir}")
    sl = SuperLink(base / "flower", simulation=True)
    try:
        sl.start()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("starting", total=len(todo))
            for agg, cond in todo:
                progress.update(task, description=f"{agg:>12} / {cond:<10}")
                cell = cells[(agg, cond)] = Cell(agg, cond)
                try:
                    run_cell(sl, args, cell, data_dir)
                except LaunchError as err:
                    cell.status, cell.error = "not submitted", str(err)
                acc = "-" if cell.accuracy is None else f"{cell.accuracy:.3f}"
                progress.console.print(f"  {agg:>12} / {cond:<10} run {cell.run_id or '-'}: "
                                       f"{cell.status}, accuracy {acc}"
                                       + (f", {cell.rejected} rejected" if cell.rejected else "")
                                       + (f" ({cell.error})" if cell.error else ""))
                progress.advance(task)
    except LaunchError as err:
        console.print(f"[red]error:[/] {err}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        sl.stop()

    if args.json:
        Path(args.json).write_text(json.dumps([asdict(c) for c in cells.values()], indent=2),
                                   encoding="utf-8")
    return report(args, cells)


def report(args: argparse.Namespace, cells: dict[tuple[str, str], Cell]) -> int:
    """Table and verdicts; 1 if a run failed to run (a run the attack stopped is a result)."""
    print_table(args, cells)
    for line in verdicts(args, cells):
        console.print("  " + line)
    for c in cells.values():
        if c.status == "stopped":
            console.print(f"  {c.aggregator}/{c.condition} stopped after round "
                          f"{len(c.accuracies)}: {c.error}")
    bad = [c for c in cells.values() if c.status not in ("completed", "stopped")]
    for c in bad:
        console.print(f"[red]{c.aggregator}/{c.condition} did not run to the end[/]: {c.error}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
