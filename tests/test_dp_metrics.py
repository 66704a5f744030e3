"""Noisy metric sums under DP (issue 12 item 4, DP side): bounded sums, stated noise, a Release."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy.dp.accounting import Release, epsilon
from privacy.dp.metrics import MetricsError, MetricsSpec, release_metrics

SPEC = MetricsSpec(noise_multiplier=2.0, loss_bound=4.0, metrics=("correct", "top3"))


def _exact(losses: np.ndarray, correct: np.ndarray, top3: np.ndarray) -> np.ndarray:
    """The normalised vector the sensitivity argument is about: every coordinate per 1."""
    return np.array([len(losses), np.clip(losses, 0, 4.0).sum() / 4.0,
                     np.clip(correct, 0, 1).sum(), np.clip(top3, 0, 1).sum()])


def test_one_example_moves_the_normalised_sums_by_at_most_sqrt_k() -> None:
    rng = np.random.default_rng(0)
    losses = rng.exponential(3.0, 50)
    losses[0] = 1e6  # clipped to the bound
    correct, top3 = rng.integers(0, 2, 50).astype(float), rng.random(50) * 1.5
    full = _exact(losses, correct, top3)
    worst = 0.0
    for i in range(50):
        keep = np.arange(50) != i
        worst = max(worst, float(np.linalg.norm(full - _exact(losses[keep], correct[keep],
                                                               top3[keep]))))
    assert worst <= math.sqrt(len(SPEC.keys)) + 1e-12


def test_noise_has_the_stated_std_on_each_sum() -> None:
    assert SPEC.keys == ("num-examples", "loss-sum", "correct-sum", "top3-sum")
    std = SPEC.noise_std
    assert std["num-examples"] == pytest.approx(2.0 * 2)  # z * sqrt(4 sums)
    assert std["loss-sum"] == pytest.approx(2.0 * 2 * 4.0)  # scaled by the loss bound
    rng = np.random.default_rng(1)
    losses, correct = np.full(30, 9.0), np.ones(30)
    draws = [release_metrics(losses, {"correct": correct, "top3": correct * 2}, SPEC, rng).sums
             for _ in range(4000)]
    for key, exact in (("num-examples", 30.0), ("loss-sum", 30 * 4.0), ("correct-sum", 30.0),
                       ("top3-sum", 30.0)):
        values = np.array([d[key] for d in draws])
        assert values.mean() == pytest.approx(exact, abs=4 * std[key] / math.sqrt(4000))
        assert values.std() == pytest.approx(std[key], rel=0.05)


def test_release_is_a_gaussian_mechanism_with_the_spec_noise() -> None:
    out = release_metrics(np.ones(5), {"correct": np.ones(5), "top3": np.ones(5)}, SPEC)
    assert out.release == Release(2.0, 1.0, 1)
    assert epsilon([out.release] * 10, 1e-5) == epsilon([Release(2.0, 1.0, 10)], 1e-5)
    assert out.sums["num-examples"] != 5.0  # never the exact count


@pytest.mark.parametrize(
    "losses,values,match",
    [
        (np.ones(3), {"correct": np.ones(3)}, r"metric values for \['correct'\] but the spec"),
        (np.ones(3), {"correct": np.ones(2), "top3": np.ones(3)}, "has 2 values for 3 examples"),
        (np.array([1.0, np.nan]), {"correct": np.ones(2), "top3": np.ones(2)}, "losses contains"),
    ],
)
def test_bad_metric_inputs_are_one_line_errors(losses, values, match) -> None:
    with pytest.raises(MetricsError, match=match) as info:
        release_metrics(losses, values, SPEC)
    assert "\n" not in str(info.value)


def test_bad_specs_are_refused() -> None:
    with pytest.raises(MetricsError, match="metrics loss_bound=0"):
        MetricsSpec(1.0, 0)
    with pytest.raises(MetricsError, match="must be distinct lower-case names"):
        MetricsSpec(1.0, 1.0, ("correct", "correct"))
