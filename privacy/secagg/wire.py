"""Split protocol payloads into what a transport's records can carry, and join them back.

Flower carries scalars in a ConfigRecord (int64, float, str, bytes, bool and lists of those)
and arrays in an ArrayRecord. Node ids are unsigned 64-bit, so ints outside int64 travel as
decimal strings, with their keys listed under `BIG_INTS_KEY`. No Flower import: each side wraps
the two dicts in its records in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from privacy.secagg.errors import SecAggProtocolError

BIG_INTS_KEY = "__u64__"
_I64 = (-(2**63), 2**63 - 1)


def split_payload(payload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """payload -> (scalars for a config record, arrays for an array record)."""
    scalars: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    big: list[str] = []
    for key, value in payload.items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        elif isinstance(value, int) and not isinstance(value, bool) and not (
            _I64[0] <= value <= _I64[1]
        ):
            scalars[key] = str(value)
            big.append(key)
        else:
            scalars[key] = value
    if big:
        scalars[BIG_INTS_KEY] = big
    return scalars, arrays


def join_payload(
    scalars: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Inverse of `split_payload`; malformed input raises SecAggProtocolError."""
    out = dict(scalars)
    big = out.pop(BIG_INTS_KEY, [])
    if not isinstance(big, list):
        raise SecAggProtocolError(f"{BIG_INTS_KEY} must be a list of keys")
    for key in big:
        raw = out.get(key)
        if not isinstance(raw, str) or not raw.isdigit() or len(raw) > 20:
            raise SecAggProtocolError(f"field {key!r}: expected a 64-bit integer in decimal")
        out[key] = int(raw)
    for key, value in (arrays or {}).items():
        if key in out:
            raise SecAggProtocolError(f"field {key!r} appears as both scalar and array")
        out[key] = value
    return out


def flatten_state(state: Mapping[str, np.ndarray]) -> np.ndarray:
    """Model tensors -> one float64 vector (in the mapping's key order)."""
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in state.values()])


def unflatten_state(
    vector: np.ndarray, like: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Inverse of `flatten_state`, restoring each tensor's shape and dtype."""
    out: dict[str, np.ndarray] = {}
    pos = 0
    for key, ref in like.items():
        ref = np.asarray(ref)
        n = int(ref.size)
        out[key] = vector[pos : pos + n].reshape(ref.shape).astype(ref.dtype)
        pos += n
    if pos != vector.size:
        raise SecAggProtocolError(f"vector has {vector.size} values, the model {pos}")
    return out
