"""A ClientApp where some nodes are malicious, for scripts/attack.py's poisoning simulation.

A node is malicious when `attack-kind` is not "none" and its `partition-id` is below
`attack-fraction * num-partitions`. Honest nodes run fedguard's real ClientApp (and so its real
`local_train`). Malicious nodes answer with a well-formed reply carrying a poisoned update:

- sign-flip:  global - s * (update - global)   (s = attack-scale)
- scaled:     global + s * (update - global)
- label-flip: an honest-looking update trained on permuted labels (y -> (y + 1) mod classes)
- nan:        every floating-point tensor is NaN (the server's validation must reject it)

A malicious node's reply is the real ClientApp's honest reply with only the weights swapped: the
same metrics (true `num-examples`, same keys; Flower's aggregators fail a round whose replies
carry different MetricRecord keys) and the same other records. The attack is in the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from clients import client_app as fedguard
from clients.data import Split
from clients.local_update import node_data
from clients.task import TaskConfig, new_model
from clients.training import make_loader, make_optimizer, train_epochs

ATTACKS = ("none", "sign-flip", "scaled", "label-flip", "nan")

app = ClientApp()


def is_malicious(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> bool:
    kind = str(run_config.get("attack-kind", "none"))
    if kind == "none":
        return False
    if kind not in ATTACKS:
        raise ValueError(f"attack-kind={kind!r}: use one of {', '.join(ATTACKS)}")
    fraction = float(run_config.get("attack-fraction", 0.0))
    pid, nparts = int(node_config["partition-id"]), int(node_config["num-partitions"])
    return pid < fraction * nparts


def _flipped_labels_train(task: TaskConfig, node_config: Mapping[str, Any],
                          state: dict[str, torch.Tensor], rnd: int) -> dict[str, torch.Tensor]:
    data = node_data(task, node_config)
    flipped = Split(data.x, (data.y + 1) % task.spec.num_classes)
    model = new_model(task)
    model.load_state_dict(state, strict=True)
    loader = make_loader(flipped, task.batch_size, shuffle=True, seed=task.seed + rnd)
    train_epochs(model, loader, make_optimizer(model, task.lr), task.local_epochs)
    return model.state_dict()


def poisoned_update(kind: str, scale: float, task: TaskConfig, node_config: Mapping[str, Any],
                    state: dict[str, torch.Tensor], honest: dict[str, torch.Tensor],
                    rnd: int) -> dict[str, torch.Tensor]:
    """The weights a malicious node sends instead of its honest update `honest`."""
    if kind == "label-flip":
        return _flipped_labels_train(task, node_config, state, rnd)
    poisoned: dict[str, torch.Tensor] = {}
    for key, glob in state.items():
        new = honest[key]
        if not torch.is_floating_point(new):
            poisoned[key] = new.clone()
        elif kind == "sign-flip":
            poisoned[key] = glob - scale * (new - glob)
        elif kind == "scaled":
            poisoned[key] = glob + scale * (new - glob)
        elif kind == "nan":
            poisoned[key] = torch.full_like(new, float("nan"))
        else:
            raise ValueError(f"attack-kind={kind!r}: use one of {', '.join(ATTACKS)}")
    return poisoned


@app.train()
def train(msg: Message, context: Context) -> Message:
    # Every node first does what an honest fedguard node does (the real ClientApp, and so the
    # real local_train); a malicious one then swaps the weights and keeps everything else.
    reply = fedguard.train(msg, context)
    if not is_malicious(context.run_config, context.node_config) or reply.has_error():
        return reply
    if "arrays" not in reply.content.array_records:  # a refusal: nothing to poison
        return reply
    task = TaskConfig.from_run_config(context.run_config)
    state = msg.content["arrays"].to_torch_state_dict()
    honest = reply.content["arrays"].to_torch_state_dict()
    rnd = int(msg.content["config"].get("server-round", 0))
    kind = str(context.run_config["attack-kind"])
    scale = float(context.run_config.get("attack-scale", 4.0))
    reply.content["arrays"] = ArrayRecord(
        poisoned_update(kind, scale, task, context.node_config, state, honest, rnd))
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return fedguard.evaluate(msg, context)
