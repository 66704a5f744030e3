"""Simulation throughput and memory at scale: thousands of virtual nodes, with and without DP.

    python scripts/bench_scale.py                 # 1,000 and 10,000 nodes, 100 sampled a round
    python scripts/bench_scale.py --full          # also 50,000 nodes, more rounds
    python scripts/bench_scale.py --sizes 1000 --rounds 5 --modes dp

Every run is fedguard's real ServerApp and ClientApp (the policy gate with the baseline pack,
admission, the privacy ledger and DP-SGD under dp=true) in Flower's Simulation Engine with one
CPU per virtual node, on scripts/scale_app: digits with every node holding its own 32 examples
(`scale_task.py`), so any node count has data. Each round samples 100 nodes (`fraction-train`
= 100 / nodes). For each run the table gives

  round 1      seconds from the run's start (store) to the end of round 1: admission, first
               imports and noise calibration included; "of which start-up" is the part before
               the first node answered its admission query (Ray's workers starting and
               importing torch, Opacus and the task)
  s/round      median seconds between the ends of consecutive later rounds
  client-rounds/s   nodes that trained (status ok) in rounds 2.. / the seconds those rounds took
  peak RSS     the largest sum of resident memory over the SuperLink's whole process tree
               (the simulation, the ServerApp, Ray and its workers), sampled every 0.5 s

and each DP run is printed next to the same run without DP. Sizes run one at a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "scripts" / "scale_app"
sys.path.insert(0, str(ROOT))

from privacy.processes import descendants  # noqa: E402
from server.deploy.superlink import SuperLink  # noqa: E402
from server.store import RunStore  # noqa: E402
from server.store.store import StoreError  # noqa: E402

console = Console(width=140)
PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLED = 100  # nodes a round
GOALS = {"dp client-rounds/s": 40.0, "round 1 s": 10.0, "peak RSS GB": 3.0}


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and every process below it (Linux /proc)."""
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return total


class PeakRSS:
    """Samples the process tree's RSS every `every` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class ScaleResult:
    nodes: int
    dp: bool
    status: str
    round1_s: float | None
    startup_s: float | None  # run start -> first admission answer
    gaps: list[float]  # seconds between the ends of consecutive rounds, from round 2 on
    trained: int  # ok train results in rounds 2..
    peak_rss: int
    wall_s: float
    error: str = ""

    @property
    def client_rounds_per_s(self) -> float | None:
        span = sum(self.gaps)
        return self.trained / span if span > 0 else None


def run_config(nodes: int, rounds: int, dp: bool, data_dir: Path) -> dict[str, object]:
    """The scale app's run config for one run (every key is declared in its pyproject)."""
    return {
        "num-server-rounds": rounds,
        "fraction-train": min(1.0, SAMPLED / nodes),
        "min-nodes": min(SAMPLED, nodes),
        "dp": dp,
        "data-dir": str(data_dir),
    }


def measure(store: RunStore, run_id: str
            ) -> tuple[float | None, float | None, list[float], int, str]:
    """(round 1 seconds, start-up seconds, later round gaps, ok train results after round 1,
    run error)."""
    run = store.get_run(run_id) or {}
    rounds = store.rounds(run_id)
    ends = [float(r["ended_at"]) for r in rounds]
    start = float(run["started_at"]) if run else 0.0
    round1 = ends[0] - start if ends and run else None
    first = store.events(run_id, "manifest-received")[:1]
    startup = float(first[0]["ts"]) - start if first and run else None
    gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    trained = sum(1 for r in store.node_results(run_id, "train")
                  if r["status"] == "ok" and r["round"] > 1)
    return round1, startup, gaps, trained, str(run.get("error") or "")


def _ended(data_dir: Path, run_id: str) -> bool:
    """The run store says the run is over (cheap; `flwr ls` costs a CPU-second)."""
    if not (data_dir / "runs.sqlite").exists():
        return False
    try:
        store = RunStore.in_dir(data_dir, readonly=True)
    except StoreError:  # the ServerApp is still creating it
        return False
    try:
        run = store.get_run(run_id)
    finally:
        store.close()
    return run is not None and run["status"] != "running"


