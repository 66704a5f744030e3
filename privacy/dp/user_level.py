"""User-level (node-level) distributed DP: discrete Skellam noise shares in the integer ring.

The privacy unit is a node's whole contribution to a round. Secure aggregation shows the
server only the sum of the nodes' vectors, so the noise must be on the sum and no party may
hold all of it. Each node therefore

1. clips its whole update to L2 norm ``clip`` (:func:`clip_update`),
2. scales it by ``scale`` and rounds it stochastically to integers, *conditionally*: the
   rounding is redrawn until the integer vector's L2 norm is at most ``l2_sensitivity``
   (Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
   Learning with Secure Aggregation", ICML 2021, arXiv:2102.06387, Theorem 1: a stochastic
   rounding of a vector of norm ``c`` in ``d`` dimensions has squared norm at most
   ``c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)`` with probability >= 1 - beta, and
   always norm <= ``c + sqrt(d)``); so one node moves the integer sum by at most
   ``l2_sensitivity`` in L2 and ``l1_sensitivity = l2 * min(sqrt(d), l2)`` in L1 (for
   integer vectors L1 <= L2^2), whatever the rounding drew,
3. adds a Skellam share, Poisson(v/2) - Poisson(v/2) per coordinate with ``v =
   V / m_min``, and hands the integer vector to secure aggregation, which sums it in the ring
   Z_{2^b} (:func:`to_ring`).

Skellam noise is closed under summation: any ``k`` shares sum to Skellam noise of variance
``k V / m_min`` exactly, so every round that sums at least ``m_min`` honest shares carries at
least the calibrated variance ``V`` (distributed DP as in Kairouz et al. 2021). A round with
fewer must abort (secure aggregation aborts below the minimum the glue sets), and the epsilon
to record is the one of the shares actually summed (:func:`achieved_epsilon`), not the
target. The RDP of the Skellam mechanism is in :mod:`privacy.dp.accounting`.

Wrap-around: reducing the noisy sum modulo ``2^b`` is post-processing, so it cannot weaken
the guarantee, only the result. :func:`ring_overflow_probability` bounds the chance that any
coordinate of the sum leaves the centred range (data bounded deterministically, Skellam noise
by a Chernoff bound, union over coordinates); calibration picks the largest scale that keeps
it below the requested probability.

The node's ledger counts record-level loss, and a user-level round costs there *more* than
its user-level epsilon: the user-level guarantee is for adding or removing a whole node
(sensitivity: one clipped vector), but adding or removing one record leaves the node in the sum
and can move its clipped vector anywhere in the clip ball, a shift of up to twice the bound.
So the node records a user-level round (kind "user-level") at doubled sensitivities
(:func:`record_level_release`), which does bound its record-level loss and composes with its
DP-SGD and metric releases in one spend. Subsampling amplification is not used: a Flower
server chooses the nodes itself, so who took part is not hidden from it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from privacy.dp.accounting import (
    AccountingError,
    Mechanism,
    SkellamRelease,
    calibrate_skellam,
    epsilon,
)

if TYPE_CHECKING:
    from privacy.dp.ledger import BudgetDecision, PrivacyLedger

__all__ = [
    "DEFAULT_BETA",
    "CentralDPError",
    "UserLevelPlan",
    "achieved_epsilon",
    "calibrate_user_level",
    "clip_update",
    "decode_sum",
    "encode_user_update",
    "global_norm",
    "record_level_release",
    "reserve_user_level",
    "ring_overflow_probability",
    "secure_rng",
    "to_ring",
    "user_level_config_problem",
    "user_level_release",
]

#: Conditional-rounding parameter (as in Google's reference code): each rounding attempt is
#: rejected with probability <= beta, so encoding takes at most 1/(1 - beta) ~ 2.5 draws on
#: average.
DEFAULT_BETA = math.exp(-0.5)
DEFAULT_OVERFLOW = 1e-9
MIN_RING_BITS, MAX_RING_BITS = 8, 64  # secure aggregation computes in numpy uint64
#: Largest share variance: each share draws two Poisson(v/2) variables, and numpy's sampler
#: (float64 inside) drifts from the Poisson law at huge means (at 1e17 its std is 28% off,
#: and float spacing there would leave the low bits of the noise predictable). At 2^30 the
#: spacing is below 1e-6. The cap costs little: it bounds the scale, and the rounding
#: inflation sqrt(d)/2 stays small next to the scaled clip norm.
MAX_SHARE_VARIANCE = 2.0**31
_MAX_ROUNDING_DRAWS = 1000
_CONFIG_PREFIX = "user-dp-"


class CentralDPError(ValueError):
    """Bad input to user-level DP, or a configuration that cannot give it (one line)."""


def secure_rng() -> np.random.Generator:
    """NumPy PCG64 seeded with 128 bits from the OS CSPRNG, so the noise is unpredictable."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def _positive(name: str, value: float, hint: str) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value > 0
    ):
        raise CentralDPError(f"{name}={value}: must be a finite number > 0; {hint}")


