"""Stateless differential-privacy accounting for the mechanisms a node releases.

Opacus' accountants are stateful objects tied to one optimizer; a node, however, must
compose *every* release it ever made on a data source (many runs, many processes, several
kinds of release). This module therefore takes an explicit history and composes it.

Two mechanisms exist:

* :class:`Release`: the Poisson-subsampled Gaussian mechanism applied ``steps`` times
  (DP-SGD, and the Gaussian metric releases of :mod:`privacy.dp.metrics`). Its RDP comes from
  Opacus' own analysis code, so our numbers are exactly what Opacus' RDP/PRV accountants
  report for the same history (the tests also check them against Google's dp-accounting).
* :class:`SkellamRelease`: the multi-dimensional Skellam mechanism on an integer vector
  (distributed user-level DP in :mod:`privacy.dp.user_level`). Its RDP is the bound of
  Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially Private Federated
  Learning", NeurIPS 2021 (arXiv:2110.04995), for integer orders; the same bound is used by
  Google's reference code (google-research/federated, distributed_dp/accounting_utils.py,
  ``_skellam_rdp``; checked 2026-12-01). With per-coordinate variance ``V`` and integer
  sensitivities ``l2``, ``l1``, at integer order ``a >= 2``::

      rdp(a) = a l2^2 / (2 V) + min(((2a - 1) l2^2 + 6 l1) / (4 V^2), 3 l1 / (2 V))

  The first term is the Gaussian mechanism's; the ``min`` is the price of discreteness. A
  Renyi divergence never decreases with the order, so at a fractional order we use the bound
  of the next integer order (Google's code rounds down, which is not an upper bound).

Composition adds RDP curves order by order on one grid (Opacus' default orders) and converts
to (epsilon, delta) with Opacus' conversion (Balle et al. 2020). The "prv" accountant
(Opacus' PRV, numerically tighter) only knows the subsampled Gaussian; a history holding a
Skellam release is composed with RDP, which is still a valid upper bound.

The RDP curve of each mechanism is cached: a ledger composes the same few mechanisms over and
over, and calibration evaluates dozens of candidates.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "AccountingError",
    "Mechanism",
    "Release",
    "SkellamRelease",
    "calibrate_noise",
    "calibrate_skellam",
    "epsilon",
    "mechanism_from_json",
    "mechanism_to_json",
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
#: Relative precision of a calibrated parameter (the result is always on the safe side).
CALIBRATION_RTOL = 1e-4


class AccountingError(ValueError):
    """A bad accounting input (unknown accountant, delta out of range, unreachable target)."""


def _positive(name: str, value: float, hint: str) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value > 0
    ):
        raise AccountingError(f"{name}={value}: must be a finite number > 0; {hint}")


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AccountingError(f"steps={steps!r}: must be an integer >= 1")


@dataclass(frozen=True)
class Release:
    """A Poisson-subsampled Gaussian mechanism applied ``steps`` times.

    ``sample_rate`` is the Poisson sampling probability per step; 1.0 means every record
    is used each step (a plain Gaussian mechanism, e.g. a metric release).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier, "e.g. 1.1")
        if not (math.isfinite(self.sample_rate) and 0 < self.sample_rate <= 1):
            raise AccountingError(
                f"sample_rate={self.sample_rate}: must be in (0, 1]; e.g. batch_size / n"
            )
        _check_steps(self.steps)

    def rdp(self) -> np.ndarray:
        """RDP of all ``steps`` at every order of :data:`RDP_ORDERS`."""
        return per_step_rdp(self.noise_multiplier, self.sample_rate) * self.steps

    def dominated_by(self, other: Mechanism) -> bool:
        """True if this release leaks no more than ``other`` under every accountant.

        More noise, a lower sampling rate and fewer steps each give a dominated privacy-loss
        distribution, so a release may be settled as anything it is dominated by.
        """
        return (
            isinstance(other, Release)
            and self.noise_multiplier >= other.noise_multiplier
            and self.sample_rate <= other.sample_rate
            and self.steps <= other.steps
        )


