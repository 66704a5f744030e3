"""Stateless accounting must agree with Opacus' own accountants and calibrate safely."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

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
    SkellamRelease,
    calibrate_noise,
    calibrate_skellam,
    epsilon,
    mechanism_from_json,
    mechanism_to_json,
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
    module = accounting._opacus_rdp()
    real = module.compute_rdp

    def counting(**kw: object) -> object:
        calls.append((kw["noise_multiplier"], kw["q"]))  # type: ignore[arg-type]
        return real(**kw)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "compute_rdp", counting)
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


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibration_composes_fixed_metric_releases_into_the_target(accountant: str) -> None:
    """Item 4: DP-SGD noise plus the run's rounds x metric releases meet the target."""
    metric, rounds = Release(8.0, 1.0, 1), 10
    fixed = [metric] * rounds
    alone = calibrate_noise(3.0, DELTA, 0.02, 400, accountant)
    sigma = calibrate_noise(3.0, DELTA, 0.02, 400, accountant, fixed=fixed)
    assert sigma > alone
    total = epsilon([*fixed, Release(sigma, 0.02, 400)], DELTA, accountant)
    assert 0.98 * 3.0 < total <= 3.0
    assert epsilon([*fixed, Release(alone, 0.02, 400)], DELTA, accountant) > 3.0


def test_unreachable_target_is_a_clear_error() -> None:
    fixed = [Release(0.5, 1.0, 50)]
    with pytest.raises(AccountingError, match="unreachable: the fixed releases alone spend"):
        calibrate_noise(1.0, DELTA, 0.01, 100, fixed=fixed)
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


def test_ledger_reads_do_not_import_torch() -> None:
    """Opacus' RDP file is loaded on its own: a ledger read costs no torch import."""
    code = (
        "import sys\n"
        "from privacy.dp.accounting import Release, epsilon\n"
        "epsilon([Release(1.1, 0.02, 50)], 1e-5)\n"
        "assert 'torch' not in sys.modules and 'opacus' not in sys.modules, 'imported'\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert accounting._opacus_rdp().__file__ == opacus_rdp.__file__


# -- Skellam (user-level distributed DP) ----------------------------------------------------


def _exact_skellam_rdp(variance: float, shifts: list[int], orders: list[int]) -> np.ndarray:
    """Renyi divergence of Skellam(V) noise on a shifted integer vector, by summation.

    Coordinates are independent, so the divergence of the vector is the sum over its
    coordinates of the 1-D divergences.
    """
    from scipy import stats

    mu = variance / 2
    reach = int(30 * np.sqrt(variance)) + 60 * max(abs(s) for s in shifts) + 50
    k = np.arange(-reach, reach + 1)
    log_q = stats.skellam.logpmf(k, mu, mu)
    out = np.zeros(len(orders))
    for shift in shifts:
        log_p = stats.skellam.logpmf(k - shift, mu, mu)
        ok = np.isfinite(log_p) & np.isfinite(log_q)  # pmf underflow far out: zero mass
        for i, a in enumerate(orders):
            terms = a * log_p[ok] + (1 - a) * log_q[ok]
            out[i] += np.logaddexp.reduce(terms) / (a - 1)
    return out


@pytest.mark.parametrize("variance", [4.0, 50.0, 2000.0])
def test_skellam_rdp_bound_is_above_the_exact_divergence(variance: float) -> None:
    """The Agarwal-Kairouz-Liu bound must bound the true Renyi divergence of the mechanism.

    The exact RDP of a given shift vector is computable; the bound holds for every vector
    with those L1/L2 norms. A factor-2 slip between mu and the variance breaks this test.
    """
    shifts = [3, -1, 2]  # L2^2 = 14, L1 = 6
    l2, l1 = float(np.sqrt(14)), 6.0
    bound = SkellamRelease(variance, l2, l1, 1).rdp()
    index = [i for i, o in enumerate(RDP_ORDERS) if o == int(o) and o <= 40]
    orders = [int(RDP_ORDERS[i]) for i in index]
    exact = _exact_skellam_rdp(variance, shifts, orders)
    for j, i in enumerate(index):
        assert exact[j] <= bound[i] * (1 + 1e-9), orders[j]
        assert bound[i] >= orders[j] * l2**2 / (2 * variance)  # never better than Gaussian
    if variance >= 2000:  # large noise: discreteness costs almost nothing
        j = orders.index(8)
        assert bound[index[j]] == pytest.approx(exact[j], rel=0.02)


def test_skellam_rdp_at_fractional_orders_uses_the_next_integer_order() -> None:
    curve = SkellamRelease(100.0, 5.0, 10.0, 1).rdp()
    at = {o: curve[i] for i, o in enumerate(RDP_ORDERS)}
    assert at[1.1] == at[2.0] and at[2.5] == at[3.0] and at[3.0] < at[3.1]
    assert list(SkellamRelease(100.0, 5.0, 10.0, 3).rdp()) == pytest.approx(list(curve * 3))


def test_calibrated_skellam_meets_target_and_is_minimal() -> None:
    v = calibrate_skellam(4.0, DELTA, 100.0, 2000.0, 10)
    assert epsilon([SkellamRelease(v, 100.0, 2000.0, 10)], DELTA) <= 4.0
    less = v * (1 - 2 * accounting.CALIBRATION_RTOL)
    assert epsilon([SkellamRelease(less, 100.0, 2000.0, 10)], DELTA) > 4.0


def test_prv_of_a_history_with_skellam_falls_back_to_rdp() -> None:
    mixed = [Release(1.1, 0.02, 100), SkellamRelease(1e6, 200.0, 4e4, 3)]
    assert epsilon(mixed, DELTA, "prv") == epsilon(mixed, DELTA, "rdp")
    assert epsilon(mixed, DELTA) > epsilon(mixed[:1], DELTA)


@pytest.mark.parametrize(
    "mechanism", [Release(1.1, 0.02, 300), SkellamRelease(123.5, 7.25, 20.0, 4)]
)
def test_mechanisms_round_trip_through_the_ledger_encoding(mechanism: object) -> None:
    assert mechanism_from_json(*mechanism_to_json(mechanism)) == mechanism
    with pytest.raises(AccountingError, match="mechanism 'laplace' is unknown"):
        mechanism_from_json("laplace", "{}")
