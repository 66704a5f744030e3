"""Seconds per round: plain FedAvg vs fedguard's SecAgg+ vs Flower's legacy SecAgg+, one run.

    python scripts/bench_secagg.py                       # 10, 50 and 100 nodes, 4 rounds
    python scripts/bench_secagg.py --quick               # 10 nodes, 3 rounds
    python scripts/bench_secagg.py --sizes 10,50 --rounds 5 --repeats 2 --json out.json

Three apps, same task, nodes, partitions, model and local training (`local-epochs`), all in
Flower's Simulation Engine with one CPU per virtual node:

  plain   the fedguard app with secagg=false (FedAvg)
  ours    the fedguard app with secagg=true (privacy/secagg via server/rounds/secure.py:
          pipelined, two exchanges a round after a bootstrap)
  legacy  scripts/legacy_secagg_app: Flower's legacy DefaultWorkflow + SecAggPlusWorkflow +
          secaggplus_mod around a NumPyClient running fedguard's local training

Both SecAgg+ variants get the same share graph: the degree k and Shamir threshold t fedguard
derives for n nodes from its default threat model (a third of the nodes corrupt, 10% dropout;
`privacy.secagg.params.derive_graph`, Bell et al. 2020: 10 -> k=6, t=4; 50 -> 22, 17;
100 -> 40, 31), i.e. shares over a group of k+1 nodes (Flower's `num_shares` counts the node
itself). Federated evaluation is off (federated-evaluation=false) everywhere; every app still
evaluates the global model centrally after each round, and a round's time is the gap between
consecutive round ends (fedguard: the run store's `ended_at`; legacy: its timing file). Round 1
(Ray start-up, imports, the secure bootstrap) is left out. The apps alternate in a rotating
order so machine noise hits all alike. A run that does not finish within --timeout is stopped
and reported with the rounds it did finish. Transport caveat: the fedguard app (plain and ours)
polls for replies through server/rounds/grid.py (backs off 0.02..0.1 s), the legacy app
through Flower's own grid (0.1 s in simulation), which favours ours by at most ~0.1 s per
exchange.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
LEGACY_APP = ROOT / "scripts" / "legacy_secagg_app"
sys.path.insert(0, str(ROOT))

from privacy.secagg.params import resolve_params  # noqa: E402
from server.deploy.superlink import SuperLink  # noqa: E402
from server.store import RunStore  # noqa: E402

console = Console(width=150)
APPS = ("plain", "ours", "legacy")
LABELS = {
    "plain": "plain FedAvg (secagg=false)",
    "ours": "fedguard SecAgg+ (secagg=true)",
    "legacy": "Flower legacy SecAggPlusWorkflow",
}


@dataclass(frozen=True)
class ShareParams:
    """One share graph for both SecAgg+ implementations."""

    nodes: int
    neighbours: int  # fedguard secagg-neighbours (graph degree k)
    threshold: int  # Shamir threshold t, both

    @property
    def num_shares(self) -> int:
        """Flower's num_shares: the node itself plus its k neighbours."""
        return self.neighbours + 1


def share_params(nodes: int) -> ShareParams:
    """fedguard's defaults for `nodes`, which the legacy workflow is then given too."""
    p = resolve_params(nodes, 1)
    return ShareParams(nodes, p.num_neighbours, p.threshold)


def round_gaps(ends: Sequence[float]) -> list[float]:
    """Per-round seconds from consecutive round-end times, skipping round 1.

    `ends[0]` is the start reference (the initial evaluation), `ends[i]` the end of round i.
    """
    return [b - a for a, b in zip(ends[1:], ends[2:], strict=False)]


def parse_sizes(text: str) -> list[int]:
    sizes = [int(x) for x in text.replace(" ", "").split(",") if x]
    if not sizes or any(n < 3 for n in sizes):
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: comma-separated node counts >= 3")
    return sizes


