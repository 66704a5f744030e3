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
from torch.utils.data import TensorDataset

from clients import client_app as fedguard
from clients.training.loop import make_loader, train_epochs
from clients.training.node import NodeRuntime, node_runtime

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


def flipped_labels(runtime: NodeRuntime) -> TensorDataset:
    """The node's training data with every label y replaced by (y + 1) mod classes."""
    data = runtime.data.train
    x = torch.stack([torch.as_tensor(data[i][0]) for i in range(len(data))])
    y = torch.stack([torch.as_tensor(data[i][1]) for i in range(len(data))])
    schema = runtime.task.data_schema(runtime.ctx)
    classes = schema.num_classes if schema and schema.num_classes else int(y.max()) + 1
    return TensorDataset(x, (y + 1) % classes)


def _flipped_labels_train(runtime: NodeRuntime, state: dict[str, torch.Tensor],
                          rnd: int) -> dict[str, torch.Tensor]:
    cfg = runtime.cfg
    model = runtime.model(state)
    loader = make_loader(flipped_labels(runtime), cfg.batch_size, shuffle=True,
                         seed=cfg.seed + rnd)
    train_epochs(model, loader, runtime.task.make_optimizer(model.parameters(), cfg.lr),
                 runtime.task.criterion(), cfg.local_epochs)
    return model.state_dict()


def poisoned_update(kind: str, scale: float, runtime: NodeRuntime,
                    state: dict[str, torch.Tensor], honest: dict[str, torch.Tensor],
                    rnd: int) -> dict[str, torch.Tensor]:
    """The weights a malicious node sends instead of its honest update `honest`."""
    if kind == "label-flip":
        return _flipped_labels_train(runtime, state, rnd)
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
    runtime = node_runtime(context.run_config, context.node_config, context.run_id)
    state = msg.content["arrays"].to_torch_state_dict()
    honest = reply.content["arrays"].to_torch_state_dict()
    rnd = int(msg.content["config"].get("server-round", 0))
    kind = str(context.run_config["attack-kind"])
    scale = float(context.run_config.get("attack-scale", 4.0))
    reply.content["arrays"] = ArrayRecord(
        poisoned_update(kind, scale, runtime, state, honest, rnd))
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return fedguard.evaluate(msg, context)


@app.query("admission")
def admission(msg: Message, context: Context) -> Message:
    """Attackers pass the gate like everyone: the attack is in the weights, not the paperwork."""
    return fedguard.admission(msg, context)
