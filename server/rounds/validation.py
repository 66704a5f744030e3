"""Check a node's update before it can touch the global model.

A federation spans organisations that do not fully trust each other, so every train reply is
checked for structure (keys, shapes, dtypes), numbers (finite, update norm within a bound) and
plausibility (`num-examples` positive and not above what the node's manifest declares). A reply
that fails is dropped with one line saying why; the round goes on without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UpdateRules:
    """What a valid update looks like for this run."""

    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, np.dtype]
    max_update_norm: float = 0.0  # L2 norm of (update - global); 0 = no bound
    max_examples: float = 1e9  # absolute cap when no manifest states a record count


class InvalidUpdate(ValueError):
    """The reason a reply was rejected (one line)."""


def rules_for(state: Mapping[str, np.ndarray], max_update_norm: float = 0.0) -> UpdateRules:
    return UpdateRules(
        shapes={k: tuple(np.shape(v)) for k, v in state.items()},
        dtypes={k: np.asarray(v).dtype for k, v in state.items()},
        max_update_norm=max_update_norm,
    )


def check_update(
    rules: UpdateRules,
    global_state: Mapping[str, np.ndarray],
    update: Mapping[str, np.ndarray],
    num_examples: object,
    declared_records: int | None = None,
) -> float:
    """Raise InvalidUpdate unless the update is usable; return its L2 distance to the model."""
    missing = sorted(set(rules.shapes) - set(update))
    extra = sorted(set(update) - set(rules.shapes))
    if missing or extra:
        raise InvalidUpdate(f"wrong tensors: missing {missing[:3]}, unexpected {extra[:3]}")
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | float):
        raise InvalidUpdate(f"num-examples={num_examples!r} is not a number")
    if not math.isfinite(num_examples) or num_examples <= 0:
        raise InvalidUpdate(f"num-examples={num_examples} must be a positive count")
    cap = declared_records if declared_records else rules.max_examples
    if num_examples > cap:
        source = "its manifest declares" if declared_records else "the plausible maximum is"
        raise InvalidUpdate(f"num-examples={num_examples:g} but {source} {cap:g} records")
    sq = 0.0
    for key, shape in rules.shapes.items():
        arr = np.asarray(update[key])
        if tuple(arr.shape) != shape:
            raise InvalidUpdate(f"tensor {key!r} has shape {tuple(arr.shape)}, expected {shape}")
        if arr.dtype != rules.dtypes[key]:
            raise InvalidUpdate(
                f"tensor {key!r} has dtype {arr.dtype}, expected {rules.dtypes[key]}"
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidUpdate(f"tensor {key!r} contains NaN or infinite values")
        diff = arr.astype(np.float64) - np.asarray(global_state[key], dtype=np.float64)
        sq += float(np.dot(diff.ravel(), diff.ravel()))
    norm = math.sqrt(sq)
    if rules.max_update_norm and norm > rules.max_update_norm:
        raise InvalidUpdate(
            f"update norm {norm:.3g} exceeds the bound {rules.max_update_norm:g} "
            "(run config update-norm-bound)"
        )
    return norm
