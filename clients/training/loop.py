"""Plain PyTorch training and evaluation over a task's model, loss and metrics (no Flower).

Evaluation returns *sums* (example count, loss sum, per-metric sums): sums are what secure
aggregation adds up and what DP noise is calibrated for; means are taken at the very end.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

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


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean loss of the last epoch
    seconds: float
    steps: int


def make_loader(data: Dataset[Any], batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader whose shuffling is seeded, so a node's run is reproducible."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen)


def pick_device(setting: str = "auto") -> torch.device:
    """The node's GPU when it has one (or `cuda` is asked for), else the CPU."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    epochs: int,
    device: torch.device | None = None,
) -> TrainResult:
    """Train for `epochs`; returns the last epoch's mean loss."""
    device = device or torch.device("cpu")
    model.train()
    start = time.perf_counter()
    loss_sum, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch
                continue
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(yb)
            seen += len(yb)
            steps += 1
    return TrainResult(loss_sum / max(seen, 1), time.perf_counter() - start, steps)


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
    for xb, yb in DataLoader(data, batch_size=batch_size):
        xb, yb = xb.to(device), yb.to(device)
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