def _integer(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise CentralDPError(f"{name}={value!r}: must be an integer {span}")


def global_norm(update: Sequence[np.ndarray]) -> float:
    """L2 norm of all arrays of an update taken together (the user-level sensitivity unit)."""
    return float(math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update)))


def clip_update(
    update: Sequence[np.ndarray], clip_norm: float
) -> tuple[list[np.ndarray], float]:
    """Scale the whole update so its global L2 norm is at most ``clip_norm``.

    Returns ``(clipped, norm_before)``. The norm is data-dependent: keep it on the node.
    Arrays keep their dtype; inputs are not modified.
    """
    _positive("clip_norm", clip_norm, "e.g. 1.0")
    arrays = [np.asarray(a) for a in update]
    if not arrays:
        raise CentralDPError("update is empty: pass the model's parameter arrays")
    for i, a in enumerate(arrays):
        if not np.issubdtype(a.dtype, np.floating):
            raise CentralDPError(
                f"update[{i}] has dtype {a.dtype}: only float arrays can be clipped"
            )
        if not np.all(np.isfinite(a)):
            raise CentralDPError(f"update[{i}] contains NaN or inf: fix training before release")
    norm = global_norm(arrays)
    # Slightly under 1 so float rounding can never push the clipped norm above clip_norm.
    scale = min(1.0, clip_norm / norm * (1 - 1e-6)) if norm > 0 else 1.0
    return [(a * scale).astype(a.dtype, copy=False) for a in arrays], norm


def _rounded_l2(norm: float, dim: int, beta: float) -> float:
    """Norm bound after conditional stochastic rounding (Kairouz et al. 2021, Theorem 1)."""
    always = norm + math.sqrt(dim)
    if beta == 0:
        return always
    likely = norm * norm + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(dim) / 2)
    return min(always, math.sqrt(likely))


def _log_skellam_tail(t: float, variance: float) -> float:
    """log P(|Z| >= t) bound for Z ~ Skellam of ``variance`` (Chernoff, both tails).

    E exp(lZ) = exp(V (cosh l - 1)); the best l (sinh l = t/V) gives
    P(Z >= t) <= exp(sqrt(V^2 + t^2) - V - t asinh(t/V)).
    """
    if t <= 0:
        return 0.0
    return math.log(2) + math.hypot(variance, t) - variance - t * math.asinh(t / variance)


