"""Seconds per round: the fedguard app vs a bare Flower FedAvg app, same task and nodes, one run.

    python scripts/bench_rounds.py --nodes 10 --rounds 6 --repeats 2

Both apps run in Flower's Simulation Engine with the same virtual nodes, data partitions, model
and local training. A round's time is the gap between the ends of consecutive rounds, so both
sides are measured the same way; round 1 (Ray start-up, first imports) is left out. The apps
alternate so machine noise hits both alike. Prints medians and the ratio fedguard / bare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.deploy.superlink import SuperLink  # noqa: E402
from server.store import RunStore  # noqa: E402

console = Console()


def round_gaps(ends: list[float]) -> list[float]:
    """Per-round seconds from consecutive round-end times, skipping round 1."""
    return [b - a for a, b in zip(ends[1:], ends[2:], strict=False)]


def run_fedguard(work: Path, nodes: int, rounds: int) -> list[float]:
    data_dir = work / "store"
    with SuperLink(work / "flower", simulation=True) as sl:
        rid = sl.submit(ROOT, {"num-server-rounds": rounds, "data-dir": str(data_dir)},
                        {"num-supernodes": nodes, "client-resources-num-cpus": 1})
        status = sl.wait_finished(rid, 900)
    if status != "finished:completed":
        raise SystemExit(f"fedguard run ended {status}; see {work}")
    ends = [r["ended_at"] for r in RunStore.in_dir(data_dir, readonly=True).rounds(str(rid))]
    return round_gaps([0.0, *ends])


def run_bare(work: Path, nodes: int, rounds: int) -> list[float]:
    timing = work / "timing.json"
    with SuperLink(work / "flower", simulation=True) as sl:
        rid = sl.submit(ROOT / "scripts" / "bare_flower_app",
                        {"num-server-rounds": rounds, "timing-file": str(timing)},
                        {"num-supernodes": nodes, "client-resources-num-cpus": 1})
        status = sl.wait_finished(rid, 900)
    if status != "finished:completed":
        raise SystemExit(f"bare Flower run ended {status}; see {work}")
    return round_gaps(json.loads(timing.read_text()))  # stamps[0] is the initial evaluation


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    if args.rounds < 3:
        p.error("--rounds must be >= 3 (round 1 is warm-up)")
    bare: list[float] = []
    fed: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fedguard-bench-") as tmp:
        for i in range(args.repeats):
            console.print(f"repeat {i + 1}/{args.repeats}: bare Flower FedAvg ...")
            bare += run_bare(Path(tmp) / f"bare{i}", args.nodes, args.rounds)
            console.print(f"repeat {i + 1}/{args.repeats}: fedguard ...")
            fed += run_fedguard(Path(tmp) / f"fed{i}", args.nodes, args.rounds)
    table = Table(title=f"seconds per round, {args.nodes} simulated nodes "
                        f"({len(bare)} rounds each, round 1 excluded)")
    for col in ("app", "median s/round", "mean s/round", "min", "max"):
        table.add_column(col, justify="right")
    for name, xs in (("bare Flower FedAvg", bare), ("fedguard", fed)):
        table.add_row(name, f"{statistics.median(xs):.3f}", f"{statistics.mean(xs):.3f}",
                      f"{min(xs):.3f}", f"{max(xs):.3f}")
    console.print(table)
    ratio = statistics.median(fed) / statistics.median(bare)
    console.print(f"ratio fedguard / bare (median): [bold]{ratio:.2f}x[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
