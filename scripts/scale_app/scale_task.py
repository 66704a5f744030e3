"""The scale benchmark's task: digits, with every virtual node holding its own few examples.

The bundled digits task splits 1,437 training rows over the nodes, which cannot give 10,000 or
50,000 nodes any data. Here node i draws `examples-per-node` rows (32 by default) with a
generator seeded by (seed, i): any node count works, every node is the same size, and a node's
data is the same in every process that builds it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import TensorDataset

from clients.task import DataError, NodeData, Task, TaskContext, TensorSchema
from clients.tasks.bundled import MANIFESTS
from clients.tasks.datasets import Split, load_digits, train_test_split
from clients.tasks.models import MLP


@lru_cache(maxsize=2)
def _split(seed: int) -> tuple[Split, Split]:
    return train_test_split(load_digits(), 0.2, seed)


def _tensors(split: Split) -> TensorDataset:
    return TensorDataset(torch.from_numpy(split.x), torch.from_numpy(split.y))


def load_data(ctx: TaskContext) -> NodeData:
    if ctx.partition_id is None:
        raise DataError("the scale task runs in simulations only (node config partition-id)")
    train, _ = _split(ctx.seed)
    k = ctx.get("examples-per-node", 32)
    rng = np.random.default_rng([ctx.seed, ctx.partition_id])
    data = _tensors(train.take(rng.choice(len(train), size=min(k, len(train)), replace=False)))
    return NodeData(train=data, val=data)


def model() -> MLP:
    return MLP(64, 10)


task = Task(
    model=model,
    load_data=load_data,
    server_data=lambda ctx: _tensors(_split(ctx.seed)[1]),
    schema=TensorSchema((64,), num_classes=10),
    demo_manifest=MANIFESTS / "digits.toml",
    name="digits-scale",
)
