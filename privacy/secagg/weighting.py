"""Pack a weighted update for secure summation and unpack the weighted average.

FedAvg needs sum(w_i * u_i) / sum(w_i). Each node masks [w_i * u_i, w_i] with w_i scaled by
a public `max_weight` so both parts stay inside the clip range; the scale cancels in the ratio.
"""

from __future__ import annotations

import numpy as np

from privacy.secagg.errors import SecAggInputError


def pack_weighted(update: np.ndarray, weight: float, max_weight: float) -> np.ndarray:
    """Vector [w * update, w] with w = weight / max_weight in (0, 1]."""
    if not 0 < weight <= max_weight:
        raise SecAggInputError(
            f"weight={weight}: must be in (0, max_weight={max_weight}]; raise max_weight"
        )
    w = weight / max_weight
    flat = np.asarray(update, dtype=np.float64).ravel()
    return np.concatenate([flat * w, [w]])


def unpack_weighted(total: np.ndarray, max_weight: float) -> tuple[np.ndarray, float]:
    """(weighted-average update, total weight in original units) from the secure sum."""
    w_sum = float(total[-1])
    if w_sum <= 0:
        raise SecAggInputError(
            "aggregated weight is not positive (quantisation too coarse?); raise quant_bits"
        )
    return total[:-1] / w_sum, w_sum * max_weight