@dataclass(frozen=True)
class UserLevelPlan:
    """Everything nodes need to encode a round and the server needs to decode and account it.

    Units: ``clip`` is in the model's (float) units; ``share_variance`` and the sensitivities
    are in integer units after multiplying by ``scale``. ``min_contributors`` is m_min, the
    fewest honest shares a round may sum; ``max_contributors`` the most shares a round may sum
    (it sizes the ring); ``ring_bits`` is b of Z_{2^b}.
    """

    clip: float
    scale: float
    dim: int
    share_variance: float
    min_contributors: int
    max_contributors: int
    ring_bits: int
    beta: float = DEFAULT_BETA

    def __post_init__(self) -> None:
        _positive("clip", self.clip, "e.g. 1.0")
        _positive("scale", self.scale, "calibrate it with calibrate_user_level")
        _integer("dim", self.dim, 1)
        _positive("share_variance", self.share_variance, "calibrate it")
        if self.share_variance > MAX_SHARE_VARIANCE:
            raise CentralDPError(
                f"share_variance={self.share_variance:g} > {MAX_SHARE_VARIANCE:g}: Poisson "
                "sampling is not exact that high; use a smaller scale"
            )
        _integer("min_contributors", self.min_contributors, 1)
        _integer("max_contributors", self.max_contributors, self.min_contributors)
        _integer("ring_bits", self.ring_bits, MIN_RING_BITS, MAX_RING_BITS)
        if not (isinstance(self.beta, float | int) and 0 <= self.beta < 1):
            raise CentralDPError(f"beta={self.beta}: must be in [0, 1); e.g. {DEFAULT_BETA:.4f}")

    @property
    def l2_sensitivity(self) -> float:
        """Largest L2 norm of one node's integer vector (conditional rounding enforces it)."""
        return _rounded_l2(self.scale * self.clip, self.dim, self.beta)

    @property
    def l1_sensitivity(self) -> float:
        l2 = self.l2_sensitivity
        return l2 * min(math.sqrt(self.dim), l2)

    @property
    def modulus(self) -> int:
        return 1 << self.ring_bits

    def to_config(self) -> dict[str, float | int]:
        """Flat ``user-dp-*`` keys for a Flower ConfigRecord (what the server sends nodes)."""
        return {
            f"{_CONFIG_PREFIX}{k.replace('_', '-')}": v for k, v in self.__dict__.items()
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UserLevelPlan:
        """Read the keys :meth:`to_config` wrote; a missing or bad key is a one-line error."""
        ints = {"dim", "min_contributors", "max_contributors", "ring_bits"}
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            key = f"{_CONFIG_PREFIX}{name.replace('_', '-')}"
            if key not in config:
                raise CentralDPError(f"round config lacks {key}: the server must send the plan")
            raw = config[key]
            try:
                values[name] = int(raw) if name in ints else float(raw)
            except (TypeError, ValueError):
                raise CentralDPError(f"round config {key}={raw!r}: must be a number") from None
        return cls(**values)


def user_level_release(plan: UserLevelPlan, shares: int | None = None) -> SkellamRelease:
    """User-level (add/remove one node): one round that sums ``shares`` honest shares.

    What the server accounts (default: m_min, the worst round it may accept). The node's
    ledger records :func:`record_level_release` instead.
    """
    k = plan.min_contributors if shares is None else shares
    _integer("shares", k, 1)
    if k < plan.min_contributors:
        raise CentralDPError(
            f"only {k} noise shares were summed, fewer than min_contributors="
            f"{plan.min_contributors}: the round must abort, not be released"
        )
    return SkellamRelease(
        k * plan.share_variance, plan.l2_sensitivity, plan.l1_sensitivity, 1
    )


def record_level_release(plan: UserLevelPlan) -> SkellamRelease:
    """A user-level round as the node's ledger records it: record-level, at m_min shares.

    One record added or removed changes the node's clipped integer vector from ``v`` to
    ``v'``, both within ``l2_sensitivity`` (and ``l1_sensitivity``): the sum moves by at most
    twice each bound. The node cannot know how many shares will be summed, but the round
    aborts below m_min, so m_min is its worst case.
    """
    node = user_level_release(plan)
    return SkellamRelease(node.variance, 2 * node.l2_sensitivity, 2 * node.l1_sensitivity, 1)


def achieved_epsilon(
    plan: UserLevelPlan, shares_per_round: Sequence[int], delta: float,
    fixed: Sequence[Mechanism] = (),
) -> float:
    """User-level epsilon at ``delta`` of rounds that summed these many honest shares.

    What the server records after each round (count only shares it cannot remove: summed
    shares minus the nodes assumed to collude with it).
    """
    releases = [user_level_release(plan, k) for k in shares_per_round]
    try:
        return epsilon([*fixed, *releases], delta, "rdp")
    except AccountingError as exc:
        raise CentralDPError(str(exc)) from exc


def ring_overflow_probability(plan: UserLevelPlan) -> float:
    """Upper bound on P(some coordinate of a round's sum wraps around the ring).

    Data: each node's integer coordinate is at most ``min(l2, ceil(scale * clip))`` in
    absolute value, so ``max_contributors`` nodes sum to at most that many times it. Noise:
    ``max_contributors`` shares sum to Skellam of that many share variances; its tail is
    bounded by :func:`_log_skellam_tail`, and a union bound runs over the coordinates.
    """
    n = plan.max_contributors
    per_node = min(plan.l2_sensitivity, math.ceil(plan.scale * plan.clip))
    room = (plan.modulus // 2 - 1) - n * per_node
    if room <= 0:
        return 1.0
    log_p = math.log(plan.dim) + _log_skellam_tail(room, n * plan.share_variance)
    return min(1.0, math.exp(log_p))


def calibrate_user_level(
    target_epsilon: float,
    delta: float,
    rounds: int,
    min_contributors: int,
    *,
    clip: float,
    dim: int,
    max_contributors: int,
    ring_bits: int = 32,
    overflow_probability: float = DEFAULT_OVERFLOW,
    beta: float = DEFAULT_BETA,
) -> UserLevelPlan:
    """The plan reaching user-level ``target_epsilon`` at ``delta`` over ``rounds`` rounds.

    Every round is assumed to sum exactly ``min_contributors`` honest shares (the worst an
    accepted round can do); the total variance ``V`` is the smallest meeting the target, and
    each share gets ``V / min_contributors``. The scale is the largest (least rounding
    inflation) whose ring overflow bound stays below ``overflow_probability``.
    """
    _positive("clip", clip, "e.g. 1.0")
    _integer("dim", dim, 1)
    _integer("rounds", rounds, 1)
    _integer("min_contributors", min_contributors, 1)
    _integer("max_contributors", max_contributors, min_contributors)
    _integer("ring_bits", ring_bits, MIN_RING_BITS, MAX_RING_BITS)
    if not (0 < overflow_probability < 1):
        raise CentralDPError(
            f"overflow_probability={overflow_probability}: must be in (0, 1); e.g. 1e-9"
        )

    def plan_at(scale: float) -> UserLevelPlan | None:
        """The plan at ``scale``, or None if its shares are too large or its sums overflow."""
        probe = UserLevelPlan(clip, scale, dim, 1.0, min_contributors, max_contributors,
                              ring_bits, beta)
        try:
            total = calibrate_skellam(
                target_epsilon, delta, probe.l2_sensitivity, probe.l1_sensitivity, rounds
            )
        except AccountingError as exc:
            raise CentralDPError(f"cannot calibrate user-level noise: {exc}") from exc
        if total / min_contributors > MAX_SHARE_VARIANCE:
            return None
        plan = UserLevelPlan(clip, scale, dim, total / min_contributors, min_contributors,
                             max_contributors, ring_bits, beta)
        return plan if ring_overflow_probability(plan) <= overflow_probability else None

    # Share variance and overflow grow with the scale: search the largest feasible scale on
    # a log scale.
    high = (2.0 ** (ring_bits - 1)) / (max_contributors * clip)
    low = high * 2.0 ** -(ring_bits + 8)  # below one integer step per clip norm
    best = plan_at(low)
    if best is None:
        raise CentralDPError(
            f"ring_bits={ring_bits} cannot hold sums of {max_contributors} contributors of "
            f"dimension {dim} at this noise with overflow probability <= "
            f"{overflow_probability:g}: use more bits (up to {MAX_RING_BITS})"
        )
    lo, hi = math.log2(low), math.log2(high)
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        candidate = plan_at(2.0**mid)
        if candidate is not None:
            lo, best = mid, candidate
        else:
            hi = mid
    return best


def _flatten(update: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(update, np.ndarray):
        return [update]
    return [np.asarray(a) for a in update]


def encode_user_update(
    update: Sequence[np.ndarray] | np.ndarray,
    plan: UserLevelPlan,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Clip, scale, round conditionally and add this node's Skellam share: an int64 vector.

    The result is in signed integers (not reduced); :func:`to_ring` maps it into Z_{2^b}
    for secure aggregation. ``rng`` defaults to :func:`secure_rng`; it must not be derived
    from anything the server knows (e.g. the run's seed).
    """
    gen = rng if rng is not None else secure_rng()
    if not isinstance(gen, np.random.Generator):
        raise CentralDPError("rng must be a numpy Generator; use user_level.secure_rng()")
    arrays = [a.astype(np.float64, copy=False) if np.issubdtype(a.dtype, np.floating) else a
              for a in _flatten(update)]
    clipped, _ = clip_update(arrays, plan.clip)
    x = np.concatenate([a.ravel() for a in clipped]) * plan.scale
    if x.size != plan.dim:
        raise CentralDPError(
            f"update has {x.size} coordinates but the plan is for dim={plan.dim}: "
            "calibrate the plan for this model"
        )
    bound_sq = plan.l2_sensitivity**2 * (1 - 1e-9)  # margin for float summation error
    floor = np.floor(x)
    frac = x - floor
    for _ in range(_MAX_ROUNDING_DRAWS):
        rounded = floor + (gen.random(x.size) < frac)
        if float(np.dot(rounded, rounded)) <= bound_sq:
            break
    else:  # probability <= beta ** 1000
        raise CentralDPError("conditional rounding failed 1000 times: the plan's beta is wrong")
    half = plan.share_variance / 2
    noise = gen.poisson(half, x.size) - gen.poisson(half, x.size)
    return rounded.astype(np.int64) + noise.astype(np.int64)


def to_ring(vector: np.ndarray, ring_bits: int) -> np.ndarray:
    """Signed integers -> their residues in Z_{2^b} as uint64 (two's complement, then mask)."""
    _integer("ring_bits", ring_bits, MIN_RING_BITS, MAX_RING_BITS)
    v = np.asarray(vector)
    if not np.issubdtype(v.dtype, np.integer):
        raise CentralDPError(f"vector has dtype {v.dtype}: encode it with encode_user_update")
    mask = np.uint64((1 << ring_bits) - 1)
    return v.astype(np.int64).view(np.uint64) & mask


def decode_sum(ring_sum: np.ndarray, scale: float, modulus: int) -> np.ndarray:
    """The float sum of the nodes' (noisy, clipped) updates from their sum in Z_modulus.

    Residues of ``modulus/2`` and above stand for negative integers (centred lift); dividing
    by ``scale`` undoes the encoding. Divide by the number of contributors for a mean.
    """
    _positive("scale", scale, "use the plan's scale")
    if isinstance(modulus, bool) or not isinstance(modulus, int) or modulus < 2 or (
        modulus & (modulus - 1)
    ) or modulus > 2**64:
        raise CentralDPError(f"modulus={modulus!r}: must be a power of two up to 2**64")
    v = np.asarray(ring_sum)
    if not np.issubdtype(v.dtype, np.integer):
        raise CentralDPError(f"ring_sum has dtype {v.dtype}: pass the unmasked integer sum")
    u = v.astype(np.uint64) & np.uint64(modulus - 1)
    if modulus == 2**64:
        signed = u.view(np.int64)
    else:
        signed = np.where(u >= modulus // 2, u.astype(np.int64) - modulus, u.astype(np.int64))
    return signed.astype(np.float64) / scale


def user_level_config_problem(
    *, secagg: bool, min_contributors: int, min_survivors: int, assumed_colluding: int
) -> str | None:
    """Why a user-level DP configuration would not give the guarantee it records, or None.

    ``min_survivors`` is the fewest nodes secure aggregation unmasks a sum for (it aborts
    below); ``assumed_colluding`` how many of them may be the server's, whose noise shares it
    could subtract. The server's config check refuses the run with this one line.
    """
    if not secagg:
        return (
            "run config central-dp=true needs secagg=true: each node adds only a share of the "
            "noise, so without secure aggregation the server sees every update nearly bare"
        )
    if isinstance(min_contributors, bool) or not isinstance(min_contributors, int) or (
        min_contributors < 1
    ):
        return f"user-level DP min_contributors={min_contributors!r}: must be an integer >= 1"
    honest = min_survivors - assumed_colluding
    if honest < min_contributors:
        return (
            f"secure aggregation unmasks sums of {min_survivors} nodes, of which "
            f"{assumed_colluding} may collude with the server: {honest} honest noise shares "
            f"< min_contributors={min_contributors}; raise min-nodes to at least "
            f"{min_contributors + assumed_colluding}"
        )
    return None


def reserve_user_level(
    ledger: PrivacyLedger,
    plan: UserLevelPlan,
    *,
    source: str,
    run_id: str,
    round: int,
    num_records: int,
    fingerprint: str,
) -> BudgetDecision:
    """Reserve a node's user-level round in its ledger, before its update leaves the node.

    Settle it with ``ledger.settle(decision.reservations[0], record_level_release(plan))``
    once the vector is encoded, before it is sent; never cancel after sending.
    """
    return ledger.reserve(
        source, run_id, round, [("user-level", record_level_release(plan))],
        num_records=num_records, fingerprint=fingerprint,
    )
