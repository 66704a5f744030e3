"""One federated run's bookkeeping, free of Flower: rounds, node results, evaluation, checkpoints.

The strategy (server/strategy.py) is glue that feeds this object; keeping the logic here makes it
testable without starting Flower and keeps the round numbering right across resumes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clients.data import Split
from clients.task import TaskConfig, load_server_testset, new_model
from clients.training import evaluate
from privacy.compliance.audit import AuditLog
from server.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from server.store import RunStore


@dataclass
class RoundState:
    """What is known about the round in flight."""

    started_at: float
    train: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> metrics (ok only)
    evaluate: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. secure-aggregation facts


def _weighted(results: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    """Example-weighted mean; unweighted when nodes keep their counts private (secagg)."""
    num = den = 0.0
    for m in results.values():
        v, n = m.get(key), m.get("num-examples", 1.0) or 0
        if v is None or not math.isfinite(float(v)):
            continue
        num += float(v) * n
        den += n
    return num / den if den else None


class FederatedRun:
    """Records a run in the store and owns its checkpoints."""

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        data_dir: Path,
        task: TaskConfig,
        round_offset: int = 0,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.task = task
        self.run_dir = data_dir / "runs" / run_id
        self.round_offset = round_offset  # rounds already completed before this process started
        self._testset: Split | None = None
        self._model = new_model(task)
        self._rounds: dict[int, RoundState] = {}
        # node id -> record count its manifest declares; bounds its `num-examples`.
        self.declared_records: dict[str, int] = {}
        self.audit: AuditLog | None = None  # every event also goes to the hash-chained log

    @property
    def testset(self) -> Split:
        if self._testset is None:
            self._testset = load_server_testset(self.task)
        return self._testset

    def global_round(self, local_round: int) -> int:
        return self.round_offset + local_round

    def initial_state(self) -> dict[str, torch.Tensor]:
        """Seeded initial weights, or the last completed round's checkpoint when resuming."""
        if self.round_offset == 0:
            return {k: v.clone() for k, v in self._model.state_dict().items()}
        rounds = {r["round"]: r for r in self.store.rounds(self.run_id)}
        last = rounds[self.round_offset]
        return load_checkpoint(Path(last["checkpoint_path"]), last["checkpoint_sha256"])

    # --- per-round recording ------------------------------------------------------------------
    def begin_round(self, rnd: int) -> None:
        self._rounds[rnd] = RoundState(started_at=time.time())

    def _state(self, rnd: int) -> RoundState:
        return self._rounds.setdefault(rnd, RoundState(started_at=time.time()))

    def node_result(
        self, rnd: int, node_id: int | str, phase: str, status: str, metrics: Mapping[str, Any]
    ) -> None:
        self.store.record_node_result(self.run_id, rnd, node_id, phase, status, metrics)
        if status == "ok":
            bucket = self._state(rnd).train if phase == "train" else self._state(rnd).evaluate
            bucket[str(node_id)] = dict(metrics)

    def round_extra(self, rnd: int, facts: Mapping[str, Any]) -> None:
        """Facts stored with the round (rounds.extra), e.g. who was masked in or dropped."""
        self._state(rnd).extra.update(facts)

    def event(
        self,
        kind: str,
        message: str,
        rnd: int | None = None,
        node_id: int | str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.store.add_event(self.run_id, kind, message, rnd, node_id, data)
        if self.audit is not None:
            self.audit.append(kind, {"run": self.run_id, "round": rnd, "message": message,
                                     "node": None if node_id is None else str(node_id),
                                     "data": dict(data or {})})

    def evaluate_state(self, state: Mapping[str, torch.Tensor]) -> tuple[float, float]:
        self._model.load_state_dict(dict(state), strict=True)
        return evaluate(self._model, self.testset)

    def end_round(self, rnd: int, state: Mapping[str, torch.Tensor]) -> dict[str, float | None]:
        """Evaluate on the held-out split, checkpoint atomically, then commit the round."""
        st = self._state(rnd)
        server_loss, server_acc = self.evaluate_state(state)
        metrics: dict[str, float | None] = {
            "train_loss": _weighted(st.train, "loss"),
            "train_accuracy": _weighted(st.train, "accuracy"),
            "fed_loss": _weighted(st.evaluate, "loss"),
            "fed_accuracy": _weighted(st.evaluate, "accuracy"),
            "server_loss": server_loss,
            "server_accuracy": server_acc,
        }
        path = checkpoint_path(self.run_dir, rnd)
        sha = save_checkpoint(path, {k: v.detach().cpu() for k, v in state.items()}, rnd)
        self.store.record_round(
            self.run_id, rnd, st.started_at, len(st.train), metrics, str(path), sha, st.extra
        )
        self._rounds.pop(rnd, None)
        if self.audit is not None:
            self.audit.append("round-completed", {
                "run": self.run_id, "round": rnd, "checkpoint_sha256": sha,
                "nodes": sorted(st.train), "server_accuracy": server_acc,
            })
        return metrics
