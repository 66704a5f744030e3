"""The row shapes of the run store, shared by its writer (the ServerApp) and its readers (the
web UI, the assistant's live answers, the CLIs): one definition, so a reader never looks for a
key the writer does not write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# runs.status
RUNNING, COMPLETED, FAILED = "running", "completed", "failed"
STOPPED, BLOCKED, LOST = "stopped", "blocked", "lost"
RUN_STATUSES = (RUNNING, COMPLETED, FAILED, STOPPED, BLOCKED, LOST)
# node_results.status
OK, REFUSED, NODE_FAILED, REJECTED, EXCLUDED, DROPPED = (
    "ok", "refused", "failed", "rejected", "excluded", "dropped")
# round_metrics.source
SERVER, FEDERATED, TRAIN = "server", "federated", "train"
# events worth a reader's attention (the UI highlights them)
EVENT_KINDS_OF_NOTE = (
    "node-refused", "node-failed", "node-excluded", "update-rejected", "round-empty",
    "secagg-abort", "secagg-node-error", "secagg-sum-rejected", "run-failed", "run-stopped",
    "run-blocked", "run-lost",
)


HEARTBEAT_S = 15.0  # a running ServerApp writes runs.heartbeat_at this often
LOST_AFTER_S = 90.0  # ... so a running run silent for longer has lost its ServerApp


def shown_status(run: Mapping[str, Any], now: float) -> str:
    """A run's status as a reader should show it: a `running` run whose ServerApp stopped
    beating (killed, crashed, stopped from outside) is `lost`, never `running` for ever."""
    status = str(run.get("status", ""))
    beat = run.get("heartbeat_at") or run.get("started_at") or 0.0
    if status == RUNNING and now - float(beat) > LOST_AFTER_S:
        return LOST
    return status


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return {}
    return value if value is not None else {}


def _text(value: Any) -> dict[str, str]:
    """A bilingual text {en, zh}; a plain string counts as English."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items() if v is not None}
    return {"en": str(value)} if value else {}


@dataclass(frozen=True)
class VerdictRecord:
    """One policy verdict as stored (run level when `node_id` is '')."""

    rule_id: str
    pack: str
    node_id: str
    verdict: str
    severity: str
    citation: str = ""
    pid: str | None = None
    title: dict[str, str] = field(default_factory=dict)
    explain: dict[str, str] = field(default_factory=dict)
    evidence: Any = None
    note: str = ""
    verified: str = ""  # when the rule's legal basis was last verified ("" = not re-checked)

    def detail(self) -> dict[str, Any]:
        return {"pid": self.pid, "title": self.title, "explain": self.explain,
                "evidence": self.evidence, "note": self.note, "verified": self.verified}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> VerdictRecord:
        d = _json(row.get("detail"))
        d = d if isinstance(d, dict) else {}
        return cls(rule_id=str(row.get("rule_id", "")), pack=str(row.get("pack", "")),
                   node_id=str(row.get("node_id") or ""), verdict=str(row.get("verdict", "")),
                   severity=str(row.get("severity", "")), citation=str(row.get("citation", "")),
                   pid=d.get("pid"), title=_text(d.get("title")), explain=_text(d.get("explain")),
                   evidence=d.get("evidence"), note=str(d.get("note") or ""),
                   verified=str(d.get("verified") or ""))


@dataclass(frozen=True)
class RoundMetric:
    """One named metric of one round: from the server's held-out set, the nodes' federated
    evaluation, or training. Any metric a task names lands here, so readers need no change."""

    round: int
    source: str
    name: str
    value: float


@dataclass(frozen=True)
class NodeResult:
    """One node's outcome in one phase of one round."""

    round: int
    node_id: str
    phase: str
    status: str
    num_examples: float | None = None
    loss: float | None = None
    epsilon: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> NodeResult:
        m = _json(row.get("metrics"))
        return cls(round=int(row["round"]), node_id=str(row["node_id"]), phase=str(row["phase"]),
                   status=str(row["status"]), num_examples=row.get("num_examples"),
                   loss=row.get("loss"), epsilon=row.get("epsilon"),
                   metrics=m if isinstance(m, dict) else {})


def as_dict(record: Any) -> dict[str, Any]:
    return asdict(record)
