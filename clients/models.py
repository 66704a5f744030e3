"""The models fedguard trains: an MLP for tabular / flattened data and a small CNN for images.

Both use only layers Opacus supports for per-sample gradients (Linear, Conv2d, GroupNorm), so
turning DP on never changes the architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from clients.data import DatasetSpec

MODELS = ("mlp", "cnn")


class MLP(nn.Module):
    """Two hidden layers; enough for digits (~0.95) and breast cancer."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Two conv layers with GroupNorm (BatchNorm would break per-sample DP)."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1),
            nn.GroupNorm(4, 16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.GroupNorm(4, 32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * (h // 2) * (w // 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], *self.image_shape)
        return self.head(self.features(x).flatten(1))


class ModelError(ValueError):
    """The run asks for a model that does not fit its data."""


def build_model(name: str, spec: DatasetSpec, seed: int | None = None) -> nn.Module:
    """Create the run's model; the same seed gives the same initial weights everywhere."""
    if seed is not None:
        torch.manual_seed(seed)
    if name == "mlp":
        return MLP(spec.num_features, spec.num_classes)
    if name == "cnn":
        if spec.image_shape is None:
            raise ModelError(
                f"model='cnn' needs image data, but dataset {spec.name!r} is tabular; "
                "use model='mlp'"
            )
        return SmallCNN(spec.image_shape, spec.num_classes)
    raise ModelError(f"model={name!r} is unknown; use one of {', '.join(MODELS)}")
