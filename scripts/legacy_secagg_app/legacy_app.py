"""Flower's legacy SecAgg+ (`SecAggPlusWorkflow` + `secaggplus_mod`) on fedguard's task.

The comparison point for scripts/bench_secagg.py: the legacy ServerApp (`@app.main()` with a
`LegacyContext`, `DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`, legacy `FedAvg`) and a
`NumPyClient` behind `secaggplus_mod`, training fedguard's model on fedguard's partitions with
fedguard's local training (`clients.local_update.local_train`). The server writes the wall-clock
time of the initial evaluation and of the end of every round (its centralised evaluation, which
the legacy `DefaultWorkflow` runs right after each fit round) to `timing-file`, rewriting the file
after every round so a run cut short still leaves its finished rounds.
"""

from __future__ import annotations

import json
import time

from flwr.app import Context
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import NDArrays, Scalar, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid


class LegacyClient(NumPyClient):
    """One node: fedguard's local training on its partition, parameters as a list of ndarrays."""

    def __init__(self, context: Context) -> None:
        from clients.training.node import node_runtime

        self.runtime = node_runtime(context.run_config, context.node_config, context.run_id)

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict]:
        import torch

        torch.set_num_threads(1)
        keys = list(self.runtime.task.build_model(self.runtime.ctx).state_dict().keys())
        state = {k: torch.from_numpy(v.copy()) for k, v in zip(keys, parameters, strict=True)}
        out = self.runtime.train(state, int(config.get("server-round", 0)), False)
        assert out.state is not None  # no DP here, so no refusals
        arrays = [v.detach().cpu().numpy() for v in out.state.values()]
        metrics = {k: float(v) for k, v in out.metrics.items()}
        return arrays, int(out.metrics["num-examples"]), metrics


def client_fn(context: Context) -> Client:
    return LegacyClient(context).to_client()


client = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    import torch

    from clients.task import RunConfig, TaskContext, load_task
    from clients.task.evaluation import evaluate

    torch.set_num_threads(1)
    cfg = context.run_config
    ctx = TaskContext(cfg, {}, RunConfig.parse(cfg).seed)
    task = load_task(RunConfig.parse(cfg).task, ctx)
    model, test = task.build_model(ctx), task.evaluation_set(ctx)
    keys = list(model.state_dict().keys())
    out = str(cfg["timing-file"])
    stamps: list[float] = []

    def central(rnd: int, arrays: NDArrays, _: dict[str, Scalar]) -> tuple[float, dict]:
        state = {k: torch.from_numpy(v.copy()) for k, v in zip(keys, arrays, strict=True)}
        model.load_state_dict(state, strict=True)
        means = evaluate(model, test, task.criterion(), task.metric_fn()).means()
        loss, acc = means["loss"], means.get("accuracy", 0.0)
        stamps.append(time.time())
        if out:
            with open(out, "w", encoding="utf-8") as fh:
                json.dump(stamps, fh)
        return float(loss), {"accuracy": float(acc)}

    min_nodes = int(cfg["min-nodes"])
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,  # only training is timed, as for the fedguard runs
        min_fit_clients=min_nodes,
        min_evaluate_clients=0,
        min_available_clients=min_nodes,
        initial_parameters=ndarrays_to_parameters(
            [v.detach().cpu().numpy() for v in model.state_dict().values()]
        ),
        on_fit_config_fn=lambda rnd: {"server-round": rnd},
        evaluate_fn=central,
    )
    shares = int(cfg["num-shares"]) or 1.0  # 1.0 = every sampled node
    threshold = int(cfg["reconstruction-threshold"]) or 0.51
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=int(cfg["num-server-rounds"])),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=shares,
            reconstruction_threshold=threshold,
            max_weight=float(cfg["max-weight"]),
            clipping_range=float(cfg["clipping-range"]),
            quantization_range=int(cfg["quantization-range"]),
            modulus_range=int(cfg["modulus-range"]),
            timeout=float(cfg["stage-timeout"]),
        )
    )
    workflow(grid, legacy)
