"""Run fedguard in Flower's Simulation Engine with N virtual nodes and show progress per round.

    python scripts/simulate.py --nodes 10 --rounds 10 --dataset digits --partition dirichlet

Starts its own simulation SuperLink (project-local FLWR_HOME, runtime dependency installation
off), submits the app with `flwr run`, follows the run in the run store, asks Flower for the real
final status (`flwr run` exits 0 even when a run fails), stops everything it started, and prints
a summary table with the run id. Exit code 0 only when the run completed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.store import RunStore, StoreError, default_data_dir  # noqa: E402
from server.superlink import LaunchError, SuperLink  # noqa: E402

console = Console()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10, help="number of virtual nodes")
    p.add_argument("--rounds", type=int, default=10, help="federated rounds")
    p.add_argument("--dataset", default=None, help="digits | breast-cancer")
    p.add_argument("--model", default=None, help="mlp | cnn")
    p.add_argument("--partition", default=None, help="iid | dirichlet")
    p.add_argument("--alpha", type=float, default=None, help="Dirichlet alpha (label skew)")
    p.add_argument("--data-dir", default="", help="run store directory (default $FEDGUARD_HOME "
                   "or ./.fedguard)")
    p.add_argument("--resume", default="", help="continue this run id from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run-config key, e.g. --set dp=true (repeatable)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before giving up")
    args = p.parse_args(argv)
    if args.nodes < 1:
        p.error(f"--nodes {args.nodes}: need at least 1 node")
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: need at least 1 round")
    return args


def _parse_value(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw.strip("'\"")


def build_run_config(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {"num-server-rounds": args.rounds, "data-dir": str(data_dir)}
    for key, val in (
        ("dataset", args.dataset),
        ("model", args.model),
        ("partition", args.partition),
        ("dirichlet-alpha", args.alpha),
    ):
        if val is not None:
            cfg[key] = val
    if args.resume:
        cfg["resume"] = args.resume
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"error: --set {item!r}: use KEY=VALUE, e.g. --set lr=0.05")
        key, raw = item.split("=", 1)
        cfg[key.strip()] = _parse_value(raw.strip())
    return cfg


def follow(sl: SuperLink, store_path: Path, run_id: str, flower_id: int, total: int,
           timeout: float) -> str:
    """Show per-round progress from the run store until Flower reports the run finished."""
    deadline = time.monotonic() + timeout
    status, store = "pending", None
    last_poll = 0.0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("round {task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("starting (Ray + first imports take a few seconds)", total=total)
        while time.monotonic() < deadline:
            if store is None and store_path.exists():
                try:
                    store = RunStore(store_path, readonly=True)
                except StoreError:
                    store = None
            if store is not None:
                rounds = store.rounds(run_id)
                if rounds:
                    last = rounds[-1]
                    progress.update(
                        task,
                        completed=last["round"],
                        description=f"server accuracy {last['server_accuracy']:.3f}",
                    )
            if time.monotonic() - last_poll > 2.0:
                status = sl.run_status(flower_id)
                last_poll = time.monotonic()
                if status.startswith("finished"):
                    break
            time.sleep(0.3)
    if store is not None:
        store.close()
    return status


def summary(store_path: Path, run_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    try:
        store = RunStore(store_path, readonly=True)
    except StoreError:
        return None, []
    run, rounds = store.get_run(run_id), store.rounds(run_id)
    if run is not None:
        run["events"] = store.events(run_id)
    store.close()
    return run, rounds


def print_summary(run: dict[str, Any] | None, rounds: list[dict[str, Any]]) -> None:
    table = Table(title="fedguard run summary")
    for col in ("round", "train loss", "server loss", "server accuracy", "nodes", "seconds"):
        table.add_column(col, justify="right")
    for r in rounds:
        table.add_row(
            str(r["round"]),
            "-" if r["train_loss"] is None else f"{r['train_loss']:.4f}",
            f"{r['server_loss']:.4f}",
            f"{r['server_accuracy']:.4f}",
            str(r["num_nodes"]),
            f"{r['duration_s']:.2f}",
        )
    console.print(table)
    if run is not None:
        routine = ("run-started", "run-completed", "manifest-received", "provenance-signed")
        events = run.get("events", [])
        received = sum(e["kind"] == "manifest-received" for e in events)
        if received:
            console.print(f"  {received} data manifests received and checked by the policy gate")
        for e in [e for e in events if e["kind"] not in routine][-10:]:
            console.print(f"  event [yellow]{e['kind']}[/]: {e['message']}")
        for e in events:
            if e["kind"] == "provenance-signed":
                console.print(f"  signed provenance record: {e['data']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = default_data_dir(args.data_dir)
    store_path = data_dir / "runs.sqlite"
    run_config = build_run_config(args, data_dir)
    fed_config = {"num-supernodes": args.nodes, "client-resources-num-cpus": 1}
    sl = SuperLink(data_dir / "flower", simulation=True)
    flower_id: int | None = None
    try:
        sl.start()
        flower_id = sl.submit(ROOT, run_config, fed_config)
        run_id = args.resume or str(flower_id)
        console.print(f"run [bold]{run_id}[/] submitted: {args.nodes} virtual nodes, "
                      f"{args.rounds} rounds; store {store_path}")
        status = follow(sl, store_path, run_id, flower_id, args.rounds, args.timeout)
        if not status.startswith("finished"):
            sl.stop_run(flower_id)
            status = f"timed out after {args.timeout:.0f}s ({status})"
        logs = sl.flwr("log", str(flower_id), "fedguard", timeout=60).stdout
        (data_dir / "flower" / f"run-{flower_id}.log").write_text(logs, encoding="utf-8")
    except LaunchError as err:
        console.print(f"[red]error:[/] {err}")
        return 1
    except KeyboardInterrupt:
        if flower_id is not None:
            sl.stop_run(flower_id)
        console.print("[yellow]interrupted; resume with --resume RUN_ID[/]")
        return 130
    finally:
        sl.stop()

    run, rounds = summary(store_path, run_id)
    print_summary(run, rounds)
    ok = status == "finished:completed" and run is not None and run["status"] == "completed"
    if ok:
        console.print(f"[green]completed[/] run id [bold]{run_id}[/]; run store {store_path}")
        return 0
    reason = (run or {}).get("error") or _last_error(logs) or status
    console.print(f"[red]run {run_id} did not complete[/]: {reason}")
    console.print(f"  full log: {data_dir / 'flower' / f'run-{flower_id}.log'}")
    return 1


def _last_error(logs: str) -> str:
    lines = [ln.strip() for ln in logs.splitlines() if "ERROR" in ln or "fedguard:" in ln]
    return lines[-1][-300:] if lines else ""


if __name__ == "__main__":
    sys.exit(main())