@dataclass(frozen=True)
class SkellamRelease:
    """The multi-dimensional Skellam mechanism applied ``steps`` times (no subsampling).

    ``variance`` is the per-coordinate variance of the Skellam noise on the released integer
    vector (a Skellam variable is Poisson(V/2) - Poisson(V/2)); ``l2_sensitivity`` and
    ``l1_sensitivity`` bound, in the same integer units, how far one privacy unit can move
    that vector. Sums of independent Skellam shares are Skellam with the summed variance,
    which is why this is the mechanism of distributed DP.
    """

    variance: float
    l2_sensitivity: float
    l1_sensitivity: float
    steps: int

    def __post_init__(self) -> None:
        _positive("variance", self.variance, "calibrate it")
        _positive("l2_sensitivity", self.l2_sensitivity, "e.g. scale * clip + sqrt(dim)")
        _positive("l1_sensitivity", self.l1_sensitivity, "e.g. l2 * min(sqrt(dim), l2)")
        _check_steps(self.steps)

    def rdp(self) -> np.ndarray:
        """RDP of all ``steps`` at every order of :data:`RDP_ORDERS`."""
        curve = _skellam_curve(
            float(self.variance), float(self.l2_sensitivity), float(self.l1_sensitivity)
        )
        return np.asarray(curve) * self.steps

    def dominated_by(self, other: Mechanism) -> bool:
        """True if this release leaks no more than ``other`` (more noise, smaller shifts)."""
        return (
            isinstance(other, SkellamRelease)
            and self.variance >= other.variance
            and self.l2_sensitivity <= other.l2_sensitivity
            and self.l1_sensitivity <= other.l1_sensitivity
            and self.steps <= other.steps
        )


Mechanism = Release | SkellamRelease
_NAMES: dict[type, str] = {Release: "gaussian", SkellamRelease: "skellam"}
_TYPES: dict[str, type] = {name: cls for cls, name in _NAMES.items()}


def mechanism_to_json(mechanism: Mechanism) -> tuple[str, str]:
    """``(name, parameters as canonical JSON)``: how the ledger stores a mechanism."""
    name = _NAMES.get(type(mechanism))
    if name is None:
        raise AccountingError(
            f"{mechanism!r} is not a mechanism; build a Release or a SkellamRelease"
        )
    return name, json.dumps(mechanism.__dict__, sort_keys=True)


def mechanism_from_json(name: str, params: str) -> Mechanism:
    """Inverse of :func:`mechanism_to_json`."""
    cls = _TYPES.get(name)
    if cls is None:
        raise AccountingError(f"mechanism {name!r} is unknown: expected one of {sorted(_TYPES)}")
    try:
        values: dict[str, Any] = json.loads(params)
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise AccountingError(f"stored {name} parameters {params!r} are unreadable: {exc}") from exc


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not (isinstance(delta, int | float) and 0 < delta < 1):
        raise AccountingError(f"delta={delta}: must be in (0, 1); e.g. 1e-5")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise AccountingError(
            f"accountant={accountant!r} is unknown: use one of {', '.join(ACCOUNTANTS)}"
        )


@functools.cache
def _opacus_rdp() -> ModuleType:
    """Opacus' RDP analysis module, loaded from its file without importing the package.

    ``import opacus`` imports torch (seconds per process); this module only needs numpy and
    scipy. Every ledger read, CLI call and node process pays that cost otherwise, and the
    numbers stay exactly Opacus' (same file). Falls back to a normal import if the file moved.
    """
    spec = importlib.util.find_spec("opacus")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "accountants" / "analysis" / "rdp.py"
        if path.is_file():
            file_spec = importlib.util.spec_from_file_location("_fedguard_opacus_rdp", path)
            if file_spec is not None and file_spec.loader is not None:
                module = importlib.util.module_from_spec(file_spec)
                file_spec.loader.exec_module(module)
                return module
    from opacus.accountants.analysis import rdp

    return rdp


