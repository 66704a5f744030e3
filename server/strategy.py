"""Flower glue: a sample-weighted FedAvg that reports every reply to a FederatedRun.

Replies are sorted before aggregation: errors and refusals (a node whose privacy budget would be
overspent answers without weights) are recorded and left out; the rest go to Flower's FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from server.run import FederatedRun

REFUSED_KEY = "refused"


class RunStopped(Exception):
    """The run cannot go on (e.g. too few nodes left); ends it cleanly with this reason."""


def reply_metrics(msg: Message) -> dict[str, Any]:
    """The reply's MetricRecord as a plain dict (empty if it has none)."""
    for rec in msg.content.metric_records.values():
        return dict(rec)
    return {}


class FedGuardFedAvg(FedAvg):
    """FedAvg that numbers rounds globally (resume-safe) and records each node's result."""

    def __init__(self, run: FederatedRun, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run = run

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = self.run.global_round(server_round)
        self.run.begin_round(rnd)
        return super().configure_train(rnd, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_evaluate(self.run.global_round(server_round), arrays, config, grid)

    def _sort_replies(self, rnd: int, replies: Iterable[Message], phase: str) -> list[Message]:
        good: list[Message] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                reason = msg.error.reason.strip().splitlines()[-1][:500] if msg.error.reason else ""
                self.run.node_result(rnd, node, phase, "failed", {"error": reason})
                self.run.event("node-failed", f"node {node} failed in {phase}: {reason}", rnd, node)
                continue
            metrics = reply_metrics(msg)
            if metrics.get(REFUSED_KEY):
                reason = str(msg.content.config_records.get("refusal", {}).get("reason", ""))
                self.run.node_result(rnd, node, phase, "refused", metrics)
                self.run.event("node-refused", reason or f"node {node} refused {phase}", rnd, node)
                continue
            self.run.node_result(rnd, node, phase, "ok", metrics)
            good.append(msg)
        return good

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = self.run.global_round(server_round)
        good = self._sort_replies(rnd, replies, "train")
        if len(good) < self.min_train_nodes:
            self.run.event("round-empty", f"round {rnd}: {len(good)} usable update(s), fewer "
                           f"than min-nodes={self.min_train_nodes}; model unchanged", rnd)
            raise RunStopped(f"too few nodes left in round {rnd}: {len(good)} trained, "
                             f"min-nodes={self.min_train_nodes} (see refusals/failures)")
        return super().aggregate_train(rnd, good)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        rnd = self.run.global_round(server_round)
        good = self._sort_replies(rnd, replies, "evaluate")
        return super().aggregate_evaluate(rnd, good) if good else None
