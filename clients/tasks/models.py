"""Models of the bundled tasks: an MLP for tabular or flattened data, a linear (softmax
regression) model that learns best under DP-SGD's noise, and a small CNN for images.

Both use only layers Opacus supports for per-sample gradients (Linear, Conv2d, GroupNorm), so
turning DP on never changes the architecture.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Two hidden layers; enough for digits (~0.95) and breast cancer."""

    def __init__(self, num_features: int, num_outputs: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class Linear(nn.Module):
    """One linear layer on the flattened input: few parameters, so DP noise hurts least
    (digits at eps 3: about 0.87 against the MLP's 0.68; README "DP settings that work")."""

    def __init__(self, num_features: int, num_outputs: int) -> None:
        super().__init__()
        self.fc = nn.Linear(num_features, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


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
