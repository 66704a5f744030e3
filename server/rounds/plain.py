"""A round without secure aggregation: every update is checked, then aggregated by Flower's
FedAvg or one of its robust aggregators (they need individual updates, so never with secagg).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from clients.task import wire
from clients.task.run_config import RunConfig
from server.rounds.replies import ReplySorter, reply_metrics
from server.rounds.summaries import clear_summary, train_summary
from server.rounds.validation import InvalidUpdate, check_update, rules_for
from server.run import FederatedRun

AGGREGATORS: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "median": FedMedian,
    "trimmed-mean": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
}


def build_aggregator(cfg: RunConfig) -> FedAvg:
    """Flower's strategy for `aggregation`, used only for its `aggregate_train`."""
    extra: dict[str, Any] = {}
    if cfg.aggregation in ("krum", "multikrum", "bulyan"):
        extra["num_malicious_nodes"] = cfg.aggregation_malicious
    if cfg.aggregation == "multikrum":
        extra["num_nodes_to_select"] = max(1, cfg.min_nodes - cfg.aggregation_malicious)
    if cfg.aggregation == "trimmed-mean":
        extra["beta"] = cfg.trim_beta
    return AGGREGATORS[cfg.aggregation](weighted_by_key=wire.WEIGHT_KEY, **extra)


def _harmonise(replies: list[Message]) -> None:
    """Keep only metric keys every reply has: Flower refuses a round whose replies differ, so
    one node adding a key must not be able to fail everyone's round."""
    if not replies:
        return
    keysets = [set(reply_metrics(m)) for m in replies]
    common = set.intersection(*keysets)
    for msg, keys in zip(replies, keysets, strict=True):
        if keys != common:
            for name, rec in list(msg.content.metric_records.items()):
                msg.content[name] = MetricRecord({k: v for k, v in rec.items() if k in common})


class PlainRounds:
    """Train exchange -> checks -> aggregation, for one round at a time."""

    def __init__(self, run: FederatedRun, cfg: RunConfig, sorter: ReplySorter,
                 sample: Callable[[Grid, int], list[int]] | None = None) -> None:
        self.run = run
        self.cfg = cfg
        self.sorter = sorter
        self.sample = sample
        self.aggregator = build_aggregator(cfg)

    def cohort(self, grid: Grid, rnd: int) -> list[int]:
        return self.sample(grid, rnd) if self.sample else sorted(grid.get_node_ids())

    def train(self, grid: Grid, rnd: int, arrays: ArrayRecord, nodes: list[int],
              config: ConfigRecord) -> ArrayRecord | None:
        glob = {k: v.numpy() for k, v in arrays.items()}
        rules = rules_for(glob, self.cfg.update_norm_bound)

        def check(node: int, msg: Message, metrics: dict[str, Any]) -> str:
            return self._validate(node, msg, metrics, glob, rules)

        messages = [Message(content=RecordDict({wire.ARRAYS: arrays, wire.CONFIG: config}),
                            dst_node_id=nid, message_type=wire.TRAIN) for nid in nodes]
        replies = grid.send_and_receive(messages, timeout=self.cfg.round_timeout)
        good = self.sorter.sort(rnd, replies, "train", check)
        accepted = list(good.accepted.values())
        metrics = [reply_metrics(m) for m in accepted]
        evaluation = clear_summary(metrics, wire.EVAL_PREFIX)
        if evaluation is not None:
            self.run.federated(rnd - 1, evaluation)
        self.run.train_summary(rnd, train_summary(metrics))
        self.sorter.require(rnd, len(accepted), self.cfg.min_nodes)
        _harmonise(accepted)
        new, _ = self.aggregator.aggregate_train(rnd, accepted)
        return new

    def evaluate(self, grid: Grid, rnd: int, arrays: ArrayRecord, nodes: list[int]) -> None:
        """Federated evaluation of the final model (rounds evaluate inside the train reply)."""
        messages = [Message(content=RecordDict({wire.ARRAYS: arrays,
                                                wire.CONFIG: ConfigRecord({"server-round": rnd})}),
                            dst_node_id=nid, message_type=wire.EVALUATE) for nid in nodes]
        replies = grid.send_and_receive(messages, timeout=self.cfg.round_timeout)
        good = self.sorter.sort(rnd, replies, "evaluate")
        summary = clear_summary([reply_metrics(m) for m in good.accepted.values()],
                                wire.EVAL_PREFIX)
        if summary is not None:
            self.run.federated(rnd, summary)

    def _validate(self, node: int, msg: Message, metrics: dict[str, Any],
                  glob: Mapping[str, np.ndarray], rules: Any) -> str:
        """'' if the train reply is usable, else the reason it is not."""
        if len(msg.content.metric_records) != 1:
            return f"expected one MetricRecord, got {len(msg.content.metric_records)}"
        weight = metrics.get(wire.WEIGHT_KEY)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            return f"{wire.WEIGHT_KEY}={weight!r} must be a positive number"
        arrays = list(msg.content.array_records.values())
        if len(arrays) != 1:
            return f"expected one ArrayRecord, got {len(arrays)}"
        try:
            update = {k: v.numpy() for k, v in arrays[0].items()}
            norm = check_update(rules, glob, update, metrics.get(wire.EXAMPLES_KEY),
                                self.run.declared_records.get(str(node)))
        except InvalidUpdate as err:
            return str(err)
        except Exception as err:  # a malformed record must not take the server down
            return f"unreadable update ({type(err).__name__})"
        metrics["update-norm"] = norm
        return ""
