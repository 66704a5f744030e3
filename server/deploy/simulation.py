"""Run an app in Flower's Simulation Engine on a SuperLink we own, follow it, and stop it all.

Used by `scripts/simulate.py`, `make demo`, the benchmarks and the tests: project-local
FLWR_HOME, runtime dependency installation off, the run's real status asked of Flower (`flwr
run` exits 0 even for a failed run), and every process stopped at the end, also on SIGTERM,
SIGINT and SIGHUP.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from privacy.processes import stop_on_signals
from server.deploy.follow import RunOutcome, follow, load_outcome
from server.deploy.superlink import SuperLink


def simulate(app: Path, nodes: int, run_config: Mapping[str, Any], data_dir: Path,
             timeout: float = 1800, console: Console | None = None,
             resume: str = "") -> RunOutcome:
    """One simulation run of `app` with `nodes` virtual nodes; its outcome from the store."""
    console = console or Console(quiet=True)
    cfg = {"data-dir": str(data_dir), **dict(run_config)}
    if resume:
        cfg["resume"] = resume
    store_path = data_dir / "runs.sqlite"
    link = SuperLink(data_dir / "flower", simulation=True)
    with stop_on_signals(link.stop):
        link.start()
        flower_id = link.submit(app.resolve(), cfg, {"num-supernodes": nodes,
                                                     "client-resources-num-cpus": 1})
        run_id = resume or str(flower_id)
        console.print(f"run [bold]{run_id}[/] submitted: {nodes} virtual nodes; store "
                      f"{store_path}")
        total = int(cfg.get("num-server-rounds", 10))
        status = follow(link, store_path, run_id, flower_id, total, timeout, console)
        if not status.startswith("finished"):
            link.stop_run(flower_id)
            status = f"timed out after {timeout:.0f}s ({status})"
        logs = link.flwr("log", str(flower_id), "fedguard", timeout=60).stdout
        log_path = data_dir / "flower" / f"run-{flower_id}.log"
        log_path.write_text(logs, encoding="utf-8")
    out = load_outcome(store_path, run_id, status)
    out.log_path = log_path
    return out
