"""User-level DP: bound and noise a node's whole update so it composes with secure aggregation.

With secure aggregation the server only ever sees the *sum* of the nodes' updates, so it
can neither clip individual updates nor check what noise each node added. Hence:

1. each node clips its own update to L2 norm ``clip_norm`` (:func:`clip_update`): the sum's
   sensitivity to adding or removing one node is then ``clip_norm``;
2. Gaussian noise with std ``noise_multiplier * clip_norm`` must be on the sum. Either one
   trusted party adds :func:`noise_for_sum`, or — the secure-aggregation case — every
   node adds :func:`noise_share` (std divided by ``sqrt(n)``) before masking, so the n
   shares add up to the full noise and no single party ever holds it.

Flower's ``DifferentialPrivacyClientSideFixedClipping`` clips on the node but adds the noise
on the server to the aggregate of *individual, visible* updates; under secure aggregation the
server has no individual updates and its noise would not be the node's to account for, so we
keep clipping and noising where the data lives.

Accounting (:func:`user_level_epsilon`): each round is one Gaussian release of the sum with
sensitivity ``clip_norm``. Subsampling amplification only holds if the adversary does not
learn who was sampled; a Flower server chooses the nodes itself, so use
``sample_rate=1.0`` unless selection is hidden from it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import numpy as np

from privacy.dp.accounting import AccountingError, Release, calibrate_noise, epsilon

__all__ = [
    "CentralDPError",
    "calibrate_user_level",
    "clip_update",
    "global_norm",
    "noise_for_sum",
    "noise_share",
    "secure_rng",
    "user_level_epsilon",
    "user_level_release",
]


class CentralDPError(ValueError):
    """Bad input to user-level DP (message is one line)."""


def secure_rng() -> np.random.Generator:
    """NumPy PCG64 seeded with 128 bits from the OS CSPRNG, so the noise is unpredictable."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def _check_positive(name: str, value: float, hint: str) -> None:
    if isinstance(value, bool) or not (math.isfinite(value) and value > 0):
        raise CentralDPError(f"{name}={value}: must be a finite number > 0; {hint}")


def global_norm(update: Sequence[np.ndarray]) -> float:
    """L2 norm of all arrays of an update taken together (the user-level sensitivity unit)."""
    return float(math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update)))


def clip_update(
    update: Sequence[np.ndarray], clip_norm: float
) -> tuple[list[np.ndarray], float]:
    """Scale the whole update so its global L2 norm is at most ``clip_norm``.

    Returns ``(clipped, norm_before)``; the norm lets the node report how often it clips
    (without revealing the update itself). Arrays keep their dtype; inputs are not modified.
    """
    _check_positive("clip_norm", clip_norm, "e.g. 1.0")
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


def _gaussian(
    shapes: Sequence[tuple[int, ...]], std: float, rng: np.random.Generator | None
) -> list[np.ndarray]:
    gen = rng if rng is not None else secure_rng()
    if not isinstance(gen, np.random.Generator):
        raise CentralDPError("rng must be a numpy Generator; use central_dp.secure_rng()")
    return [gen.normal(0.0, std, size=tuple(s)).astype(np.float32) for s in shapes]


def noise_for_sum(
    shapes: Sequence[tuple[int, ...]],
    noise_multiplier: float,
    clip_norm: float,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Gaussian noise, std ``noise_multiplier * clip_norm``, to add once to the summed update."""
    _check_positive("noise_multiplier", noise_multiplier, "calibrate it")
    _check_positive("clip_norm", clip_norm, "e.g. 1.0")
    return _gaussian(shapes, noise_multiplier * clip_norm, rng)


def noise_share(
    shapes: Sequence[tuple[int, ...]],
    noise_multiplier: float,
    clip_norm: float,
    num_nodes: int,
    rng: np.random.Generator | None = None,
    min_honest: int | None = None,
) -> list[np.ndarray]:
    """One node's share of the sum's noise: std ``noise_multiplier * clip_norm / sqrt(k)``.

    ``k = min_honest`` (default ``num_nodes``): if only ``k`` nodes can be trusted to add
    their share (others may drop out or collude with the server), the honest shares alone
    still sum to the full noise.
    """
    _check_positive("noise_multiplier", noise_multiplier, "calibrate it")
    _check_positive("clip_norm", clip_norm, "e.g. 1.0")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise CentralDPError(f"num_nodes={num_nodes!r}: must be an integer >= 1")
    k = num_nodes if min_honest is None else min_honest
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_nodes:
        raise CentralDPError(f"min_honest={min_honest!r}: must be an integer in [1, num_nodes]")
    return _gaussian(shapes, noise_multiplier * clip_norm / math.sqrt(k), rng)


def user_level_release(noise_multiplier: float, sample_rate: float, rounds: int) -> Release:
    """The ledger entry for ``rounds`` noised sums (kind "user-level")."""
    try:
        return Release(float(noise_multiplier), float(sample_rate), rounds)
    except AccountingError as exc:
        raise CentralDPError(str(exc)) from exc


def user_level_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon of a node's whole contribution after ``rounds`` noised sums."""
    release = user_level_release(noise_multiplier, sample_rate, rounds)
    try:
        return epsilon([release], delta, accountant)
    except AccountingError as exc:
        raise CentralDPError(str(exc)) from exc


def calibrate_user_level(
    target_epsilon: float,
    delta: float,
    rounds: int,
    sample_rate: float = 1.0,
    accountant: str = "rdp",
) -> float:
    """Smallest noise multiplier giving user-level ``target_epsilon`` after ``rounds``."""
    try:
        return calibrate_noise(target_epsilon, delta, sample_rate, rounds, accountant)
    except AccountingError as exc:
        raise CentralDPError(str(exc)) from exc
