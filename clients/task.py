"""The shared task: what is trained, on which data, with which local settings.

Nodes and the server both import this module (the server for its held-out split and centralised
evaluation), so it stays free of Flower and of anything node- or server-specific.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from clients.data import (
    DataError,
    DatasetSpec,
    Split,
    dataset_spec,
    load_builtin,
    load_node_file,
    partition_dirichlet,
    partition_iid,
    train_test_split,
)
from clients.models import MODELS, build_model

__all__ = [
    "ConfigError",
    "TaskConfig",
    "load_node_data",
    "load_server_testset",
    "new_model",
]


class ConfigError(ValueError):
    """A run-config value is wrong; the message names the key and a valid value."""


def _get(cfg: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    """cfg[key] as `kind` (ints accepted for floats; NaN/inf refused), else a ConfigError."""
    value = cfg.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(
            f"run config {key}={value!r}: expected {kind.__name__}, e.g. {key}={default!r}"
        )
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"run config {key}={value!r}: must be a finite number, e.g. {default!r}")
    return value


@dataclass(frozen=True)
class TaskConfig:
    """Local-training and data settings, read once from the Flower run config."""

    model: str = "mlp"
    dataset: str = "digits"
    partition: str = "dirichlet"
    dirichlet_alpha: float = 0.5
    local_epochs: int = 3
    lr: float = 0.1
    batch_size: int = 16
    test_fraction: float = 0.2
    seed: int = 42

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> TaskConfig:
        d = cls()
        tc = cls(
            model=_get(cfg, "model", str, d.model),
            dataset=_get(cfg, "dataset", str, d.dataset),
            partition=_get(cfg, "partition", str, d.partition),
            dirichlet_alpha=_get(cfg, "dirichlet-alpha", float, d.dirichlet_alpha),
            local_epochs=_get(cfg, "local-epochs", int, d.local_epochs),
            lr=_get(cfg, "lr", float, d.lr),
            batch_size=_get(cfg, "batch-size", int, d.batch_size),
            test_fraction=_get(cfg, "test-fraction", float, d.test_fraction),
            seed=_get(cfg, "seed", int, d.seed),
        )
        tc.validate()
        return tc

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"run config model={self.model!r}: use one of {', '.join(MODELS)}")
        if self.partition not in ("iid", "dirichlet"):
            raise ConfigError(f"run config partition={self.partition!r}: use 'iid' or 'dirichlet'")
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"run config dirichlet-alpha={self.dirichlet_alpha}: must be > 0")
        if self.local_epochs < 1:
            raise ConfigError(f"run config local-epochs={self.local_epochs}: must be >= 1")
        if not 0 < self.lr < 10:
            raise ConfigError(f"run config lr={self.lr}: must be in (0, 10), e.g. 0.05")
        if self.batch_size < 1:
            raise ConfigError(f"run config batch-size={self.batch_size}: must be >= 1, e.g. 32")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"run config test-fraction={self.test_fraction}: use e.g. 0.2")
        try:
            spec = dataset_spec(self.dataset)
        except DataError as err:
            raise ConfigError(f"run config {err}") from None
        if self.model == "cnn" and spec.image_shape is None:
            raise ConfigError(
                f"run config model='cnn' needs images, dataset {self.dataset!r} is tabular; "
                "use model='mlp'"
            )

    @property
    def spec(self) -> DatasetSpec:
        return dataset_spec(self.dataset)


def new_model(task: TaskConfig) -> nn.Module:
    """The run's model with seed-determined initial weights."""
    return build_model(task.model, task.spec, seed=task.seed)


def _builtin_split(task: TaskConfig) -> tuple[Split, Split]:
    return train_test_split(load_builtin(task.dataset), task.test_fraction, task.seed)


def load_server_testset(task: TaskConfig) -> Split:
    """The server's fixed held-out split; nodes never see these rows."""
    return _builtin_split(task)[1]


def load_node_data(task: TaskConfig, node_config: Mapping[str, Any]) -> Split:
    """The data of one node: its own file (`data-path`) or its partition of a bundled dataset.

    In simulation Flower sets `partition-id` and `num-partitions`; a real node sets `data-path`
    (or, for demos and tests, a partition of the bundled data).
    """
    data_path = node_config.get("data-path")
    if data_path:
        label = str(node_config.get("label-column", "label"))
        return load_node_file(str(data_path), task.spec, label)
    try:
        pid = int(node_config["partition-id"])
        nparts = int(node_config["num-partitions"])
    except (KeyError, TypeError, ValueError):
        raise DataError(
            "node config has neither data-path nor partition-id/num-partitions; "
            "start the node with --data-path FILE"
        ) from None
    if not 0 <= pid < nparts:
        raise DataError(f"node config partition-id={pid}: must be in 0..{nparts - 1}")
    train, _ = _builtin_split(task)
    if task.partition == "iid":
        parts = partition_iid(len(train), nparts, task.seed)
    else:
        parts = partition_dirichlet(train.y, nparts, task.dirichlet_alpha, task.seed)
    idx = parts[pid]
    return Split(train.x[idx], train.y[idx])
