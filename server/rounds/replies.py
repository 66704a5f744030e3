"""Sort a round's replies into accepted, refused, failed and rejected, and record each.

The plain and the secure path share this one component, so they treat a refusal, an error or
a malformed reply the same way, and they stop the same way when too few nodes remain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message

from clients.task import wire
from server.run import FederatedRun
from server.store.records import NODE_FAILED, OK, REFUSED, REJECTED


class RunStopped(Exception):
    """The run cannot go on (e.g. too few nodes left); ends it cleanly with this reason."""


def reply_metrics(msg: Message) -> dict[str, Any]:
    """The reply's MetricRecord as a plain dict (empty if it has none)."""
    for rec in msg.content.metric_records.values():
        return dict(rec)
    return {}


def error_reason(msg: Message) -> str:
    reason = (msg.error.reason or "").strip().splitlines()
    return reason[-1][:500] if reason else f"error code {msg.error.code}"


@dataclass
class Sorted:
    """A round's replies by outcome; `accepted` maps node id -> reply."""

    accepted: dict[int, Message] = field(default_factory=dict)
    refused: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)


class ReplySorter:
    """Records every node's outcome; `check(node, msg, metrics)` returns '' or why a reply that
    is neither an error nor a refusal is unusable."""

    def __init__(self, run: FederatedRun) -> None:
        self.run = run

    def sort(self, rnd: int, replies: Iterable[Message], phase: str,
             check: Callable[[int, Message, dict[str, Any]], str] | None = None,
             record_ok: bool = True) -> Sorted:
        out = Sorted()
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                reason = error_reason(msg)
                self.run.node_result(rnd, node, phase, NODE_FAILED, {"error": reason})
                self.run.event("node-failed", f"node {node} failed in {phase}: {reason}", rnd,
                               node)
                out.failed.append(node)
                continue
            metrics = reply_metrics(msg)
            if metrics.get(wire.REFUSED_KEY):
                why = str(msg.content.config_records.get(wire.REFUSAL, {}).get("reason", ""))
                self.run.node_result(rnd, node, phase, REFUSED, metrics)
                self.run.event("node-refused", why or f"node {node} refused {phase}", rnd, node)
                out.refused.append(node)
                continue
            problem = check(node, msg, metrics) if check else ""
            if problem:
                self.run.node_result(rnd, node, phase, REJECTED, {**metrics, "reason": problem})
                self.run.event("update-rejected", f"node {node}: {problem}", rnd, node)
                out.rejected.append(node)
                continue
            if record_ok:
                self.run.node_result(rnd, node, phase, OK, metrics)
            out.accepted[node] = msg
        return out

    def require(self, rnd: int, usable: int, minimum: int, what: str = "usable update(s)") -> None:
        """Stop the run, the same way on every path, when fewer than `minimum` remain."""
        if usable >= minimum:
            return
        self.run.event("round-empty", f"round {rnd}: {usable} {what}, fewer than "
                       f"min-nodes={minimum}; model unchanged", rnd)
        raise RunStopped(f"too few nodes left in round {rnd}: {usable} {what}, "
                         f"min-nodes={minimum} (see refusals/failures)")
