"""Where a node keeps its privacy ledger, whose budget a run spends, and its DP-SGD session.

A real node names its directory (`node-data-dir`) in its node config; its budget lives in its
ledger, per data source (`data-source`, else the data path), set by the node operator with
`fedguard-node budget set` (a source without one refuses DP work). A simulated node has no
directory, so it gets `<data-dir>/nodes/partition-<id>`, and the run config plays its operator:
with `node-privacy-budget=0` (the default) each run's virtual nodes are new ones, data source
`run-<run id>/partition-<id>` with the run's dp-epsilon as budget, so simulations can be re-run;
with `node-privacy-budget=E` every virtual node has the lifetime budget E on data source
`partition-<id>`, spent across every run in the data dir, as a real node's would be.
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
from privacy.dp.ledger import LedgerError, PrivacyLedger

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


def data_source(node_config: Mapping[str, Any], run_id: str = "") -> str:
    """The stable identity the node's budget belongs to (survives edits of the file). A virtual
    node without a lifetime budget is a new node in each run (`run_id` given)."""
    if node_config.get("data-source"):
        return str(node_config["data-source"])
    if node_config.get("data-path"):
        return str(Path(str(node_config["data-path"])).expanduser().resolve())
    part = f"partition-{int(node_config.get('partition-id', 0))}"
    return f"run-{run_id}/{part}" if run_id else part


def _simulated_budget(ledger: PrivacyLedger, source: str, node_config: Mapping[str, Any],
                      cfg: RunConfig, num_records: int) -> None:
    """Simulation only: the virtual node's budget comes from the run config."""
    if node_config.get("node-data-dir") or node_config.get("data-path"):
        return  # a real node: its operator sets the budget
    eps = cfg.node_privacy_budget or cfg.dp_epsilon
    try:
        ledger.set_budget(source, eps, cfg.dp_delta, num_records=num_records, allow_raise=True,
                          note="simulation: node-privacy-budget")
    except LedgerError as err:
        raise ConfigError(str(err)) from None


def fedguard_run_id(cfg: RunConfig, flower_run_id: int) -> str:
    """A resumed run keeps its first id, so its calibration and ledger rows stay together."""
    return str(cfg.resume or flower_run_id)


def dataset_fingerprint(data: Dataset[Any]) -> str:
    """SHA-256 over every item's tensors: recorded with each release for the audit."""
    h = hashlib.sha256(b"fedguard-dataset/2\0")
    for i in range(len(data)):  # type: ignore[arg-type]
        for t in data[i]:
            a = torch.as_tensor(t).contiguous()
            h.update(f"{a.dtype}:{tuple(a.shape)}\0".encode())
            h.update(a.numpy().tobytes())
    return h.hexdigest()


def open_ledger(data: Dataset[Any], node_config: Mapping[str, Any], cfg: RunConfig,
                run_config: Mapping[str, Any], run_id: str) -> tuple[PrivacyLedger, str]:
    """The node's ledger and the data source its budget belongs to (simulated nodes get
    theirs from the run config: per run, or for life with node-privacy-budget)."""
    home = node_home(node_config, run_config)
    home.mkdir(parents=True, exist_ok=True)
    ledger = PrivacyLedger(home / LEDGER_FILE)
    per_run = not cfg.node_privacy_budget and not (
        node_config.get("node-data-dir") or node_config.get("data-path"))
    source = data_source(node_config, run_id if per_run else "")
    _simulated_budget(ledger, source, node_config, cfg, len(data))  # type: ignore[arg-type]
    return ledger, source


def metric_releases(cfg: RunConfig) -> int:
    """How many noisy federated evaluations a DP run makes (planned into its calibration)."""
    if not cfg.federated_evaluation or cfg.dp_eval == "off":
        return 0
    return cfg.num_server_rounds if cfg.dp_eval == "every" else 1


def open_session(
    data: Dataset[Any],
    node_config: Mapping[str, Any],
    cfg: RunConfig,
    run_config: Mapping[str, Any],
    flower_run_id: int,
    metric_names: tuple[str, ...] = (),
    loss_bound: float = 10.0,
) -> DPSGDSession | None:
    """A DP-SGD session when the run asks for DP (`dp=true`), else None."""
    if not cfg.dp:
        return None  # without DP, Opacus (~3-8 s to import) is never loaded
    from privacy.dp.dp_sgd import DPSGDConfig, DPSGDSession
    from privacy.dp.metrics import MetricsSpec

    dp_cfg = DPSGDConfig(enabled=True, target_epsilon=cfg.dp_epsilon, delta=cfg.dp_delta,
                         max_grad_norm=cfg.dp_max_grad_norm, accountant=cfg.dp_accountant,
                         grad_sample_mode=cfg.dp_grad_mode, secure_mode=cfg.dp_secure_mode)
    run_id = fedguard_run_id(cfg, flower_run_id)
    ledger, source = open_ledger(data, node_config, cfg, run_config, run_id)
    n = len(data)  # type: ignore[arg-type]
    releases = metric_releases(cfg)
    spec = MetricsSpec(cfg.dp_eval_noise, loss_bound, metric_names) if releases else None
    return DPSGDSession(
        ledger, dp_cfg, run_id, source,
        dataset_fingerprint(data), num_examples=n, batch_size=cfg.batch_size,
        epochs_per_round=cfg.local_epochs, rounds=cfg.num_server_rounds, metrics=spec,
        metric_releases=releases,
    )
