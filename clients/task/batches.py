"""Batches as the model takes them: floating tensors in the model's own float type.

Users' data often arrives as float64 (numpy's default, `torch.from_numpy`), models are float32:
fedguard casts floating features and targets to the model's dtype at batch time instead of
failing with torch's dtype mismatch. Integer tensors (class labels, token ids) are untouched.
"""

from __future__ import annotations

import torch
from torch import nn


def model_dtype(model: nn.Module) -> torch.dtype:
    """The float type of the model's first floating parameter (float32 without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def to_model(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`t` on `device`; a floating `t` in `dtype`."""
    if t.is_floating_point() and t.dtype != dtype:
        return t.to(device=device, dtype=dtype)
    return t.to(device)
