"""Stateless accounting must agree with Opacus' own accountants and calibrate safely."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.utils import get_noise_multiplier

from privacy.dp import accounting
from privacy.dp.accounting import (
    RDP_ORDERS,
    AccountingError,
    Release,
    calibrate_noise,
    epsilon,
    per_step_rdp,
)

DELTA = 1e-5
HISTORY = [
    Release(1.1, 0.01, 300),
    Release(0.8, 0.05, 120),
    Release(1.1, 0.01, 200),  # same mechanism again: must compose like 500 steps
    Release(4.0, 1.0, 10),  # full batch / user-level
]


def test_order_grid_is_opacus_default() -> None:
    assert list(RDP_ORDERS) == [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]


@pytest.mark.parametrize("sigma,q", [(1.1, 0.01), (0.7, 0.2), (3.0, 1.0)])
def test_per_step_curve_times_steps_equals_opacus_steps(sigma: float, q: float) -> None:
    direct = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=250, orders=RDP_ORDERS)
    np.testing.assert_allclose(per_step_rdp(sigma, q) * 250, direct, rtol=1e-9)


def test_epsilon_equals_opacus_rdp_accountant_on_same_history() -> None:
    acc = RDPAccountant()
    acc.history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in HISTORY]
    assert epsilon(HISTORY, DELTA) == pytest.approx(acc.get_epsilon(DELTA), abs=1e-6)


def test_epsilon_equals_opacus_accountant_fed_step_by_step() -> None:
    """The history Opacus builds from optimizer steps gives the same number as ours."""
    acc = RDPAccountant()
    for _ in range(40):
        acc.step(noise_multiplier=1.3, sample_rate=0.02)
    for _ in range(15):
        acc.step(noise_multiplier=0.9, sample_rate=0.1)
    ours = epsilon([Release(1.3, 0.02, 40), Release(0.9, 0.1, 15)], DELTA)
    assert ours == pytest.approx(acc.get_epsilon(DELTA), abs=1e-6)


def test_prv_equals_opacus_prv_accountant_and_is_tighter_than_rdp() -> None:
    acc = PRVAccountant()
    acc.history = [(1.1, 0.01, 500), (0.8, 0.05, 120)]
    releases = [Release(1.1, 0.01, 500), Release(0.8, 0.05, 120)]
    prv = epsilon(releases, DELTA, "prv")
    assert prv == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)
    assert prv < epsilon(releases, DELTA, "rdp")


def test_prv_handles_full_batch_release_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert 0 < epsilon([Release(2.0, 1.0, 5)], DELTA, "prv") < np.inf


def test_empty_history_spends_nothing() -> None:
    assert epsilon([], DELTA) == 0.0


@settings(max_examples=25, deadline=None, database=None)
@given(
    sigma=st.floats(0.6, 5.0),
    q=st.floats(0.001, 1.0),
    steps=st.integers(1, 2000),
    extra=st.integers(1, 500),
)
def test_epsilon_grows_with_every_added_step(
    sigma: float, q: float, steps: int, extra: int
) -> None:
    before = epsilon([Release(sigma, q, steps)], DELTA)
    after = epsilon([Release(sigma, q, steps), Release(sigma, q, extra)], DELTA)
    assert after > before > 0


def test_per_step_curve_is_computed_once_per_mechanism(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, float]] = []
    real = opacus_rdp.compute_rdp

    def counting(**kw: object) -> object:
        calls.append((kw["noise_multiplier"], kw["q"]))  # type: ignore[arg-type]
        return real(**kw)  # type: ignore[arg-type]

    monkeypatch.setattr(opacus_rdp, "compute_rdp", counting)
    accounting._per_step_rdp_cached.cache_clear()
    for _ in range(5):
        epsilon(HISTORY, DELTA)
    assert sorted(set(calls)) == sorted(calls)  # each (sigma, q) computed exactly once
    assert len(calls) == 3
    accounting._per_step_rdp_cached.cache_clear()  # don't leak the counting curve


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibrated_noise_meets_target_and_is_minimal(accountant: str) -> None:
    q, steps, target = 0.02, 500, 2.0
    sigma = calibrate_noise(target, DELTA, q, steps, accountant)
    assert epsilon([Release(sigma, q, steps)], DELTA, accountant) <= target
    rtol = accounting.CALIBRATION_RTOL if accountant == "rdp" else 1e-3
    less = sigma * (1 - 2 * rtol)
    assert epsilon([Release(less, q, steps)], DELTA, accountant) > target


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_calibration_agrees_with_opacus_get_noise_multiplier() -> None:
    ours = calibrate_noise(3.0, DELTA, 0.01, 3000)
    theirs = get_noise_multiplier(
        target_epsilon=3.0, target_delta=DELTA, sample_rate=0.01, steps=3000
    )
    # Opacus stops within 0.01 in epsilon, we within 1e-4 relative in sigma.
    assert ours == pytest.approx(theirs, rel=5e-3)


def test_calibration_with_prior_needs_more_noise_and_stays_within_target() -> None:
    prior = [Release(1.5, 0.02, 400)]
    alone = calibrate_noise(3.0, DELTA, 0.02, 400)
    sigma = calibrate_noise(3.0, DELTA, 0.02, 400, prior=prior)
    assert sigma > alone
    assert epsilon([*prior, Release(sigma, 0.02, 400)], DELTA) <= 3.0


def test_unreachable_target_is_a_clear_error() -> None:
    prior = [Release(0.5, 1.0, 50)]
    with pytest.raises(AccountingError, match="unreachable.*already spend"):
        calibrate_noise(1.0, DELTA, 0.01, 100, prior=prior)
    with pytest.raises(AccountingError, match="unreachable"):
        calibrate_noise(1e-9, DELTA, 1.0, 10_000)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: epsilon(HISTORY, DELTA, "moments"), "accountant='moments' is unknown"),
        (lambda: epsilon(HISTORY, 2.0), r"delta=2.0: must be in \(0, 1\)"),
        (lambda: Release(0.0, 0.1, 1), "noise_multiplier=0.0"),
        (lambda: Release(1.0, 1.5, 1), r"sample_rate=1.5: must be in \(0, 1\]"),
        (lambda: Release(1.0, 0.1, 0), "steps=0"),
        (lambda: calibrate_noise(-1.0, DELTA, 0.1, 10), "target_epsilon=-1.0"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert isinstance(info.value, AccountingError)
    assert "\n" not in str(info.value)
