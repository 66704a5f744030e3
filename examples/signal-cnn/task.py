"""signal-cnn: a task with a model its user wrote, on signals generated on the fly.

Each example is a noisy sinusoid of one second, sampled `signal-length` times; its class is its
frequency band (4 classes). Every node records with its own sensor, whose frequency response is
shifted by up to `signal-shift` cycles (a per-node distribution shift), so no single node sees
the whole picture. The server holds a reference set recorded without shift.

The model is a small 1-D CNN with GroupNorm (BatchNorm would mix examples in a batch, which
DP-SGD cannot allow). fedguard does the rest: nothing below mentions DP, masking or the ledger.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from clients.task import DataError, NodeData, Task, TaskContext, TensorSchema

HERE = Path(__file__).resolve().parent
CYCLES = (3.0, 6.0, 9.0, 12.0)  # centre frequency of each class, cycles per signal


class SignalCNN(nn.Module):
    """Two conv blocks (Conv1d, GroupNorm, ReLU, pooling), global average pooling, a linear
    head: a band-pass filter bank the classifier learns to read."""

    def __init__(self, width: int = 8, classes: int = len(CYCLES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, kernel_size=9, padding=4),
            nn.GroupNorm(2, width),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, 2 * width, kernel_size=5, padding=2),
            nn.GroupNorm(4, 2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def signals(n: int, length: int, noise: float, shift: float, seed: int) -> TensorDataset:
    """`n` labelled signals: frequency = the class's centre (+ `shift`, +-0.75 cycles of
    jitter), random phase and amplitude, Gaussian noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CYCLES), n)
    cycles = np.asarray(CYCLES)[y] + shift + rng.uniform(-0.75, 0.75, n)
    t = np.arange(length) / length
    phase = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0.5, 1.5, n)
    x = amp[:, None] * np.sin(2 * np.pi * cycles[:, None] * t + phase[:, None])
    x += rng.normal(0.0, noise, x.shape)
    return TensorDataset(torch.from_numpy(x[:, None, :].astype(np.float32)),
                         torch.from_numpy(y.astype(np.int64)))


def _settings(ctx: TaskContext) -> tuple[int, int, float, float]:
    return (ctx.get("signal-length", 64), ctx.get("signal-examples", 160),
            ctx.get("signal-noise", 0.5), ctx.get("signal-shift", 0.6))


def model(ctx: TaskContext) -> nn.Module:
    return SignalCNN(width=ctx.get("signal-width", 8))


def load_data(ctx: TaskContext) -> NodeData:
    """A virtual node's recordings; its sensor shift depends on which node it is."""
    length, n, noise, shift = _settings(ctx)
    pid, parts = ctx.partition_id, ctx.num_partitions
    if pid is None or not parts:
        raise DataError("signal-cnn generates its data in simulations only; a real node "
                        "loads its own recordings here (ctx.data_path)")
    node_shift = shift * (2 * pid / max(parts - 1, 1) - 1)  # from -shift to +shift
    seed = ctx.seed * 1000 + pid
    n_val = max(1, n // 5)
    return NodeData(train=signals(n, length, noise, node_shift, seed),
                    val=signals(n_val, length, noise, node_shift, seed + 500))


def server_data(ctx: TaskContext) -> TensorDataset:
    """The reference recordings the server evaluates on (no sensor shift)."""
    length, n, noise, _ = _settings(ctx)
    return signals(2 * n, length, noise, 0.0, ctx.seed * 1000 + 999)


def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example values in [0, 1]: right class, and right class among the top two."""
    top2 = outputs.topk(2, dim=1).indices
    return {"accuracy": (outputs.argmax(1) == targets).float(),
            "top2-accuracy": (top2 == targets[:, None]).any(1).float()}


def schema(ctx: TaskContext) -> TensorSchema:
    return TensorSchema((1, ctx.get("signal-length", 64)), num_classes=len(CYCLES))


task = Task(
    model=model,
    load_data=load_data,
    metrics=metrics,
    server_data=server_data,
    schema=schema,
    primary_metric="accuracy",
    demo_manifest=HERE / "manifest.toml",
    name="signal-cnn",
)