def summarize(xs: Sequence[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"median": statistics.median(xs), "mean": statistics.mean(xs),
            "min": min(xs), "max": max(xs), "n": float(len(xs))}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclass
class RunResult:
    app: str
    nodes: int
    status: str
    wall: float
    gaps: list[float] = field(default_factory=list)
    rounds_done: int = 0
    first_round: float | None = None  # includes Ray start-up; for information only
    rounds: int = 0  # rounds asked for


# --- running the apps ---------------------------------------------------------------------
def _federation(nodes: int) -> dict[str, int]:
    return {"num-supernodes": nodes, "client-resources-num-cpus": 1}


def _submit_and_wait(
    work: Path, app_dir: Path, run_config: dict, nodes: int, timeout: float,
    read_ends: Callable[[int], list[float]],
) -> tuple[str, float, list[float]]:
    """Run one app; return (status, wall seconds, [start ref, round ends...])."""
    start = time.monotonic()
    with SuperLink(work / "flower", simulation=True) as sl:
        rid = sl.submit(app_dir, run_config, _federation(nodes))
        status = sl.wait_finished(rid, timeout)
        if not status.startswith("finished"):
            sl.stop_run(rid)
            status = f"timeout after {timeout:.0f}s ({status})"
        try:
            ends = read_ends(rid)
        except Exception as err:  # noqa: BLE001 - report what we have, keep benchmarking
            console.print(f"[red]could not read round times: {err}[/]")
            ends = []
    return status, time.monotonic() - start, ends


def fedguard_config(data_dir: Path, nodes: int, rounds: int, secagg: bool, sp: ShareParams,
                    local_epochs: int) -> dict:
    """The fedguard app's run config for one run (every key is declared in pyproject.toml)."""
    cfg: dict = {
        "num-server-rounds": rounds,
        "data-dir": str(data_dir),
        "secagg": secagg,
        "fraction-train": 1.0,
        "federated-evaluation": False,
        "min-nodes": nodes,
        "local-epochs": local_epochs,
        "policy-packs": "none",  # the compliance gate is not what is measured here
    }
    if secagg:
        cfg |= {"secagg-neighbours": sp.neighbours, "secagg-threshold": sp.threshold}
    return cfg


def run_fedguard(work: Path, nodes: int, rounds: int, secagg: bool, sp: ShareParams,
                 local_epochs: int, timeout: float) -> tuple[str, float, list[float]]:
    data_dir = work / "store"
    cfg = fedguard_config(data_dir, nodes, rounds, secagg, sp, local_epochs)

    def ends(rid: int) -> list[float]:
        if not (data_dir / "runs.sqlite").exists():
            return []
        store = RunStore.in_dir(data_dir, readonly=True)
        run = store.get_run(str(rid))
        if run and run.get("status") != "completed":
            why = [e["message"] for e in store.events(str(rid)) if e["kind"].startswith("run-")]
            console.print(f"[red]fedguard run {run.get('status')}: {why[-1:]}[/]")
        rows = store.rounds(str(rid))
        return [0.0, *(float(r["ended_at"]) for r in rows)]

    return _submit_and_wait(work, ROOT, cfg, nodes, timeout, ends)


def run_legacy(work: Path, nodes: int, rounds: int, sp: ShareParams, local_epochs: int,
               timeout: float) -> tuple[str, float, list[float]]:
    timing = work / "timing.json"
    cfg = {
        "num-server-rounds": rounds,
        "timing-file": str(timing),
        "min-nodes": nodes,
        "num-shares": sp.num_shares,
        "reconstruction-threshold": sp.threshold,
        "local-epochs": local_epochs,
        "stage-timeout": float(timeout),
    }

    def ends(_: int) -> list[float]:
        return json.loads(timing.read_text()) if timing.exists() else []

    return _submit_and_wait(work, LEGACY_APP, cfg, nodes, timeout, ends)


def run_app(app: str, work: Path, nodes: int, rounds: int, local_epochs: int,
            timeout: float) -> RunResult:
    sp = share_params(nodes)
    if app == "legacy":
        status, wall, ends = run_legacy(work, nodes, rounds, sp, local_epochs, timeout)
    else:
        status, wall, ends = run_fedguard(work, nodes, rounds, app == "ours", sp, local_epochs,
                                          timeout)
    # fedguard's ends start with 0.0 as a placeholder reference: no first-round time there
    first = ends[1] - ends[0] if len(ends) >= 2 and ends[0] > 0 else None
    return RunResult(app, nodes, status, wall, round_gaps(ends), max(0, len(ends) - 1), first,
                     rounds)


def load_results(paths: Sequence[Path]) -> list[RunResult]:
    """The runs stored in earlier `--json` outputs (to pool repeats from several invocations)."""
    out: list[RunResult] = []
    for path in paths:
        summary = json.loads(path.read_text(encoding="utf-8"))
        for size in summary["sizes"].values():
            for app in size["apps"].values():
                for run in app["runs"]:
                    run.setdefault("rounds", summary.get("rounds", 0))
                    out.append(RunResult(**run))
    return out


# --- report ------------------------------------------------------------------------------
def fmt(x: float | None, spec: str = ".3f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def report(results: list[RunResult], sizes: Sequence[int], apps: Sequence[str],
           rounds: int) -> dict:
    per_run = f"{rounds} rounds per run, " if rounds else ""
    table = Table(title=f"seconds per round (median over measured rounds; {per_run}"
                        "round 1 of each run excluded)")
    table.add_column("nodes", justify="right")
    table.add_column("k / shares / t", justify="right")
    for app in apps:
        table.add_column(f"{app} s/round", justify="right")
    for col in ("ours/plain", "legacy/plain", "ours/legacy"):
        table.add_column(col, justify="right")
    summary: dict = {"rounds": rounds, "sizes": {}}
    for n in sizes:
        sp = share_params(n)
        med: dict[str, float | None] = {}
        row = [str(n), f"{sp.neighbours} / {sp.num_shares} / {sp.threshold}"]
        per_app: dict = {}
        for app in apps:
            runs = [r for r in results if r.app == app and r.nodes == n]
            gaps = [g for r in runs for g in r.gaps]
            s = summarize(gaps)
            med[app] = s["median"] if s else None
            incomplete = [r.status for r in runs if r.status != "finished:completed"]
            cell = fmt(med[app])
            if s and s["n"] > 1:
                cell += f" [dim]({s['min']:.2f}-{s['max']:.2f})[/]"
            if incomplete:
                done = max((r.rounds_done for r in runs), default=0)
                cell += f" [red]{'; '.join(incomplete)}: {done}/{rounds} rounds[/]"
            row.append(cell)
            per_app[app] = {"stats": s, "runs": [asdict(r) for r in runs]}
        ratios = {
            "ours/plain": ratio(med.get("ours"), med.get("plain")),
            "legacy/plain": ratio(med.get("legacy"), med.get("plain")),
            "ours/legacy": ratio(med.get("ours"), med.get("legacy")),
        }
        row += [fmt(v, ".2f", "x") for v in ratios.values()]
        table.add_row(*row)
        summary["sizes"][str(n)] = {"share_params": asdict(sp), "apps": per_app,
                                    "ratios": ratios}
    console.print(table)
    console.print("k = fedguard secagg-neighbours (graph degree), shares = Flower num_shares "
                  "(k + the node itself), t = Shamir reconstruction threshold (both).")
    for n in sizes:
        r = summary["sizes"][str(n)]["ratios"]
        goal = []
        if r["ours/plain"] is not None:
            goal.append(f"ours within 1.5x of plain: {'yes' if r['ours/plain'] <= 1.5 else 'NO'}"
                        f" ({r['ours/plain']:.2f}x)")
        if r["ours/legacy"] is not None:
            goal.append(f"ours faster than legacy: {'yes' if r['ours/legacy'] < 1 else 'NO'}"
                        f" ({r['ours/legacy']:.2f}x)")
        if goal:
            console.print(f"{n} nodes: " + "; ".join(goal))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=parse_sizes, default=[10, 50, 100],
                   help="comma-separated node counts (default 10,50,100)")
    p.add_argument("--rounds", type=int, default=4, help="rounds per run (>= 3; round 1 excluded)")
    p.add_argument("--repeats", type=int, default=1, help="runs per app and size")
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--apps", default=",".join(APPS),
                   help=f"comma-separated subset of {','.join(APPS)}")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds before one run is stopped and reported as cut short")
    p.add_argument("--quick", action="store_true", help="10 nodes, 3 rounds, 1 repeat")
    p.add_argument("--json", type=Path, help="also write all measurements here")
    p.add_argument("--keep", type=Path, help="keep run directories (logs, stores) here")
    p.add_argument("--report-from", type=Path, nargs="+", metavar="JSON",
                   help="run nothing: pool the runs saved by earlier --json files and report")
    args = p.parse_args(argv)
    if args.report_from:
        old = load_results(args.report_from)
        sizes = sorted({r.nodes for r in old})
        rounds = {r.rounds for r in old}
        report(old, sizes, [a for a in APPS if any(r.app == a for r in old)],
               rounds.pop() if len(rounds) == 1 else 0)
        return 0
    if args.quick:
        args.sizes, args.rounds, args.repeats = [10], 3, 1
    if args.rounds < 3:
        p.error("--rounds must be >= 3 (round 1 is warm-up)")
    apps = [a for a in args.apps.split(",") if a]
    if not apps or set(apps) - set(APPS):
        p.error(f"--apps: choose from {','.join(APPS)}")

    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="fedguard-bench-secagg-") as tmp:
        base = args.keep or Path(tmp)
        step = 0
        for n in args.sizes:
            for rep in range(args.repeats):
                order = apps[step % len(apps):] + apps[:step % len(apps)]  # rotate the order
                step += 1
                for app in order:
                    console.print(f"{n} nodes, repeat {rep + 1}/{args.repeats}: "
                                  f"{LABELS[app]} ...")
                    res = run_app(app, base / f"n{n}-r{rep}-{app}", n, args.rounds,
                                  args.local_epochs, args.timeout)
                    results.append(res)
                    console.print(f"  {res.status} in {res.wall:.0f}s; rounds "
                                  f"{res.rounds_done}/{args.rounds}; s/round "
                                  f"{', '.join(f'{g:.2f}' for g in res.gaps) or '-'}")
    summary = report(results, args.sizes, [a for a in APPS if a in apps], args.rounds)
    summary["local_epochs"] = args.local_epochs
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
