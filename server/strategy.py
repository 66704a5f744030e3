"""Flower glue: Flower's FedAvg-family strategies, plus fedguard's checks and records.

`FedGuardMixin` sorts every reply before aggregation: errors, refusals (a node whose privacy
budget would be overspent answers without weights) and updates that fail validation are recorded
and left out; the rest go to the Flower strategy chosen by the run config's `aggregation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from server.run import FederatedRun
from server.validation import InvalidUpdate, UpdateRules, check_update, rules_for

REFUSED_KEY = "refused"
# Nodes report their aggregation weight: their example count, or 1 under user-level DP.
WEIGHT_KEY = "aggregation-weight"

AGGREGATORS: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "median": FedMedian,
    "trimmed-mean": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
}
ROBUST = frozenset(AGGREGATORS) - {"fedavg"}


class RunStopped(Exception):
    """The run cannot go on (e.g. too few nodes left); ends it cleanly with this reason."""


def reply_metrics(msg: Message) -> dict[str, Any]:
    """The reply's MetricRecord as a plain dict (empty if it has none)."""
    for rec in msg.content.metric_records.values():
        return dict(rec)
    return {}


def _harmonise_metrics(replies: list[Message]) -> None:
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


def _numpy_state(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


class FedGuardMixin:
    """Numbers rounds globally (resume-safe), validates and records each node's result."""

    min_train_nodes: int

    def __init__(self, run: FederatedRun, *args: Any, update_norm_bound: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run = run
        self.update_norm_bound = update_norm_bound
        self._global: dict[str, np.ndarray] = {}
        self._rules: UpdateRules | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = self.run.global_round(server_round)
        self.run.begin_round(rnd)
        self._global = _numpy_state(arrays)
        self._rules = rules_for(self._global, self.update_norm_bound)
        messages = list(super().configure_train(rnd, arrays, config, grid))  # type: ignore[misc]
        config["num-sampled"] = len(messages)  # shared record: user-level DP noise shares
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = self.run.global_round(server_round)
        return super().configure_evaluate(rnd, arrays, config, grid)  # type: ignore[misc]

    def _validate(self, node: int, msg: Message, metrics: dict[str, Any]) -> str:
        """'' if the train reply is usable, else the reason it is not."""
        if self._rules is None:
            return ""
        if len(msg.content.metric_records) != 1:
            return f"expected one MetricRecord, got {len(msg.content.metric_records)}"
        weight = metrics.get(WEIGHT_KEY)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            return f"{WEIGHT_KEY}={weight!r} must be a positive number"
        arrays = list(msg.content.array_records.values())
        if len(arrays) != 1:
            return f"expected one ArrayRecord, got {len(arrays)}"
        try:
            update = _numpy_state(arrays[0])
            norm = check_update(self._rules, self._global, update, metrics.get("num-examples"),
                                self.run.declared_records.get(str(node)))
        except InvalidUpdate as err:
            return str(err)
        except Exception as err:  # a malformed record must not take the server down
            return f"unreadable update ({type(err).__name__})"
        metrics["update-norm"] = norm
        return ""

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
            if phase == "train":
                problem = self._validate(node, msg, metrics)
                if problem:
                    self.run.node_result(rnd, node, phase, "rejected", {**metrics,
                                                                         "reason": problem})
                    self.run.event("update-rejected", f"node {node}: {problem}", rnd, node)
                    continue
            self.run.node_result(rnd, node, phase, "ok", metrics)
            good.append(msg)
        _harmonise_metrics(good)
        return good

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = self.run.global_round(server_round)
        good = self._sort_replies(rnd, replies, "train")
        if len(good) < self.min_train_nodes:
            self.run.event("round-empty", f"round {rnd}: {len(good)} usable update(s), fewer "
                           f"than min-nodes={self.min_train_nodes}; model unchanged", rnd)
            raise RunStopped(f"too few nodes left in round {rnd}: {len(good)} usable, "
                             f"min-nodes={self.min_train_nodes} (see refusals/failures)")
        return super().aggregate_train(rnd, good)  # type: ignore[misc]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        rnd = self.run.global_round(server_round)
        good = self._sort_replies(rnd, replies, "evaluate")
        return super().aggregate_evaluate(rnd, good) if good else None  # type: ignore[misc]


def build_strategy(
    aggregation: str,
    run: FederatedRun,
    *,
    num_malicious: int = 0,
    trim_beta: float = 0.2,
    update_norm_bound: float = 0.0,
    secagg: Mapping[str, Any] | None = None,
    timeout: float = 600.0,
    **fedavg_kwargs: Any,
) -> FedAvg:
    """The run's strategy: Flower's aggregator `aggregation` with fedguard's checks.

    With `secagg` options the update is securely summed (server/secagg_strategy.py); robust
    aggregators need individual updates, so they cannot be combined with it.
    """
    if secagg is not None:
        from server.secagg_strategy import SecAggMixin

        cls = type("FedGuardSecAggFedAvg", (SecAggMixin, FedGuardMixin, FedAvg), {})
        return cls(run, update_norm_bound=update_norm_bound, secagg=secagg, timeout=timeout,
                   weighted_by_key=WEIGHT_KEY, **fedavg_kwargs)
    base = AGGREGATORS[aggregation]
    cls = type(f"FedGuard{base.__name__}", (FedGuardMixin, base), {})
    extra: dict[str, Any] = {}
    if aggregation in ("krum", "multikrum", "bulyan"):
        extra["num_malicious_nodes"] = num_malicious
    if aggregation == "multikrum":
        extra["num_nodes_to_select"] = max(1, fedavg_kwargs.get("min_train_nodes", 2)
                                           - num_malicious)
    if aggregation == "trimmed-mean":
        extra["beta"] = trim_beta
    return cls(run, update_norm_bound=update_norm_bound, weighted_by_key=WEIGHT_KEY,
               **fedavg_kwargs, **extra)
