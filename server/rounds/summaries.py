"""Add up what nodes report about a round: federated evaluation and training loss sums."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from clients.task import wire
from clients.task.evaluation import Sums


def clear_summary(replies: Iterable[Mapping[str, Any]], prefix: str) -> Sums | None:
    """Sum `<prefix>examples`, `<prefix>loss`, `<prefix><metric>` over clear replies. Under DP
    the sums are noisy, so a node's may be negative: only the total must be positive."""
    total, seen = Sums(), False
    for metrics in replies:
        n = metrics.get(f"{prefix}examples")
        if not _finite(n):
            continue
        loss = metrics.get(f"{prefix}loss")
        if not _finite(loss):
            continue
        names = wire.summary_names(metrics, prefix)
        values = {k: metrics[f"{prefix}{k}"] for k in names}
        if not all(_finite(v) for v in values.values()):
            continue
        total.add(Sums(float(n), float(loss), {k: float(v) for k, v in values.items()}))
        seen = True
    return total if seen and total.examples >= 0.5 else None


def train_summary(replies: Iterable[Mapping[str, Any]]) -> Sums | None:
    """Example-weighted training loss from clear replies (`loss` is a node's mean)."""
    total, seen = Sums(), False
    for m in replies:
        n, loss = m.get("num-examples"), m.get("loss")
        if _finite(n) and _finite(loss) and n > 0:
            total.add(Sums(float(n), float(loss) * float(n)))
            seen = True
    return total if seen else None


def _finite(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
