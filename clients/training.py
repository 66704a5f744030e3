"""Plain PyTorch training and evaluation loops (no Flower), shared by nodes and server."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.data import Split


@dataclass(frozen=True)
class TrainResult:
    loss: float
    accuracy: float
    num_examples: int
    seconds: float


def make_loader(data: Split, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader over in-memory tensors; seeded so a node's run is reproducible."""
    ds = TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Plain SGD with momentum: works with and without DP-SGD."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    criterion: nn.Module | None = None,
) -> TrainResult:
    """Train for `epochs`; returns the last epoch's mean loss and accuracy."""
    criterion = criterion or nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    loss_sum, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch
                continue
            optimizer.zero_grad()
            out = model(xb)
            loss = criterion(out, yb)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
    seconds = time.perf_counter() - start
    n = max(seen, 1)
    return TrainResult(loss_sum / n, correct / n, len(loader.dataset), seconds)


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a split."""
    model.eval()
    if len(data) == 0:
        return float("nan"), float("nan")
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    loss_sum, correct = 0.0, 0
    crit = nn.CrossEntropyLoss(reduction="sum")
    for i in range(0, len(y), batch_size):
        out = model(x[i : i + batch_size])
        loss_sum += float(crit(out, y[i : i + batch_size]))
        correct += int((out.argmax(1) == y[i : i + batch_size]).sum())
    return loss_sum / len(y), correct / len(y)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise ValueError(f"model has {len(keys)} tensors, update has {len(weights)}")
    model.load_state_dict(
        {k: torch.from_numpy(np.asarray(w)) for k, w in zip(keys, weights, strict=True)},
        strict=True,
    )
