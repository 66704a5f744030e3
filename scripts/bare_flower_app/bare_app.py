"""A bare Flower Message-API app: stock FedAvg on fedguard's task, no store, no checkpoints.

It is the baseline that scripts/bench_rounds.py compares the fedguard app against; it writes the
wall-clock time at the end of each round to `timing-file`.
"""

from __future__ import annotations

import json
import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from clients.local_update import local_evaluate, local_train
from clients.task import TaskConfig, load_server_testset, new_model
from clients.training import evaluate

server = ServerApp()
client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    task = TaskConfig()
    state = msg.content["arrays"].to_torch_state_dict()
    out = local_train(task, context.node_config, state, int(msg.content["config"]["server-round"]))
    return Message(
        RecordDict({"arrays": ArrayRecord(out.state), "metrics": MetricRecord(out.metrics)}),
        reply_to=msg,
    )


@client.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    metrics = local_evaluate(TaskConfig(), context.node_config,
                             msg.content["arrays"].to_torch_state_dict())
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    import torch

    torch.set_num_threads(1)
    task = TaskConfig()
    model, test = new_model(task), load_server_testset(task)
    stamps: list[float] = []

    def central(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(model, test)
        stamps.append(time.time())
        return MetricRecord({"loss": loss, "accuracy": acc})

    FedAvg(fraction_evaluate=float(context.run_config["fraction-evaluate"])).start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(context.run_config["num-server-rounds"]),
        evaluate_fn=central,
    )
    out = str(context.run_config["timing-file"])
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(stamps, fh)
