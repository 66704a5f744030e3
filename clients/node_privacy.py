"""Where a node keeps its privacy ledger and how it opens a DP-SGD session for a run.

A real node names its directory (`node-data-dir`) in its node config; its budget lives in its
ledger, per data source (`data-source`, else the data path), set by the node operator. A
simulated node has no directory, so it gets `<data-dir>/nodes/partition-<id>`, data source
`partition-<id>`, and the run config's `node-privacy-budget` (0 = the run's own dp-epsilon) at
the run's dp-delta: in a simulation the run config plays the node operator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.data import Split
from clients.task import ConfigError, TaskConfig
from privacy.dp.ledger import LedgerError, PrivacyLedger, dataset_fingerprint

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


def data_source(node_config: Mapping[str, Any]) -> str:
    """The stable identity the node's budget belongs to."""
    if node_config.get("data-source"):
        return str(node_config["data-source"])
    if node_config.get("data-path"):
        return str(node_config["data-path"])
    return f"partition-{int(node_config.get('partition-id', 0))}"


def _simulated_budget(
    ledger: PrivacyLedger, source: str, node_config: Mapping[str, Any],
    run_config: Mapping[str, Any], num_records: int,
) -> None:
    """Simulation only: set the virtual node's budget from the run config."""
    if node_config.get("node-data-dir"):
        return  # a real node: its operator sets the budget
    raw = run_config.get("node-privacy-budget", 0.0)
    try:
        eps = float(raw) or float(run_config.get("dp-epsilon", 8.0))
        delta = float(run_config.get("dp-delta", 1e-5))
    except (TypeError, ValueError):
        raise ConfigError(f"node-privacy-budget={raw!r}: must be a number, e.g. 8.0") from None
    try:
        ledger.set_budget(source, eps, delta, num_records=num_records, allow_raise=True,
                          note="simulation: node-privacy-budget")
    except LedgerError as err:
        raise ConfigError(str(err)) from None


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
    ledger = PrivacyLedger(home / LEDGER_FILE)
    source = data_source(node_config)
    _simulated_budget(ledger, source, node_config, run_config, len(data))
    return DPSGDSession(
        ledger,
        cfg,
        fedguard_run_id(run_config, flower_run_id),
        source,
        dataset_fingerprint(data.x, data.y),
        num_examples=len(data),
        batch_size=task.batch_size,
        epochs_per_round=task.local_epochs,
        rounds=int(run_config.get("num-server-rounds", 1)),
    )
