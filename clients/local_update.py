"""What a node does with a train or evaluate request, as plain Python (no Flower types)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch

from clients.data import Split
from clients.task import TaskConfig, load_node_data, new_model
from clients.training import evaluate, make_loader, make_optimizer, train_epochs

State = dict[str, torch.Tensor]


@lru_cache(maxsize=8)
def _cached_data(task: TaskConfig, node_key: tuple[tuple[str, str], ...]) -> Split:
    return load_node_data(task, dict(node_key))


def node_data(task: TaskConfig, node_config: Mapping[str, Any]) -> Split:
    """The node's data, loaded once per process (simulation actors serve many rounds)."""
    key = tuple(sorted((str(k), str(v)) for k, v in node_config.items()))
    return _cached_data(task, key)


def local_train(
    task: TaskConfig, node_config: Mapping[str, Any], state: State, server_round: int
) -> tuple[State, dict[str, float]]:
    """Train the global model on the node's data; return new weights and metrics."""
    data = node_data(task, node_config)
    model = new_model(task)
    model.load_state_dict(state, strict=True)
    loader = make_loader(data, task.batch_size, shuffle=True, seed=task.seed + server_round)
    result = train_epochs(model, loader, make_optimizer(model, task.lr), task.local_epochs)
    metrics = {
        "num-examples": float(len(data)),
        "loss": result.loss,
        "accuracy": result.accuracy,
        "train-time": result.seconds,
    }
    return model.state_dict(), metrics


def local_evaluate(
    task: TaskConfig, node_config: Mapping[str, Any], state: State
) -> dict[str, float]:
    """Evaluate the global model on the node's own data (federated evaluation)."""
    data = node_data(task, node_config)
    model = new_model(task)
    model.load_state_dict(state, strict=True)
    loss, acc = evaluate(model, data)
    return {"num-examples": float(len(data)), "loss": loss, "accuracy": acc}
