"""Independent re-computation of a ledger's epsilon with Google's ``dp_accounting``.

Our numbers come from Opacus' analysis code; Google's library is a separate implementation
of the same mathematics, so agreement guards against mistakes in how we compose a history.

Tolerances (and why):
* RDP vs Google RDP on the same order grid: 1% relative. Both compute the same RDP curve
  and both convert with Balle et al. 2020; differences are numerical only (we measured
  < 0.01% on these histories).
* PLD (Google, pessimistic, discretisation 1e-3) vs our RDP: RDP's conversion is lossy,
  so PLD must be <= RDP (plus 0.1% slack), and within a sane factor: >= RDP / 2.
* PRV (Opacus' upper bound) vs PLD: both are near-exact numerical accountants; 3% relative
  (PRV targets eps_error 0.01; we measured ~0.2%).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from privacy.dp.accounting import RDP_ORDERS, Release, SkellamRelease, epsilon
from privacy.dp.ledger import PrivacyLedger
from privacy.dp.metrics import MetricsSpec
from privacy.dp.user_level import achieved_epsilon, calibrate_user_level

SOURCE = "crosscheck/source"
RUNS = {
    # run_id: (noise multiplier, sample rate, steps per round, rounds, kind)
    "run-1": (1.1, 0.02, 50, 3, "dp-sgd"),
    "run-2": (1.3, 0.02, 50, 3, "dp-sgd"),
    "run-3": (0.9, 0.05, 20, 2, "dp-sgd"),
    "run-4": (3.0, 1.0, 1, 5, "metrics"),
}


@pytest.fixture(autouse=True)
def _quiet_absl() -> Iterator[None]:
    """dp_accounting logs (harmless) convergence notes for a few fractional orders."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> PrivacyLedger:
    path: Path = tmp_path_factory.mktemp("crosscheck") / "ledger.sqlite"
    led = PrivacyLedger(path)
    led.set_budget(SOURCE, 100.0, 1e-7)
    for run_id, (sigma, q, steps, rounds, kind) in RUNS.items():
        for r in range(1, rounds + 1):
            release = Release(sigma, q, steps)
            (rid,) = led.reserve(SOURCE, run_id, r, [(kind, release)], num_records=10**6,
                                 fingerprint="d" * 64).reservations
            led.settle(rid, release)
    return led


def _event(releases: list[Release]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    r.sample_rate, dp_accounting.GaussianDpEvent(r.noise_multiplier)
                ),
                r.steps,
            )
            for r in releases
        ]
    )


def _google_rdp(releases: list[Release], delta: float) -> float:
    acc = rdp.RdpAccountant(list(RDP_ORDERS))
    acc.compose(_event(releases))
    return float(acc.get_epsilon(delta))


def _google_pld(releases: list[Release], delta: float) -> float:
    acc = pld.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(_event(releases))
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize("delta", [1e-5, 1e-7])
def test_ledger_rdp_agrees_with_google_rdp(ledger: PrivacyLedger, delta: float) -> None:
    history = [e.release for e in ledger.releases(SOURCE)]
    assert len(history) == sum(r[3] for r in RUNS.values())
    ours = ledger.spent(SOURCE, "rdp", delta=delta)
    assert ours == pytest.approx(_google_rdp(history, delta), rel=0.01)


def test_every_prefix_of_the_history_agrees(ledger: PrivacyLedger) -> None:
    """The cumulative epsilon after each recorded round, not just the final total."""
    history = [e.release for e in ledger.releases(SOURCE)]
    for n in (1, 4, 7, len(history)):
        assert epsilon(history[:n], 1e-5) == pytest.approx(
            _google_rdp(history[:n], 1e-5), rel=0.01
        )


@pytest.mark.parametrize("delta", [1e-5, 1e-7])
def test_pld_is_tighter_than_rdp_by_a_sane_factor(ledger: PrivacyLedger, delta: float) -> None:
    history = [e.release for e in ledger.releases(SOURCE)]
    ours_rdp = ledger.spent(SOURCE, "rdp", delta=delta)
    google_pld = _google_pld(history, delta)
    assert ours_rdp / 2 <= google_pld <= ours_rdp * 1.001


@pytest.mark.slow
def test_ledger_prv_agrees_with_google_pld(ledger: PrivacyLedger) -> None:
    history = [e.release for e in ledger.releases(SOURCE)]
    ours_prv = ledger.spent(SOURCE, "prv", delta=1e-5)
    assert ours_prv == pytest.approx(_google_pld(history, 1e-5), rel=0.03)


def test_metric_release_is_googles_gaussian_mechanism() -> None:
    """A metric release is a Gaussian mechanism with noise multiplier z (no subsampling)."""
    spec = MetricsSpec(noise_multiplier=4.0, loss_bound=5.0, metrics=("correct",))
    acc = rdp.RdpAccountant(list(RDP_ORDERS))
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(4.0), 20))
    ours = epsilon([spec.release()] * 20, 1e-5)
    assert ours == pytest.approx(float(acc.get_epsilon(1e-5)), rel=0.01)


def test_skellam_tends_to_googles_gaussian_and_never_undercuts_it() -> None:
    """Skellam noise of variance V on sensitivity l2 is, at large V, the Gaussian mechanism
    with noise multiplier sqrt(V) / l2: its epsilon must approach Google's Gaussian number
    from above (the bound's extra term is the price of discreteness)."""
    plan = calibrate_user_level(8.0, 1e-5, 10, 6, clip=1.0, dim=5000, max_contributors=10)
    release = SkellamRelease(6 * plan.share_variance, plan.l2_sensitivity,
                             plan.l1_sensitivity, 1)
    z = (release.variance ** 0.5) / release.l2_sensitivity
    acc = rdp.RdpAccountant(list(RDP_ORDERS))
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), 10))
    google = float(acc.get_epsilon(1e-5))
    ours = achieved_epsilon(plan, [6] * 10, 1e-5)
    assert google <= ours <= google * 1.01
    assert ours <= 8.0
