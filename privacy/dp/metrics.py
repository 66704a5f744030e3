"""Noisy metric sums: how a node reports loss, accuracy and its example count under DP.

Under DP nothing data-dependent may leave a node in clear: not its loss or accuracy, not its
exact number of examples. A node releases instead a short vector of per-example *sums*
(example count, loss sum with each loss clipped to ``[0, loss_bound]``, and one sum per metric
whose per-example value lies in ``[0, 1]``, e.g. 1 for a correct prediction), each with
Gaussian noise; the server divides noisy sums, or adds them over nodes first.

Sensitivity (record level, add/remove one example): the count moves by 1, the clipped loss
sum by at most ``loss_bound``, each metric sum by at most 1. Dividing the loss sum by
``loss_bound`` puts every coordinate at sensitivity <= 1, so the normalised vector of ``k``
sums has L2 sensitivity ``sqrt(k)``. Noise of std ``z * sqrt(k)`` on each normalised
coordinate (``z * sqrt(k) * loss_bound`` on the raw loss sum) is the Gaussian mechanism with
noise multiplier ``z``: one :class:`~privacy.dp.accounting.Release` ``(z, 1.0, 1)``, which the
node's ledger records as kind "metrics" and DP-SGD calibration composes with its own steps
(``calibrate_noise(..., fixed=[metric release] * rounds)``).

The noise is continuous (float64, from a secret-seeded generator), like Opacus' DP-SGD noise;
see docs/threat-model.md for what that means.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from privacy.dp.accounting import AccountingError, Release
from privacy.dp.user_level import secure_rng

__all__ = ["COUNT", "LOSS", "MetricsError", "MetricsSpec", "NoisyMetrics", "noise_sums",
           "release_metrics"]

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
COUNT, LOSS = "num-examples", "loss-sum"


class MetricsError(ValueError):
    """Bad input to a metric release (message is one line)."""


@dataclass(frozen=True)
class MetricsSpec:
    """What a node releases each time: the sums, their bounds and the noise multiplier.

    Fixed per run (the server sends it), so the release's cost is data-independent.
    """

    noise_multiplier: float
    loss_bound: float
    metrics: tuple[str, ...] = ("correct",)

    def __post_init__(self) -> None:
        for name, value in (("noise_multiplier", self.noise_multiplier),
                            ("loss_bound", self.loss_bound)):
            if isinstance(value, bool) or not (
                isinstance(value, int | float) and math.isfinite(value) and value > 0
            ):
                raise MetricsError(f"metrics {name}={value}: must be a finite number > 0")
        names = tuple(self.metrics)
        if len(set(names)) != len(names) or any(not _NAME.match(str(n)) for n in names):
            raise MetricsError(
                f"metrics names {names!r}: must be distinct lower-case names like 'correct'"
            )
        object.__setattr__(self, "metrics", names)

    @property
    def keys(self) -> tuple[str, ...]:
        """Names of the released sums, in order."""
        return (COUNT, LOSS, *(f"{m}-sum" for m in self.metrics))

    @property
    def noise_std(self) -> dict[str, float]:
        """Std of the noise on each raw sum (see the module docstring)."""
        base = self.noise_multiplier * math.sqrt(len(self.keys))
        return {k: base * (self.loss_bound if k == LOSS else 1.0) for k in self.keys}

    def release(self) -> Release:
        """The ledger's record of one metric release (a full-batch Gaussian mechanism)."""
        try:
            return Release(float(self.noise_multiplier), 1.0, 1)
        except AccountingError as exc:
            raise MetricsError(str(exc)) from exc


@dataclass(frozen=True)
class NoisyMetrics:
    """The noisy sums to send, and the release to settle in the ledger before sending."""

    sums: dict[str, float]
    release: Release


def _per_example(name: str, values: np.ndarray, n: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size != n:
        raise MetricsError(f"{name} has {v.size} values for {n} examples: one per example")
    if not np.all(np.isfinite(v)):
        raise MetricsError(f"{name} contains NaN or inf: fix the evaluation first")
    return v


def release_metrics(
    losses: np.ndarray,
    values: Mapping[str, np.ndarray],
    spec: MetricsSpec,
    rng: np.random.Generator | None = None,
) -> NoisyMetrics:
    """Clip per-example ``losses`` and metric ``values`` to their bounds, sum, add noise.

    ``values`` maps each name of ``spec.metrics`` to per-example numbers; they are clipped to
    [0, 1] (losses to [0, loss_bound]), so the sensitivity argument holds for any input.
    """
    loss = np.asarray(losses, dtype=np.float64).reshape(-1)
    n = loss.size
    loss = _per_example("losses", loss, n)
    if set(values) != set(spec.metrics):
        raise MetricsError(
            f"metric values for {sorted(values)} but the spec releases {list(spec.metrics)}"
        )
    exact = {COUNT: float(n), LOSS: float(np.clip(loss, 0.0, spec.loss_bound).sum())}
    for name in spec.metrics:
        v = _per_example(f"metric {name!r}", values[name], n)
        exact[f"{name}-sum"] = float(np.clip(v, 0.0, 1.0).sum())
    return noise_sums(exact, spec, rng)


def noise_sums(exact: Mapping[str, float], spec: MetricsSpec,
               rng: np.random.Generator | None = None) -> NoisyMetrics:
    """Add the release's noise to sums the caller already bounded (each loss clipped to
    ``[0, loss_bound]``, each metric value to ``[0, 1]``, one count per example)."""
    if set(exact) != set(spec.keys):
        raise MetricsError(f"sums for {sorted(exact)} but the spec releases {list(spec.keys)}")
    if not all(math.isfinite(float(v)) for v in exact.values()):
        raise MetricsError("a metric sum is NaN or inf: fix the evaluation first")
    gen = rng if rng is not None else secure_rng()
    std = spec.noise_std
    noisy = {k: float(exact[k]) + float(gen.normal(0.0, std[k])) for k in spec.keys}
    return NoisyMetrics(noisy, spec.release())