@functools.lru_cache(maxsize=4096)
def _per_step_rdp_cached(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    compute_rdp = _opacus_rdp().compute_rdp
    curve = compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
    )
    return tuple(float(v) for v in curve)


def per_step_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one subsampled-Gaussian step at every order in :data:`RDP_ORDERS` (cached)."""
    return np.asarray(_per_step_rdp_cached(float(noise_multiplier), float(sample_rate)))


#: The integer order each grid order is bounded at: Renyi divergence never decreases with
#: the order, so the bound at the next integer order (at least 2) is a bound at this one.
_INTEGER_ORDERS = np.maximum(2.0, np.ceil(np.asarray(RDP_ORDERS)))


@functools.lru_cache(maxsize=4096)
def _skellam_curve(variance: float, l2: float, l1: float) -> tuple[float, ...]:
    """One Skellam release's RDP bound (module docstring) at every order of the grid."""
    a = _INTEGER_ORDERS
    gaussian = a * l2 * l2 / (2 * variance)
    discrete = np.minimum(
        ((2 * a - 1) * l2 * l2 + 6 * l1) / (4 * variance * variance), 3 * l1 / (2 * variance)
    )
    return tuple(float(v) for v in gaussian + discrete)


def _check_mechanisms(releases: Iterable[Mechanism]) -> list[Mechanism]:
    out = list(releases)
    for r in out:
        if type(r) not in _NAMES:
            raise AccountingError(
                f"{r!r} is not a mechanism; build one with Release(sigma, q, steps) or "
                "SkellamRelease(...)"
            )
    return out


