"""User-level DP on the node: bound the whole update, add this node's share of the noise.

With `central-dp=true` the server sends the run's noise multiplier and clip norm with each
train request. The node clips its update to that norm and adds Gaussian noise with std
z*C/sqrt(n) (n = nodes sampled this round), so the n shares sum to the noise the accountant
assumed (std z*C) - before secure aggregation masks it, so no single party holds the noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from privacy.dp.user_level import clip_update, secure_rng


def apply_user_level_dp(
    global_state: Mapping[str, torch.Tensor],
    new_state: Mapping[str, torch.Tensor],
    round_config: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """global + clip(new - global) + noise share; returns the state and what was done."""
    z = float(round_config["central-dp-noise"])
    clip = float(round_config["central-dp-clip"])
    n = int(round_config.get("num-sampled", 1))
    keys = list(global_state)
    update = [(new_state[k].detach().double() - global_state[k].double()).numpy() for k in keys]
    clipped, norm = clip_update(update, clip)
    # Interim (issue 12 items 2, 13): continuous shares sized for the sampled cohort. Replace
    # with privacy.dp.user_level.encode_user_update once secagg masks integer vectors.
    rng = secure_rng()
    noise = [rng.normal(0.0, z * clip / np.sqrt(max(n, 1)), size=u.shape) for u in update]
    out = {
        k: (global_state[k].double() + torch.from_numpy(np.asarray(c) + e)).to(
            global_state[k].dtype)
        for k, c, e in zip(keys, clipped, noise, strict=True)
    }
    return out, {"user-dp-norm": norm, "user-dp-clipped": float(norm > clip)}
