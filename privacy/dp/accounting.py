"""Stateless differential-privacy accounting for subsampled-Gaussian releases.

Opacus' accountants are stateful objects tied to one optimizer; a node, however, must
compose *every* release it ever made on a dataset (many runs, many processes). This module
therefore takes an explicit history (a sequence of :class:`Release`) and composes it with
Opacus' own analysis functions, so the number we report is exactly what Opacus' RDP/PRV
accountants would report for the same history.

The RDP path caches the per-step RDP curve per ``(noise_multiplier, sample_rate)``: a curve
over ~150 orders costs milliseconds to compute and a ledger composes the same few mechanisms
over and over (calibration alone evaluates dozens of candidates).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "AccountingError",
    "Release",
    "calibrate_noise",
    "epsilon",
    "per_step_rdp",
]

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
#: Same order grid as Opacus' ``RDPAccountant.DEFAULT_ALPHAS``, so our numbers match it
#: exactly. Spelled out (and checked by a test) because importing Opacus pulls in torch,
#: which would make every ledger read (e.g. the ``fedguard-node ledger`` CLI) take seconds.
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)]
)
#: Beyond this noise multiplier we call a target unreachable (mirrors Opacus' MAX_SIGMA).
MAX_NOISE_MULTIPLIER = 1e6
#: Relative precision of the calibrated noise multiplier (the result is always on the safe side).
CALIBRATION_RTOL = 1e-4


class AccountingError(ValueError):
    """A bad accounting input (unknown accountant, delta out of range, unreachable target)."""


@dataclass(frozen=True)
class Release:
    """A subsampled-Gaussian mechanism applied ``steps`` times.

    ``sample_rate`` is the Poisson sampling probability per step; 1.0 means every record
    (or, for user-level DP, every round's full contribution) is used each step.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise AccountingError(
                f"noise_multiplier={self.noise_multiplier}: must be a finite number > 0; "
                "e.g. 1.1"
            )
        if not (math.isfinite(self.sample_rate) and 0 < self.sample_rate <= 1):
            raise AccountingError(
                f"sample_rate={self.sample_rate}: must be in (0, 1]; e.g. batch_size / n"
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise AccountingError(f"steps={self.steps!r}: must be an integer >= 1")


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise AccountingError(f"delta={delta}: must be in (0, 1); e.g. 1e-5")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise AccountingError(
            f"accountant={accountant!r} is unknown: use one of {', '.join(ACCOUNTANTS)}"
        )


@functools.lru_cache(maxsize=4096)
def _per_step_rdp_cached(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    from opacus.accountants.analysis.rdp import compute_rdp

    curve = compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
    )
    return tuple(float(v) for v in curve)


def per_step_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one step of the mechanism at every order in :data:`RDP_ORDERS` (cached)."""
    return np.asarray(_per_step_rdp_cached(float(noise_multiplier), float(sample_rate)))


def _merge(releases: Iterable[Release]) -> list[tuple[float, float, int]]:
    """Group identical mechanisms so each is composed once with the summed step count."""
    steps: dict[tuple[float, float], int] = {}
    for r in releases:
        if not isinstance(r, Release):
            raise AccountingError(
                f"{r!r} is not a Release; build one with Release(sigma, q, steps)"
            )
        key = (float(r.noise_multiplier), float(r.sample_rate))
        steps[key] = steps.get(key, 0) + r.steps
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants.analysis.rdp import get_privacy_spent

    total = np.zeros(len(RDP_ORDERS))
    for sigma, q, n in history:
        total = total + per_step_rdp(sigma, q) * n
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound is still valid, only loose (tiny
        # noise); calibration probes such values on purpose, so the warning is just noise.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=total, delta=delta)
    return float(eps)


def _prv_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = list(history)
    # q == 1.0 makes Opacus evaluate log(0) on a branch it then discards; silence that noise.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(acc.get_epsilon(delta=delta))


def epsilon(releases: Sequence[Release], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of composing all ``releases`` (0.0 for an empty history).

    "rdp" is Opacus' RDP analysis on its default order grid; "prv" is Opacus' PRV
    accountant (numerically tighter, returns its upper bound).
    """
    _check_accountant(accountant)
    _check_delta(delta)
    history = _merge(releases)
    if not history:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(history, delta)
    return _prv_epsilon(history, delta)


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    prior: Sequence[Release] = (),
) -> float:
    """Smallest noise multiplier keeping ``prior`` + this release within ``target_epsilon``.

    Binary search on :func:`epsilon`; the returned value always satisfies the target (we
    return the upper end of the final bracket) and is within :data:`CALIBRATION_RTOL` of
    the true minimum.
    """
    _check_accountant(accountant)
    _check_delta(delta)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise AccountingError(f"target_epsilon={target_epsilon}: must be a finite number > 0")
    Release(1.0, sample_rate, steps)  # validates sample_rate and steps with clear messages
    prior = list(prior)
    already = epsilon(prior, delta, accountant) if prior else 0.0
    if already >= target_epsilon:
        raise AccountingError(
            f"target epsilon {target_epsilon:g} is unreachable: earlier releases already "
            f"spend {already:.3f}; raise the budget or use a new dataset"
        )

    def eps_at(sigma: float) -> float:
        return epsilon([*prior, Release(sigma, sample_rate, steps)], delta, accountant)

    low, high = 0.0, 1.0
    rtol = CALIBRATION_RTOL
    if accountant == "prv":
        # PRV is tighter than RDP, so the RDP answer brackets it from above; PRV itself is
        # only accurate to ~0.01 in epsilon, so a finer sigma search would be noise.
        high = calibrate_noise(target_epsilon, delta, sample_rate, steps, "rdp", prior)
        rtol = 1e-3
    while eps_at(high) > target_epsilon:
        low, high = high, high * 2
        if high > MAX_NOISE_MULTIPLIER:
            raise AccountingError(
                f"target epsilon {target_epsilon:g} is unreachable with sample_rate="
                f"{sample_rate:g} and {steps} steps (noise multiplier > {MAX_NOISE_MULTIPLIER:g});"
                " raise the target or train fewer steps"
            )
    while high - low > rtol * high:
        mid = (low + high) / 2
        if eps_at(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high
