"""Shared fixtures: run the real app through Flower, in a temporary FLWR_HOME and data dir."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from server.deploy.superlink import SuperLink
from server.store import RunStore

ROOT = Path(__file__).resolve().parent.parent

# CI is deterministic: property tests replay the same examples every run and keep no database.
# `make fuzz` (HYPOTHESIS_PROFILE=fuzz) runs the same tests as a random search.
settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          print_blob=True)
settings.register_profile("fuzz", derandomize=False, database=None, deadline=None,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def run_simulation(
    workdir: Path, nodes: int, rounds: int, timeout: float = 300, **run_config: Any
) -> tuple[str, str, RunStore]:
    """Run the app in the Simulation Engine; return (Flower status, run id, store)."""
    data_dir = workdir / "store"
    cfg: dict[str, Any] = {"num-server-rounds": rounds, "data-dir": str(data_dir)}
    cfg.update({k.replace("_", "-"): v for k, v in run_config.items()})
    with SuperLink(workdir / "flower", simulation=True) as sl:
        rid = sl.submit(ROOT, cfg, {"num-supernodes": nodes, "client-resources-num-cpus": 1})
        status = sl.wait_finished(rid, timeout)
    run_id = str(cfg.get("resume") or rid)
    return status, run_id, RunStore.in_dir(cfg["data-dir"])


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
