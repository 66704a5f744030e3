"""Lazy admission: only sampled nodes are asked, excluded ones are replaced, none trains unasked."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

import clients.client_app as client_app
from clients.task import wire
from privacy.compliance.audit import AuditLog
from server.compliance.gate import AdmissionGate, GateFailed
from server.compliance.policy_view import policy_config
from server.rounds.sampling import admit_in_order, sample_nodes, sampling_order
from tests.helpers.grids import InProcessGrid
from tests.helpers.rounds import make_run

IDS = list(range(100, 1100))  # 1,000 virtual nodes


class IdGrid:
    """Only what sampling reads from a Grid: the connected node ids."""

    def __init__(self, ids: Iterable[int]) -> None:
        self.ids = list(ids)

    def get_node_ids(self) -> list[int]:
        return list(self.ids)


class RecordingGate:
    """`admit(ids)`: asks each unseen node once; odd ids pass, even ids are excluded."""

    def __init__(self, excluded_every: int = 0) -> None:
        self.asked: list[int] = []
        self.allowed: set[int] = set()
        self.excluded: set[int] = set()
        self.every = excluded_every

    def admit(self, ids: list[int]) -> set[int]:
        for n in ids:
            if n in self.allowed or n in self.excluded:
                continue
            self.asked.append(n)
            if self.every and n % self.every == 0:
                self.excluded.add(n)
            else:
                self.allowed.add(n)
        return self.allowed & set(ids)


def test_sampling_order_is_seeded_and_stable_when_nodes_leave() -> None:
    order = sampling_order(IDS, seed=42, rnd=3)
    assert order == sampling_order(reversed(IDS), seed=42, rnd=3)
    assert order != sampling_order(IDS, seed=42, rnd=4) != sampling_order(IDS, seed=7, rnd=3)
    gone = set(order[::3])
    assert sampling_order([n for n in IDS if n not in gone], 42, 3) == [
        n for n in order if n not in gone]


def test_a_round_asks_only_the_nodes_it_samples() -> None:
    gate = RecordingGate()
    chosen = sample_nodes(IdGrid(IDS), gate.admit, 1, 0.1, 3, 42, timeout=1)
    assert len(chosen) == 100 and chosen == sorted(chosen)
    assert sorted(gate.asked) == chosen  # 100 admission queries, not 1,000
    again = sample_nodes(IdGrid(IDS), gate.admit, 1, 0.1, 3, 42, timeout=1)
    assert again == chosen and len(gate.asked) == 100  # a resumed round samples the same
    second = sample_nodes(IdGrid(IDS), gate.admit, 2, 0.1, 3, 42, timeout=1)
    assert len(second) == 100 and len(gate.asked) < 200  # round 2 asks only its newcomers


def test_excluded_nodes_are_replaced_and_never_sampled() -> None:
    gate = RecordingGate(excluded_every=2)
    chosen = sample_nodes(IdGrid(IDS), gate.admit, 1, 0.1, 3, 42, timeout=1)
    assert len(chosen) == 100 and all(n % 2 for n in chosen)
    assert set(chosen) <= gate.allowed  # a node never trains before it was admitted
    order = sampling_order(IDS, 42, 1)
    assert [n for n in order if n % 2][:100] == [n for n in order if n in set(chosen)]
    later = sample_nodes(IdGrid(IDS), gate.admit, 2, 0.1, 3, 42, timeout=1)
    assert not set(later) & gate.excluded and set(later) <= gate.allowed


def test_admit_in_order_stops_when_the_population_runs_out() -> None:
    gate = RecordingGate(excluded_every=2)
    assert admit_in_order([2, 4, 5, 6, 7], 3, gate.admit) == [5, 7]
    assert gate.asked == [2, 4, 5, 6, 7]


def test_too_few_eligible_nodes_stop_the_round_with_the_count() -> None:
    gate = RecordingGate(excluded_every=1)  # every node is excluded
    from server.rounds.replies import RunStopped

    with pytest.raises(RunStopped, match="round 1: only 0 eligible node"):
        sample_nodes(IdGrid(IDS[:10]), gate.admit, 1, 1.0, 3, 42, timeout=0.01)


# --- the real gate before round 1 ---------------------------------------------------------
class AdmissionGrid(InProcessGrid):
    """Nodes answer the admission query with the real ClientApp handler; `broken` nodes fail."""

    def __init__(self, ids: list[int], run_config: dict, broken: set[int]) -> None:
        super().__init__(ids, run_config)
        self.broken = broken
        self.queried: list[int] = []

    def deliver(self, msg: Message, context: Context) -> Message | None:
        assert msg.metadata.message_type == wire.ADMISSION_QUERY
        self.queried.append(context.node_id)
        if context.node_id in self.broken:
            return Message(Error(code=4001, reason="disk unreadable"), reply_to=msg)
        return client_app.admission(msg, context)


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


def _gate(tmp_path, grid_ids: list[int], broken: set[int], min_nodes: int = 3):
    config = {"num-server-rounds": 1, "min-nodes": min_nodes, "policy-packs": "none"}
    run, _ = make_run(tmp_path, config)
    grid = AdmissionGrid(grid_ids, config, broken)
    gate = AdmissionGate(run, policy_config(config, "simulation"), tmp_path,
                         AuditLog(tmp_path / "audit.jsonl"), timeout=5, min_nodes=min_nodes,
                         mode="simulation")
    return gate, grid


def test_the_gate_asks_only_min_nodes_before_round_one_in_round_one_order(tmp_path) -> None:
    ids = list(range(1, 21))
    order = sampling_order(ids, 42, 1)
    gate, grid = _gate(tmp_path, ids, broken={order[1]})
    gate.open(grid, wait=5)
    # the first three of round 1's order were asked; the broken one was replaced by the fourth
    assert set(grid.queried[:3]) == set(order[:3]) and grid.queried[3:] == order[3:4]
    assert gate.allowed == {order[0], order[2], order[3]}
    assert set(gate.excluded) == {str(order[1])}


def test_the_gate_still_blocks_when_every_node_was_asked_and_too_few_pass(tmp_path) -> None:
    ids = [1, 2, 3, 4]
    gate, grid = _gate(tmp_path, ids, broken={2, 3})
    with pytest.raises(GateFailed, match="only 2 of 4 connected node"):
        gate.open(grid, wait=5)
    assert sorted(grid.queried) == ids


@pytest.mark.parametrize("mode", ["simulation", "deployment"])
def test_a_simulation_judges_only_newcomers_and_the_report_keeps_every_node(
        tmp_path, monkeypatch, mode) -> None:
    import server.compliance.gate as gate_module

    judged: list[list[str]] = []
    real = gate_module.run_policy_gate

    def spy(config, manifests, *args, **kwargs):
        judged.append(sorted(manifests))
        return real(config, manifests, *args, **kwargs)

    monkeypatch.setattr(gate_module, "run_policy_gate", spy)
    config = {"num-server-rounds": 1, "min-nodes": 2, "policy-packs": "baseline", "tls": True,
              "node-auth": True}
    run, _ = make_run(tmp_path, config)
    grid = AdmissionGrid(list(range(1, 7)), config, broken=set())
    gate = AdmissionGate(run, policy_config(config, mode), tmp_path,
                         AuditLog(tmp_path / "audit.jsonl"), timeout=5, min_nodes=2, mode=mode)
    gate.check_run()
    gate.admit(grid, [1, 2, 3])
    gate.admit(grid, [4, 5, 6])
    assert gate.allowed == {1, 2, 3, 4, 5, 6}
    newcomers = [["1", "2", "3"], ["4", "5", "6"]]
    assert judged[1:] == (newcomers if mode == "simulation" else
                          [["1", "2", "3"], ["1", "2", "3", "4", "5", "6"]])
    report = gate.report
    nodes = {v.node for v in report.verdicts}
    assert nodes == {None, "1", "2", "3", "4", "5", "6"}
    stored = {r.node_id for r in run.store.verdicts(run.run_id)}
    assert stored == {"", "1", "2", "3", "4", "5", "6"}
    on_disk = (run.run_dir / "compliance-report.json").read_text()
    assert all(f'"node": "{n}"' in on_disk for n in "123456")  # reading `report` wrote it


def test_prefetched_answers_admit_a_later_round_without_an_exchange_of_its_own(tmp_path) -> None:
    from server.rounds.grid import FastPollGrid

    ids = list(range(1, 31))
    order = sampling_order(ids, 42, 2)
    broken = {order[2]}
    gate, inner = _gate(tmp_path, ids, broken=broken)
    grid = FastPollGrid(inner, poll_interval=0.01, window=4)
    gate.open(grid, wait=5)
    gate.prefetch(grid, order[:6])
    asked_before = len(inner.queried)
    assert asked_before == 3  # queued, not sent: they ride with the next exchange
    grid.send_and_receive([], timeout=1)  # round 1's exchange (empty here) carries them
    grid.flush_riders()
    fresh = [n for n in order[:6] if n not in inner.queried[:3]]
    assert sorted(inner.queried[3:]) == sorted(fresh)  # each asked once
    allowed = gate.admit(grid, order[:6])
    assert len(inner.queried) == asked_before + len(fresh)  # no new admission exchange
    assert allowed == set(order[:6]) - broken
    assert str(order[2]) in gate.excluded  # a failing prefetched node is still excluded


class UnreachedGrid(AdmissionGrid):
    """The SuperLink answers for `unreached` nodes (missed heartbeats) `times` times each."""

    def __init__(self, ids: list[int], run_config: dict, unreached: set[int], times: int) -> None:
        super().__init__(ids, run_config, broken=set())
        self.left = dict.fromkeys(unreached, times)

    def deliver(self, msg: Message, context: Context) -> Message | None:
        nid = context.node_id
        if self.left.get(nid, 0) > 0:
            self.left[nid] -= 1
            self.queried.append(nid)
            return Message(Error(code=ErrorCode.NODE_UNAVAILABLE,
                                 reason="Error: Node Unavailable"), reply_to=msg)
        return super().deliver(msg, context)


def _unreached_gate(tmp_path, monkeypatch, ids: list[int], unreached: set[int], times: int,
                    mode: str = "deployment"):
    import server.compliance.gate as gate_module

    monkeypatch.setattr(gate_module, "RETRY_UNAVAILABLE_S", 0.05)
    config = {"num-server-rounds": 1, "min-nodes": len(ids), "policy-packs": "none"}
    run, _ = make_run(tmp_path, config)
    grid = UnreachedGrid(ids, config, unreached, times)
    gate = AdmissionGate(run, policy_config(config, mode), tmp_path,
                         AuditLog(tmp_path / "audit.jsonl"), timeout=5,
                         min_nodes=len(ids), mode=mode)
    return gate, grid, run


def test_a_node_the_superlink_could_not_reach_is_asked_again_not_excluded(
        tmp_path, monkeypatch) -> None:
    # A SuperNode reconnecting after a SuperLink restart: its first query comes back as the
    # SuperLink's own NODE_UNAVAILABLE error. That is no verdict on its data.
    gate, grid, run = _unreached_gate(tmp_path, monkeypatch, [1, 2, 3], {2}, times=2)
    gate.open(grid, wait=10)
    assert gate.allowed == {1, 2, 3} and not gate.excluded
    assert grid.queried.count(2) == 3  # twice unreached, then answered
    events = run.store.events(run.run_id)
    kinds = [e["kind"] for e in events]
    assert kinds.count("node-unreached") == 1  # one line per node, not one per attempt
    line = next(e["message"] for e in events if e["kind"] == "node-unreached")
    assert line == ("node 2: the SuperLink could not reach it (Error: Node Unavailable); "
                    "it is asked again when it reconnects")
    assert "node-excluded" not in kinds


def test_a_node_that_stays_unreachable_blocks_at_the_deadline_with_the_reason(
        tmp_path, monkeypatch) -> None:
    gate, grid, _ = _unreached_gate(tmp_path, monkeypatch, [1, 2, 3], {3}, times=10**6)
    with pytest.raises(GateFailed, match="node 3: the SuperLink could not reach it"):
        gate.open(grid, wait=1.0)
    assert not gate.excluded and 3 not in gate.allowed


def test_a_round_passes_over_an_unreached_node_and_takes_it_back_later(
        tmp_path, monkeypatch) -> None:
    ids = list(range(1, 11))
    order = sampling_order(ids, 42, 1)
    gate, grid, _ = _unreached_gate(tmp_path, monkeypatch, ids, {order[0]}, times=1,
                                    mode="simulation")
    chosen = sample_nodes(grid, lambda b: gate.admit(grid, b), 1, 0.3, 3, 42, timeout=5)
    assert order[0] not in chosen and chosen == sorted(order[1:4])  # the next one stands in
    time.sleep(0.06)
    assert gate.admit(grid, [order[0]]) == {order[0]}  # back after the pause, and admitted


def test_no_two_admission_queries_share_an_object() -> None:
    """A SuperNode keeps objects by content hash across runs and can leave an ended run's
    objects registered but empty: a query identical to one of an earlier run would hang."""
    from server.compliance.gate import admission_queries

    first, again = admission_queries([7]), admission_queries([7])
    ids = {q.content[wire.CONFIG].object_id for q in (*first, *again)}
    assert len(ids) == 2