def _merge_gaussian(releases: Iterable[Release]) -> list[tuple[float, float, int]]:
    """Group identical mechanisms so each is composed once with the summed step count."""
    steps: dict[tuple[float, float], int] = {}
    for r in releases:
        key = (float(r.noise_multiplier), float(r.sample_rate))
        steps[key] = steps.get(key, 0) + r.steps
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def _rdp_epsilon(releases: list[Mechanism], delta: float) -> float:
    get_privacy_spent = _opacus_rdp().get_privacy_spent
    total = np.zeros(len(RDP_ORDERS))
    gaussian = [r for r in releases if isinstance(r, Release)]
    for sigma, q, n in _merge_gaussian(gaussian):
        total = total + per_step_rdp(sigma, q) * n
    for r in releases:
        if isinstance(r, SkellamRelease):
            total = total + r.rdp()
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound is still valid, only loose (tiny
        # noise); calibration probes such values on purpose, so the warning is just noise.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=total, delta=delta)
    return float(eps)


def _prv_epsilon(releases: list[Release], delta: float) -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = _merge_gaussian(releases)
    # q == 1.0 makes Opacus evaluate log(0) on a branch it then discards; silence that noise.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(acc.get_epsilon(delta=delta))


def epsilon(releases: Sequence[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of composing all ``releases`` (0.0 for an empty history).

    "rdp" is Opacus' RDP analysis on its default order grid; "prv" is Opacus' PRV
    accountant (numerically tighter, returns its upper bound) for histories of subsampled
    Gaussian releases, and RDP as soon as the history holds a Skellam release.
    """
    _check_accountant(accountant)
    _check_delta(delta)
    history = _check_mechanisms(releases)
    if not history:
        return 0.0
    if accountant == "prv" and all(isinstance(r, Release) for r in history):
        return _prv_epsilon(history, delta)  # type: ignore[arg-type]
    return _rdp_epsilon(history, delta)


def _check_target(target_epsilon: float) -> None:
    if isinstance(target_epsilon, bool) or not (
        isinstance(target_epsilon, int | float)
        and math.isfinite(target_epsilon)
        and target_epsilon > 0
    ):
        raise AccountingError(f"target_epsilon={target_epsilon}: must be a finite number > 0")


def _fixed_spend(
    target_epsilon: float, delta: float, accountant: str, fixed: Sequence[Mechanism]
) -> list[Mechanism]:
    fixed = _check_mechanisms(fixed)
    already = epsilon(fixed, delta, accountant) if fixed else 0.0
    if already >= target_epsilon:
        raise AccountingError(
            f"target epsilon {target_epsilon:g} is unreachable: the fixed releases alone "
            f"spend {already:.3f}; raise the target or release less"
        )
    return fixed


def _smallest(
    eps_at: Callable[[float], float], target: float, start: float, limit: float, rtol: float,
    unreachable: str,
) -> float:
    """Smallest x in (0, limit] with eps_at(x) <= target, for eps_at decreasing in x.

    Doubling then bisection; returns the upper end of the final bracket, so the answer
    always meets the target and is within ``rtol`` (relative) of the true minimum.
    """
    low, high = 0.0, start
    while eps_at(high) > target:
        low, high = high, high * 2
        if high > limit:
            raise AccountingError(unreachable)
    while high - low > rtol * high:
        mid = (low + high) / 2
        if eps_at(mid) > target:
            low = mid
        else:
            high = mid
    return high


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    fixed: Sequence[Mechanism] = (),
) -> float:
    """Smallest noise multiplier keeping ``fixed`` + this release within ``target_epsilon``.

    ``fixed`` are releases composed with this one whose parameters are not calibrated here:
    the metric releases a run makes beside its DP-SGD steps (``rounds`` x one
    :class:`Release` from :mod:`privacy.dp.metrics`), or spend already made. The returned
    value always satisfies the target and is within :data:`CALIBRATION_RTOL` of the minimum.
    """
    _check_accountant(accountant)
    _check_delta(delta)
    _check_target(target_epsilon)
    Release(1.0, sample_rate, steps)  # validates sample_rate and steps with clear messages
    fixed = _fixed_spend(target_epsilon, delta, accountant, fixed)
    start, rtol = 1.0, CALIBRATION_RTOL
    if accountant == "prv":
        # PRV is tighter than RDP, so the RDP answer brackets it from above; PRV itself is
        # only accurate to ~0.01 in epsilon, so a finer sigma search would be noise.
        start = calibrate_noise(target_epsilon, delta, sample_rate, steps, "rdp", fixed)
        rtol = 1e-3
    return _smallest(
        lambda sigma: epsilon([*fixed, Release(sigma, sample_rate, steps)], delta, accountant),
        target_epsilon,
        start,
        MAX_NOISE_MULTIPLIER,
        rtol,
        f"target epsilon {target_epsilon:g} is unreachable with sample_rate={sample_rate:g} "
        f"and {steps} steps (noise multiplier > {MAX_NOISE_MULTIPLIER:g}); raise the target "
        "or train fewer steps",
    )


def calibrate_skellam(
    target_epsilon: float,
    delta: float,
    l2_sensitivity: float,
    l1_sensitivity: float,
    steps: int,
    fixed: Sequence[Mechanism] = (),
) -> float:
    """Smallest per-coordinate Skellam variance keeping ``fixed`` + ``steps`` releases within
    ``target_epsilon`` at ``delta`` (RDP; same safe-side precision as :func:`calibrate_noise`).
    """
    _check_delta(delta)
    _check_target(target_epsilon)
    SkellamRelease(1.0, l2_sensitivity, l1_sensitivity, steps)  # validates the inputs
    fixed = _fixed_spend(target_epsilon, delta, "rdp", fixed)
    start = float(l2_sensitivity) ** 2
    return _smallest(
        lambda v: epsilon(
            [*fixed, SkellamRelease(v, l2_sensitivity, l1_sensitivity, steps)], delta, "rdp"
        ),
        target_epsilon,
        start,
        start * MAX_NOISE_MULTIPLIER**2,
        CALIBRATION_RTOL,
        f"target epsilon {target_epsilon:g} is unreachable over {steps} steps (Skellam std "
        f"> {MAX_NOISE_MULTIPLIER:g} x sensitivity); raise the target or release less",
    )
