"""Evaluate a task's model: sums of per-example loss and metrics, the same on server and nodes.

Evaluation returns *sums* (example count, loss sum, per-metric sums): sums are what secure
aggregation adds up and what DP noise is calibrated for; means are taken at the very end.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clients.task.batches import model_dtype, to_model
from clients.task.contract import Metrics


@dataclass
class Sums:
    """Per-example values summed over a dataset: what a node may release about it."""

    examples: float = 0.0
    loss: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    def add(self, other: Sums) -> None:
        self.examples += other.examples
        self.loss += other.loss
        for k, v in other.metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v

    def means(self, scale: Mapping[str, float] | None = None) -> dict[str, float]:
        """`{"loss": ..., metric: ...}` per example (NaN without examples), scaled for display."""
        n = self.examples
        out = {"loss": self.loss / n if n > 0 else float("nan")}
        for k, v in self.metrics.items():
            out[k] = (v / n if n > 0 else float("nan")) * (scale or {}).get(k, 1.0)
        return out


def per_example(criterion: nn.Module) -> nn.Module:
    """The same loss without reduction, for per-example sums (a copy; training is untouched)."""
    if hasattr(criterion, "reduction"):
        clone = copy.copy(criterion)
        clone.reduction = "none"
        return clone
    return criterion


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset[Any],
    criterion: nn.Module,
    metrics: Metrics,
    batch_size: int = 512,
    device: torch.device | None = None,
    loss_bound: float | None = None,
) -> Sums:
    """Sums of per-example loss and metrics over `data`. With `loss_bound`, each example's loss
    is clipped to [0, loss_bound] and each metric to [0, 1]: the bounded sums DP releases."""
    device = device or torch.device("cpu")
    model.eval()
    crit = per_example(criterion)
    out = Sums()
    dtype = model_dtype(model)
    for xb, yb in DataLoader(data, batch_size=batch_size):
        xb, yb = to_model(xb, device, dtype), to_model(yb, device, dtype)
        pred = model(xb)
        loss = crit(pred, yb).reshape(len(yb), -1).mean(1) if crit is not criterion else (
            criterion(pred, yb).expand(len(yb)))
        if loss_bound is not None:
            loss = loss.clamp(0.0, loss_bound)
        batch = Sums(float(len(yb)), float(loss.sum()))
        for name, values in metrics(pred, yb).items():
            v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
            if loss_bound is not None:
                v = v.clamp(0.0, 1.0)
            batch.metrics[name] = float(v.sum())
        out.add(batch)
    return out
