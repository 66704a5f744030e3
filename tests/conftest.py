"""Shared fixtures: run the real app through Flower, in a temporary FLWR_HOME and data dir."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings

from server.deploy.superlink import SuperLink
from server.store import RunStore, StoreError

ROOT = Path(__file__).resolve().parent.parent

# CI is deterministic: property tests replay the same examples every run and keep no database.
# `make fuzz` (HYPOTHESIS_PROFILE=fuzz) runs the same tests as a random search.
settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          print_blob=True)
settings.register_profile("fuzz", derandomize=False, database=None, deadline=None,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Two test workers share two cores with the processes they start: one torch thread each
# (oversubscribed OpenMP threads spin and slow every in-process DP run several-fold).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def store_says_ended(data_dir: Path, run_id: str) -> Any:
    """A cheap `ended()` for SuperLink.wait_finished: the run store says the run is over."""
    path = Path(data_dir) / "runs.sqlite"

    def ended() -> bool:
        if not path.exists():
            return False
        try:
            store = RunStore(path, readonly=True)
        except StoreError:  # the ServerApp is still creating its tables
            return False
        try:
            run = store.get_run(run_id)
        finally:
            store.close()
        return run is not None and run["status"] != "running"

    return ended


def run_simulation(
    workdir: Path, nodes: int, rounds: int, timeout: float = 300,
    link: SuperLink | None = None, app: Path = ROOT, **run_config: Any
) -> tuple[str, str, RunStore]:
    """Run the app in the Simulation Engine; return (Flower status, run id, store). With
    `link`, the run goes to that (shared, module-scoped) simulation SuperLink."""
    data_dir = workdir / "store"
    cfg: dict[str, Any] = {"num-server-rounds": rounds, "data-dir": str(data_dir)}
    cfg.update({k.replace("_", "-"): v for k, v in run_config.items()})
    own = link is None
    sl = SuperLink(workdir / "flower", simulation=True).start() if own else link
    assert sl is not None
    try:
        rid = sl.submit(app, cfg, {"num-supernodes": nodes, "client-resources-num-cpus": 1})
        run_id = str(cfg.get("resume") or rid)
        status = sl.wait_finished(rid, timeout, ended=store_says_ended(data_dir, run_id))
    finally:
        if own:
            sl.stop()
    return status, run_id, RunStore.in_dir(cfg["data-dir"])


@pytest.fixture(scope="module")
def sim_link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLink]:
    """One simulation SuperLink for a module whose runs do not interfere (each its own data
    dir): starting one costs seconds of CPU, so tests share it."""
    with SuperLink(tmp_path_factory.mktemp("sim-link"), simulation=True) as sl:
        yield sl


def wait_for(predicate: Any, timeout: float, what: str, poll: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[SuperLink]:
    with SuperLink(tmp_path / "flower") as sl:
        yield sl


def rows_by(rows: list[Mapping[str, Any]], key: str) -> dict[Any, list[Mapping[str, Any]]]:
    out: dict[Any, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


# The files that take longest, longest first (measured on 2 cores). `make test` hands whole
# files to two workers in collection order (--no-loadscope-reorder: xdist would otherwise put
# the files with most tests first, and these one-test files last, running alone at the end).
# The order is fixed, hence the same on every worker.
HEAVY_FIRST = (
    "test_crash_recovery.py", "test_real_nodes.py", "test_simulation.py", "test_examples.py",
    "test_federation.py", "test_ui_browser.py", "test_attack.py", "test_secagg_simulation.py",
    "test_lifecycle.py", "test_bench_privacy.py", "test_dp_integration.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FIRST)))
