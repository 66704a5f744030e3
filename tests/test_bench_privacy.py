"""Smoke tests of scripts/bench_privacy.py's pieces at tiny sizes (no timings asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# Opacus' per-sample hooks warn on every backward of a model whose input needs no grad.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def _load() -> ModuleType:
    path = ROOT / "scripts" / "bench_privacy.py"
    spec = importlib.util.spec_from_file_location("bench_privacy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_privacy"] = module
    spec.loader.exec_module(module)
    return module


bp = _load()

TINY = bp.Setting("tiny", {"lr": 0.1, "batch-size": 64, "local-epochs": 1,
                           "num-server-rounds": 2, "partition": "iid"})


def test_time_cases_runs_every_mode_once_per_repeat() -> None:
    cases = [bp.SpeedCase("mlp", "node", mode, 64) for mode in ("none", "hooks", "ew")]
    times = bp.time_cases(cases, repeats=2)
    assert set(times) == set(cases)
    assert all(len(ms) == 2 and min(ms) > 0 for ms in times.values())
    assert bp.speed_table("t", times).row_count == 3
    assert bp.fastest_modes(times)[("mlp", "node", 64)] in ("hooks", "ew")


def test_speed_cases_cover_every_mode_with_its_baseline() -> None:
    cases = bp.speed_cases([16, 64])
    assert len(cases) == 2 * 2 * 2 * len(bp.SPEED_MODES)
    assert {c.mode for c in cases} == {"none", "hooks", "ghost", "ew", "functorch"}
    assert all(c.baseline() in cases for c in cases)


def test_fedavg_is_the_weighted_mean() -> None:
    glob = {"w": np.zeros(2, dtype=np.float32)}
    states = [{"w": np.array([1.0, 0.0], dtype=np.float32)},
              {"w": np.array([0.0, 4.0], dtype=np.float32)}]
    np.testing.assert_allclose(bp.fedavg(glob, states, [3.0, 1.0])["w"], [0.75, 1.0])
    np.testing.assert_allclose(bp.fedavg(glob, states, [1.0, 1.0])["w"], [0.5, 2.0])


def test_federated_run_is_repeatable_and_reports_the_ledgers_epsilon(tmp_path: Path) -> None:
    secret = bp.dp_sgd._secret_generator
    cfg = TINY.run_config(8.0, 1e-5)
    first = bp.federated_run(cfg, nodes=2, noise_seed=5)
    again = bp.federated_run(cfg, nodes=2, noise_seed=5)
    other = bp.federated_run(cfg, nodes=2, noise_seed=6)
    assert len(first.accuracy) == 2 and all(0 <= a <= 1 for a in first.accuracy)
    assert first.accuracy == again.accuracy  # seeded noise: settings can be compared
    assert first.accuracy != other.accuracy  # ... and another draw is another draw
    assert first.noise_multiplier is not None and first.noise_multiplier > 0
    # the ledgers hold the whole run (training + the final evaluation release): its target
    assert first.ledger_epsilon == pytest.approx(8.0, rel=1e-3)
    assert first.ledger_epsilon <= 8.0 + 1e-6
    assert bp.dp_sgd._secret_generator is secret

    plain = bp.federated_run(TINY.run_config(None, 1e-5), nodes=2)
    assert plain.ledger_epsilon is None and plain.noise_multiplier is None
    results = {("tiny", None): [plain], ("tiny", 8.0): [first, other]}
    table = bp.accuracy_table(results, [TINY], [None, 8.0], 1e-5, 2)
    assert table.row_count == 1
    png = bp.plot_accuracy(results, [TINY], [None, 8.0], tmp_path / "acc.png")
    assert png.stat().st_size > 1000


def test_server_optimiser_of_the_run_is_applied(tmp_path: Path) -> None:
    """The bench takes the server's step: a momentum run ends elsewhere than a plain one."""
    base = TINY.run_config(None, 1e-5)
    plain = bp.federated_run(base, nodes=2)
    momentum = bp.federated_run({**base, "server-optimizer": "momentum", "server-lr": 0.5},
                                nodes=2)
    assert plain.accuracy != momentum.accuracy


def test_spread_shows_mean_std_and_range() -> None:
    assert bp.spread([0.9]) == "0.900"
    assert bp.spread([0.8, 0.9, 1.0]) == "0.900 ± 0.100 (0.80-1.00)"


def test_the_tuned_linear_setting_builds_the_bundled_linear_model() -> None:
    from clients.task import TaskContext, load_task

    cfg = bp.LINEAR.run_config(3.0, 1e-5)
    ctx = TaskContext(cfg, {}, 42)
    task = load_task(str(cfg.get("task", "clients.tasks.digits:task")), ctx)
    model = task.build_model(ctx)
    assert sum(p.numel() for p in model.parameters()) == 650
    assert task.evaluation_set(ctx) is not None
