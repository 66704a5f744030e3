"""The bundled demo tasks, written against the same contract as any user's task.

A bundled task trains on a scikit-learn dataset shipped with the package: the server holds a
fixed held-out split (`test-fraction`), virtual nodes get a partition of the rest (`partition`,
`dirichlet-alpha`), and a real node reads its own file (`--data-path`, CSV or NPZ with the same
features). Its own run-config keys: `model` (`mlp`, `linear`, or `cnn` for image data), `partition`,
`dirichlet-alpha`, `test-fraction`, `label-column` (node config).

Federated evaluation uses each node's own training data (as fedguard's first version did, so the
demo's numbers stay comparable); the held-out server split is the honest measure. Your own task
should return a real validation split.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from clients.task.contract import DataError, NodeData, Task, TaskContext, TaskError, TensorSchema
from clients.tasks.datasets import Split, train_test_split
from clients.tasks.files import read_numeric_file
from clients.tasks.models import MLP, Linear, SmallCNN
from clients.tasks.partition import PARTITIONS, partition

MANIFESTS = Path(__file__).with_name("manifests")
MODELS = ("mlp", "linear", "cnn")


def _tensors(split: Split) -> TensorDataset:
    return TensorDataset(torch.from_numpy(split.x), torch.from_numpy(split.y))


def bundled_task(name: str, loader: Callable[[], Split], num_features: int, num_classes: int,
                 image_shape: tuple[int, int, int] | None = None) -> Task:
    """A Task over a bundled dataset (see the module docstring for its run-config keys)."""

    @lru_cache(maxsize=4)
    def split(test_fraction: float, seed: int) -> tuple[Split, Split]:
        return train_test_split(loader(), test_fraction, seed)

    def settings(ctx: TaskContext) -> tuple[str, str, float, float]:
        model, how = ctx.get("model", "mlp"), ctx.get("partition", "dirichlet")
        if model not in MODELS:
            raise TaskError(f"run config model={model!r}: use one of {', '.join(MODELS)}")
        if model == "cnn" and image_shape is None:
            raise TaskError(f"run config model='cnn' needs images, the {name} task is tabular; "
                            "use model='mlp'")
        if how not in PARTITIONS:
            raise TaskError(f"run config partition={how!r}: use 'iid' or 'dirichlet'")
        return model, how, ctx.get("dirichlet-alpha", 0.5), ctx.get("test-fraction", 0.2)

    def model(ctx: TaskContext) -> nn.Module:
        kind = settings(ctx)[0]
        if kind == "cnn":
            assert image_shape is not None
            return SmallCNN(image_shape, num_classes)
        if kind == "linear":
            return Linear(num_features, num_classes)
        return MLP(num_features, num_classes)

    def load_data(ctx: TaskContext) -> NodeData:
        _, how, alpha, test_fraction = settings(ctx)
        if ctx.data_path is not None:
            label = str(ctx.node_config.get("label-column", "label"))
            data = read_numeric_file(ctx.data_path, num_features, num_classes, label,
                                     what=f"the {name} task")
        elif ctx.partition_id is not None and ctx.num_partitions:
            pid, parts = ctx.partition_id, ctx.num_partitions
            if not 0 <= pid < parts:
                raise DataError(f"node config partition-id={pid}: must be in 0..{parts - 1}")
            train, _ = split(test_fraction, ctx.seed)
            data = train.take(partition(train.y, parts, how, alpha, ctx.seed)[pid])
        else:
            raise DataError("node config has neither data-path nor partition-id/num-partitions; "
                            "start the node with --data-path FILE")
        ds = _tensors(data)
        return NodeData(train=ds, val=ds)

    def server_data(ctx: TaskContext) -> TensorDataset:
        return _tensors(split(settings(ctx)[3], ctx.seed)[1])

    return Task(
        model=model,
        load_data=load_data,
        server_data=server_data,
        schema=TensorSchema((num_features,), num_classes=num_classes),
        demo_manifest=MANIFESTS / f"{name}.toml",
        name=name,
    )
