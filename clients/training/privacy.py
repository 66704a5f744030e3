"""Where a node keeps its privacy ledger and how it opens a DP-SGD session for a run.

A real node names its directory (`node-data-dir`) and budget (`privacy-budget`) in its node
config. A simulated node has neither, so it gets `<data-dir>/nodes/partition-<id>` and the run
config's `node-privacy-budget` (0 = the run's own dp-epsilon), so simulations still exercise the
ledger across runs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from clients.task.run_config import ConfigError, RunConfig
from privacy.dp.ledger import PrivacyLedger

if TYPE_CHECKING:
    from privacy.dp.dp_sgd import DPSGDSession

LEDGER_FILE = "privacy-ledger.sqlite"


def node_home(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> Path:
    """The node's own directory (ledger, caches)."""
    own = node_config.get("node-data-dir")
    if own:
        return Path(str(own)).expanduser()
    base = str(run_config.get("data-dir") or os.environ.get("FEDGUARD_HOME") or ".fedguard")
    pid = node_config.get("partition-id")
    if pid is None:
        raise ConfigError("node config has no node-data-dir; start the node with --data-dir DIR")
    return Path(base).expanduser() / "nodes" / f"partition-{int(pid)}"


def node_budget(node_config: Mapping[str, Any], cfg: RunConfig) -> float | None:
    """The node's lifetime epsilon budget; None lets the session use the run's dp-epsilon."""
    raw = node_config.get("privacy-budget", cfg.node_privacy_budget)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"privacy-budget={raw!r}: must be a number, e.g. 8.0") from None
    if value < 0:
        raise ConfigError(f"privacy-budget={value}: must be > 0 (or 0 for the run's dp-epsilon)")
    return value or None


def fedguard_run_id(cfg: RunConfig, flower_run_id: int) -> str:
    """A resumed run keeps its first id, so its calibration and ledger rows stay together."""
    return str(cfg.resume or flower_run_id)


def dataset_fingerprint(data: Dataset[Any]) -> str:
    """SHA-256 over every item's tensors: the same local data gives the same digest."""
    h = hashlib.sha256(b"fedguard-dataset/2\0")
    for i in range(len(data)):  # type: ignore[arg-type]
        for t in data[i]:
            a = torch.as_tensor(t).contiguous()
            h.update(f"{a.dtype}:{tuple(a.shape)}\0".encode())
            h.update(a.numpy().tobytes())
    return h.hexdigest()


def open_session(
    data: Dataset[Any],
    node_config: Mapping[str, Any],
    cfg: RunConfig,
    run_config: Mapping[str, Any],
    flower_run_id: int,
) -> DPSGDSession | None:
    """A DP-SGD session when the run asks for DP (`dp=true`), else None."""
    if not cfg.dp:
        return None  # without DP, Opacus (~3-8 s to import) is never loaded
    from privacy.dp.dp_sgd import DPSGDConfig, DPSGDSession

    dp_cfg = DPSGDConfig(enabled=True, target_epsilon=cfg.dp_epsilon, delta=cfg.dp_delta,
                         max_grad_norm=cfg.dp_max_grad_norm, accountant=cfg.dp_accountant,
                         grad_sample_mode=cfg.dp_grad_mode, secure_mode=cfg.dp_secure_mode)
    home = node_home(node_config, run_config)
    home.mkdir(parents=True, exist_ok=True)
    return DPSGDSession(
        PrivacyLedger(home / LEDGER_FILE),
        dp_cfg,
        fedguard_run_id(cfg, flower_run_id),
        dataset_fingerprint(data),
        num_examples=len(data),  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        epochs_per_round=cfg.local_epochs,
        rounds=cfg.num_server_rounds,
        budget=node_budget(node_config, cfg),
    )
