"""Smoke tests of scripts/bench_privacy.py's pieces at tiny sizes (no timings asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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

TINY = bp.Setting("tiny", {"model": "mlp", "lr": 0.1, "batch-size": 32, "local-epochs": 1,
                           "num-server-rounds": 2, "dp-max-grad-norm": 1.0})


def test_time_cases_runs_every_mode_once_per_repeat() -> None:
    cases = [bp.SpeedCase("mlp", "node", mode, 64, 1) for mode in ("none", "hooks", "ghost")]
    times = bp.time_cases(cases, repeats=2)
    assert set(times) == set(cases)
    assert all(len(ms) == 2 and min(ms) > 0 for ms in times.values())
    table = bp.speed_table("t", times, "data")
    assert table.row_count == 3


def test_speed_case_lists_pair_each_dp_mode_with_its_baseline() -> None:
    for case in bp.speed_cases(64, 1) + bp.cnn_explore_cases((16, 64), (1,)):
        assert case.baseline().mode == "none"
    assert len(bp.speed_cases(64, 1)) == 16


def test_federated_run_is_repeatable_and_restores_node_code(tmp_path: Path) -> None:
    make_optimizer, secret = bp.local_update.make_optimizer, bp.dp_sgd._secret_generator
    cfg = TINY.run_config(8.0, 1e-5)
    first = bp.federated_run(cfg, nodes=2, optimizer="sgd", noise_seed=5)
    again = bp.federated_run(cfg, nodes=2, optimizer="sgd", noise_seed=5)
    assert len(first.accuracy) == 2 and all(0 <= a <= 1 for a in first.accuracy)
    assert first.accuracy == again.accuracy  # seeded noise: the benchmark can compare settings
    assert first.noise_multiplier is not None and first.noise_multiplier > 0
    assert bp.local_update.make_optimizer is make_optimizer
    assert bp.dp_sgd._secret_generator is secret

    results = {("tiny", None): [bp.federated_run(TINY.run_config(None, 1e-5), nodes=2)],
               ("tiny", 8.0): [first, again]}
    table = bp.accuracy_table(results, [TINY], [None, 8.0], 1e-5)
    assert table.row_count == 1
    png = bp.plot_accuracy(results, [TINY], [None, 8.0], tmp_path / "acc.png")
    assert png.stat().st_size > 1000


def test_noise_per_step_falls_with_epsilon() -> None:
    keys = dict(TINY.keys)
    assert bp.noise_per_step(keys, 1.0, 1e-5, 144) > bp.noise_per_step(keys, 8.0, 1e-5, 144)


def test_decay_optimizer_halves_lr_by_round_four() -> None:
    model = bp.build_model("mlp", bp.TaskConfig().spec, seed=0)
    opt = bp.OPTIMIZERS["sgd-momentum-decay"](model, 0.2, 4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert opt.param_groups[0]["momentum"] == 0.9
