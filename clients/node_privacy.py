"""Where a node keeps its privacy ledger and how it opens a DP-SGD session for a run.

A real node names its directory (`node-data-dir`) and budget (`privacy-budget`) in its node
config. A simulated node has neither, so it gets `<data-dir>/nodes/partition-<id>` and the run
config's `node-privacy-budget` (0 = the run's own dp-epsilon), so simulations still exercise the
ledger across runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.data import Split
from clients.task import ConfigError, TaskConfig
from privacy.dp.ledger import PrivacyLedger, dataset_fingerprint

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


def node_budget(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> float | None:
    """The node's lifetime epsilon budget; None lets the session use the run's dp-epsilon."""
    raw = node_config.get("privacy-budget", run_config.get("node-privacy-budget", 0.0))
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"privacy-budget={raw!r}: must be a number, e.g. 8.0") from None
    if value < 0:
        raise ConfigError(f"privacy-budget={value}: must be > 0 (or 0 for the run's dp-epsilon)")
    return value or None


def fedguard_run_id(run_config: Mapping[str, Any], flower_run_id: int) -> str:
    """A resumed run keeps its first id, so its calibration and ledger rows stay together."""
    return str(run_config.get("resume") or flower_run_id)


def open_session(
    task: TaskConfig,
    data: Split,
    node_config: Mapping[str, Any],
    run_config: Mapping[str, Any],
    flower_run_id: int,
) -> DPSGDSession | None:
    """A DP-SGD session when the run asks for DP (`dp=true`), else None."""
    if str(run_config.get("dp", False)).strip().lower() in ("false", "0", "no", "off", ""):
        return None  # without DP, Opacus (~3-8 s to import) is never loaded
    from privacy.dp.dp_sgd import DPSGDConfig, DPSGDSession

    cfg = DPSGDConfig.from_run_config(run_config)
    if not cfg.enabled:
        return None
    home = node_home(node_config, run_config)
    home.mkdir(parents=True, exist_ok=True)
    return DPSGDSession(
        PrivacyLedger(home / LEDGER_FILE),
        cfg,
        fedguard_run_id(run_config, flower_run_id),
        dataset_fingerprint(data.x, data.y),
        num_examples=len(data),
        batch_size=task.batch_size,
        epochs_per_round=task.local_epochs,
        rounds=int(run_config.get("num-server-rounds", 1)),
        budget=node_budget(node_config, run_config),
    )
