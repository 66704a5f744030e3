"""What the policy packs judge: the run config with every default filled in, plus the facts only
the server knows. The ServerApp and `fedguard-policy check` both call `policy_config`, so the
offline check judges exactly what the server will judge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clients.task.run_config import RunConfig


def policy_config(run_config: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """Defaults of the run-config schema, then the run's own keys, then derived facts."""
    cfg = RunConfig.parse(run_config)
    # The server always keeps the hash-chained audit log of every decision (rule P23).
    out: dict[str, Any] = {**cfg.to_mapping(), **dict(run_config), "mode": mode,
                           "audit-log": True}
    if cfg.central_dp and not cfg.dp:  # user-level DP is what the packs must judge
        out.update({"dp": True, "dp-privacy-unit": "user", "dp-epsilon": cfg.central_dp_epsilon,
                    "dp-max-grad-norm": cfg.central_dp_clip})
    return out
