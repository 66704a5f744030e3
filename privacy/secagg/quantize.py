"""Fixed-point encoding of float vectors into Z_{2^bits} and back (for the sum only).

Values are clipped to [-c, c] and mapped affinely onto the integers 0..2^q - 1. Stochastic
rounding keeps the encoding unbiased, so quantisation error averages out over nodes.
"""

from __future__ import annotations

import numpy as np

from privacy.secagg.crypto import uniform_floats
from privacy.secagg.errors import SecAggInputError


def _scale(clip_range: float, quant_bits: int) -> float:
    return float((1 << quant_bits) - 1) / (2.0 * clip_range)


def quantize(
    vector: np.ndarray, clip_range: float, quant_bits: int, stochastic: bool
) -> tuple[np.ndarray, int]:
    """Return (uint64 levels, number of clipped entries); rejects NaN/inf input."""
    x = np.asarray(vector, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise SecAggInputError("vector contains NaN or inf; fix the model update before masking")
    clipped = int(np.count_nonzero(np.abs(x) > clip_range))
    y = (np.clip(x, -clip_range, clip_range) + clip_range) * _scale(clip_range, quant_bits)
    y = np.floor(y + uniform_floats(y.size)) if stochastic else np.rint(y)
    top = float((1 << quant_bits) - 1)
    return np.clip(y, 0.0, top).astype(np.uint64), clipped


def dequantize_sum(
    level_sum: np.ndarray, count: int, clip_range: float, quant_bits: int
) -> np.ndarray:
    """Decode the sum of `count` quantised vectors back to float64."""
    return level_sum.astype(np.float64) / _scale(clip_range, quant_bits) - count * clip_range


def quantization_step(clip_range: float, quant_bits: int) -> float:
    """Width of one quantisation level: the per-node, per-entry error bound."""
    return 1.0 / _scale(clip_range, quant_bits)