def run_one(work: Path, nodes: int, rounds: int, dp: bool, timeout: float) -> ScaleResult:
    data_dir = work / "store"
    start = time.monotonic()
    with SuperLink(work / "flower", simulation=True) as sl:
        assert sl.process is not None and sl.process.pid is not None
        with PeakRSS(sl.process.pid) as rss:
            rid = sl.submit(APP, run_config(nodes, rounds, dp, data_dir),
                            {"num-supernodes": nodes, "client-resources-num-cpus": 1})
            status = sl.wait_finished(rid, timeout, ended=lambda: _ended(data_dir, str(rid)))
            if not status.startswith("finished"):
                sl.stop_run(rid)
                status = f"timeout after {timeout:.0f}s ({status})"
    wall = time.monotonic() - start
    round1, startup, gaps, trained, error = None, None, [], 0, ""
    if (data_dir / "runs.sqlite").exists():
        store = RunStore.in_dir(data_dir, readonly=True)
        round1, startup, gaps, trained, error = measure(store, str(rid))
        store.close()
    return ScaleResult(nodes, dp, status, round1, startup, gaps, trained, rss.peak, wall, error)


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else f"{x:{spec}}"


def report(results: Sequence[ScaleResult]) -> Table:
    table = Table(title=f"fedguard simulation at scale: {SAMPLED} nodes sampled a round, one "
                        "CPU per virtual node, 2 cores")
    for col in ("nodes", "DP", "round 1 s", "of which start-up", "s/round", "client-rounds/s",
                "DP / no DP",
                "peak RSS GB", "wall s", "status"):
        table.add_column(col, justify="right")
    by_key = {(r.nodes, r.dp): r for r in results}
    for r in results:
        rate = r.client_rounds_per_s
        base = by_key.get((r.nodes, False))
        ratio = (fmt(rate / base.client_rounds_per_s, ".2f") + "x"
                 if r.dp and base and rate and base.client_rounds_per_s else "-")
        status = r.status if r.status == "finished:completed" else f"[red]{r.status}[/]"
        if r.error:
            status += f" [red]{r.error[:60]}[/]"
        table.add_row(f"{r.nodes:,}", "yes" if r.dp else "no", fmt(r.round1_s),
                      fmt(r.startup_s), fmt(statistics.median(r.gaps) if r.gaps else None,
                                            ".2f"), fmt(rate),
                      ratio, fmt(r.peak_rss / 1e9, ".2f"), f"{r.wall_s:.0f}", status)
    return table


def goals(results: Sequence[ScaleResult]) -> list[str]:
    """One line per goal of issue 15, measured on these runs."""
    lines = []
    for r in results:
        if r.dp and r.nodes == 1000:
            rate = r.client_rounds_per_s
            lines.append(f"1,000 nodes, DP: {fmt(rate)} client-rounds/s (goal >= "
                         f"{GOALS['dp client-rounds/s']:g}), round 1 {fmt(r.round1_s)} s "
                         f"(goal <= {GOALS['round 1 s']:g}; {fmt(r.startup_s)} s of it "
                         "start-up)")
        if r.nodes >= 10_000:
            lines.append(f"{r.nodes:,} nodes{', DP' if r.dp else ''}: peak RSS "
                         f"{r.peak_rss / 1e9:.2f} GB (goal < {GOALS['peak RSS GB']:g})")
    return lines


def parse_sizes(text: str) -> list[int]:
    sizes = [int(x) for x in text.replace(" ", "").split(",") if x]
    if not sizes or any(n < SAMPLED for n in sizes):
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: comma-separated node counts >= "
                                         f"{SAMPLED}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--sizes", type=parse_sizes, default=None,
                   help="comma-separated node counts (default 1000,10000; full adds 50000)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per run (default 4; 6 full)")
    p.add_argument("--modes", choices=("both", "dp", "plain"), default="both")
    p.add_argument("--full", action="store_true", help="1,000, 10,000 and 50,000 nodes")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    p.add_argument("--keep", type=Path, help="keep the run directories (stores, logs) here")
    args = p.parse_args(argv)
    sizes = args.sizes or ([1000, 10_000, 50_000] if args.full else [1000, 10_000])
    rounds = args.rounds or (6 if args.full else 4)
    if rounds < 2:
        p.error("--rounds must be >= 2 (round 1 is measured apart)")
    modes = {"both": (False, True), "dp": (True,), "plain": (False,)}[args.modes]
    results: list[ScaleResult] = []
    with tempfile.TemporaryDirectory(prefix="fedguard-bench-scale-") as tmp:
        base = args.keep or Path(tmp)
        for n in sizes:
            for dp in modes:
                console.print(f"{n:,} nodes, {'DP' if dp else 'no DP'}, {rounds} rounds ...")
                res = run_one(base / f"n{n}-{'dp' if dp else 'plain'}", n, rounds, dp,
                              args.timeout)
                results.append(res)
                console.print(f"  {res.status} in {res.wall_s:.0f} s; round 1 "
                              f"{fmt(res.round1_s)} s; peak RSS {res.peak_rss / 1e9:.2f} GB")
    console.print(report(results))
    for line in goals(results):
        console.print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
