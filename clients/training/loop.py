"""Plain PyTorch local training over a task's model, loss and optimiser (no Flower)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clients.task.batches import model_dtype, to_model


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
    dtype = model_dtype(model)
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch
                continue
            xb, yb = to_model(xb, device, dtype), to_model(yb, device, dtype)
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(yb)
            seen += len(yb)
            steps += 1
    return TrainResult(loss_sum / max(seen, 1), time.perf_counter() - start, steps)
