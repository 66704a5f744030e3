"""One federated run's bookkeeping, free of Flower: rounds, node results, evaluation, checkpoints.

The round logic (server/rounds/) feeds this object; keeping the records here makes them testable
without starting Flower and keeps the round numbering right across resumes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clients.task.contract import Task, TaskContext
from clients.task.evaluation import Sums, evaluate
from privacy.compliance.audit import AuditLog
from server.store.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from server.store.records import FEDERATED, OK, SERVER, TRAIN
from server.store.store import RunStore


@dataclass
class RoundState:
    """What is known about the round in flight."""

    started_at: float
    train: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> metrics (ok only)
    train_sums: Sums | None = None  # summed training loss (secure or clear)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. secure-aggregation facts


class FederatedRun:
    """Records a run in the store and owns its checkpoints."""

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        data_dir: Path,
        task: Task,
        ctx: TaskContext,
        round_offset: int = 0,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.task = task
        self.ctx = ctx
        self.run_dir = data_dir / "runs" / run_id
        self.round_offset = round_offset  # rounds already completed before this process started
        self._testset: Any = None
        self._testset_loaded = False
        self._model = task.build_model(ctx)
        self._rounds: dict[int, RoundState] = {}
        # node id -> record count its manifest declares; bounds its `num-examples`.
        self.declared_records: dict[str, int] = {}
        self.audit: AuditLog | None = None  # every event also goes to the hash-chained log
        self.last_federated: dict[str, float] = {}

    @property
    def testset(self) -> Any:
        """The task's server-side evaluation set, or None (a real federation often has none)."""
        if not self._testset_loaded:
            self._testset = self.task.evaluation_set(self.ctx)
            self._testset_loaded = True
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
        self.store.heartbeat(self.run_id)

    def _state(self, rnd: int) -> RoundState:
        return self._rounds.setdefault(rnd, RoundState(started_at=time.time()))

    def node_result(
        self, rnd: int, node_id: int | str, phase: str, status: str, metrics: Mapping[str, Any]
    ) -> None:
        self.store.record_node_result(self.run_id, rnd, node_id, phase, status, metrics)
        if status == OK and phase == "train":
            self._state(rnd).train[str(node_id)] = dict(metrics)

    def train_summary(self, rnd: int, sums: Sums | None) -> None:
        """The round's summed training loss (from the secure sum or the clear replies)."""
        self._state(rnd).train_sums = sums

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
        self.events([(kind, message, rnd, node_id, data)])

    def events(self, items: list[tuple[str, str, int | None, int | str | None,
                                       Mapping[str, Any] | None]]) -> None:
        """Several events `(kind, message, round, node, data)`, audited with one fsync (e.g.
        a round's newly admitted nodes: one audit append each cost three fsyncs)."""
        for kind, message, rnd, node_id, data in items:
            self.store.add_event(self.run_id, kind, message, rnd, node_id, data)
        if self.audit is not None:
            self.audit.extend([(kind, {"run": self.run_id, "round": rnd, "message": message,
                                       "node": None if node_id is None else str(node_id),
                                       "data": dict(data or {})})
                               for kind, message, rnd, node_id, data in items])

    def evaluate_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, float] | None:
        """Loss and metrics of a model on the server's evaluation set (None without one)."""
        if self.testset is None:
            return None
        self._model.load_state_dict(dict(state), strict=True)
        sums = evaluate(self._model, self.testset, self.task.criterion(), self.task.metric_fn())
        return sums.means(self.task.metric_scale)

    def federated(self, rnd: int, sums: Sums) -> None:
        """Federated evaluation of the model *after* round `rnd` (it arrives in round rnd+1's
        replies, or in the final evaluation), stored with round `rnd`."""
        means = sums.means(self.task.metric_scale)
        means["examples"] = sums.examples
        self.last_federated = means
        if rnd < 1:
            return
        self.store.record_round_metrics(self.run_id, rnd, FEDERATED, means)
        self.store.set_round_federated(self.run_id, rnd, means.get("loss"), means.get("accuracy"))

    def end_round(self, rnd: int, state: Mapping[str, torch.Tensor]) -> dict[str, float | None]:
        """Evaluate on the server's set (if any), checkpoint atomically, then commit the round."""
        st = self._state(rnd)
        server = self.evaluate_state(state) or {}
        train = st.train_sums.means() if st.train_sums and st.train_sums.examples else {}
        metrics: dict[str, float | None] = {
            "train_loss": train.get("loss"),
            "train_accuracy": None,
            "fed_loss": None,
            "fed_accuracy": None,
            "server_loss": server.get("loss"),
            "server_accuracy": server.get("accuracy"),
        }
        path = checkpoint_path(self.run_dir, rnd)
        sha = save_checkpoint(path, {k: v.detach().cpu() for k, v in state.items()}, rnd)
        self.store.record_round(
            self.run_id, rnd, st.started_at, len(st.train), metrics, str(path), sha, st.extra
        )
        if server:
            self.store.record_round_metrics(self.run_id, rnd, SERVER, server)
        if train:
            self.store.record_round_metrics(self.run_id, rnd, TRAIN, {"loss": train["loss"]})
        self._rounds.pop(rnd, None)
        if self.audit is not None:
            self.audit.append("round-completed", {
                "run": self.run_id, "round": rnd, "checkpoint_sha256": sha,
                "nodes": sorted(st.train), "server": server,
            })
        return {**metrics, **{f"server_{k}": v for k, v in server.items()}}
