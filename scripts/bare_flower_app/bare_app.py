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

from clients.task.evaluation import evaluate
from clients.training.node import node_runtime

server = ServerApp()
client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    runtime = node_runtime(context.run_config, context.node_config, context.run_id)
    state = msg.content["arrays"].to_torch_state_dict()
    out = runtime.train(state, int(msg.content["config"]["server-round"]), False)
    return Message(
        RecordDict({"arrays": ArrayRecord(out.state), "metrics": MetricRecord(out.metrics)}),
        reply_to=msg,
    )


@client.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    runtime = node_runtime(context.run_config, context.node_config, context.run_id)
    sums = runtime.evaluate(msg.content["arrays"].to_torch_state_dict())
    metrics = {"num-examples": sums.examples, **sums.means()} if sums else {"num-examples": 0.0}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    import torch

    torch.set_num_threads(1)
    from clients.task import RunConfig, TaskContext, load_task

    cfg = RunConfig.parse(context.run_config)
    ctx = TaskContext(context.run_config, {}, cfg.seed)
    task = load_task(cfg.task, ctx)
    model, test = task.build_model(ctx), task.evaluation_set(ctx)
    stamps: list[float] = []

    def central(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        means = evaluate(model, test, task.criterion(), task.metric_fn()).means()
        stamps.append(time.time())
        return MetricRecord({"loss": means["loss"], "accuracy": means.get("accuracy", 0.0)})

    fraction = 0.5 if cfg.federated_evaluation else 0.0
    FedAvg(fraction_evaluate=fraction, weighted_by_key="num-examples").start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(context.run_config["num-server-rounds"]),
        evaluate_fn=central,
    )
    out = str(context.run_config["timing-file"])
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(stamps, fh)
