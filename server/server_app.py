"""The Flower ServerApp: a thin shell over `server.driver.drive_run`."""

from __future__ import annotations

from logging import ERROR

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from server.driver import RunRefused, drive_run
from server.rounds.grid import SIMULATION_SCAN_BUDGET, FastPollGrid

app = ServerApp()


def _limit_threads() -> None:
    """One BLAS/torch thread: a simulation hung with OpenBLAS spinning while Ray forked."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    torch.set_num_threads(1)


def _mode(grid: Grid) -> str:
    """Simulation runs on Flower's in-memory grid; anything else is a real deployment."""
    return "simulation" if "InMemory" in type(grid).__name__ else "deployment"


@app.main()
def main(grid: Grid, context: Context) -> None:
    _limit_threads()
    try:
        mode = _mode(grid)
        budget = SIMULATION_SCAN_BUDGET if mode == "simulation" else 0
        import os
        import sys
        if os.environ.get("FG_SWITCH"):
            sys.setswitchinterval(float(os.environ["FG_SWITCH"]))
        if os.environ.get("FG_BUDGET"):
            budget = int(os.environ["FG_BUDGET"])
        drive_run(FastPollGrid(grid, scan_budget=budget), context.run_config, context.run_id,
                  mode)
    except RunRefused as err:
        log(ERROR, "fedguard: %s", err)
        raise SystemExit(1) from None
