"""The indexed per-node lookup of Flower's in-memory LinkState returns what Flower's own does."""

from __future__ import annotations

import secrets

from flwr.app import ConfigRecord, RecordDict
from flwr.common.constant import HEARTBEAT_INTERVAL_INF, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.linkstate import InMemoryLinkState, LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from server.rounds import grid as fast_grid


def _federation(nodes: int = 5) -> tuple[InMemoryLinkState, InMemoryGrid, list[int]]:
    """A simulation's in-memory state and grid with `nodes` online virtual nodes, one run."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                               ObjectStoreFactory())
    state = factory.state()
    ids = []
    for _ in range(nodes):
        nid = state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, secrets.token_bytes(32),
                                heartbeat_interval=HEARTBEAT_INTERVAL_INF)
        state.acknowledge_node_heartbeat(node_id=nid, heartbeat_interval=HEARTBEAT_INTERVAL_INF)
        ids.append(nid)
    run = Run.create_empty(7)
    run.federation_id, run.primary_task_id = NOOP_FEDERATION_ID, 99
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[99] = Task(task_id=99, run_id=run.run_id)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 99
    return state, grid, ids


def _push(grid: InMemoryGrid, ids: list[int], count: int, start: int = 0) -> None:
    grid.push_messages([grid.create_message(RecordDict({"c": ConfigRecord({"i": i})}), "train",
                                            ids[i % 3], "") for i in range(start, start + count)])


def _delivered(state: InMemoryLinkState, lookup, ids: list[int], limit: int | None) -> list:
    return [[m.content["c"]["i"] for m in lookup(state, n, limit)] for n in ids]


def test_indexed_lookup_delivers_what_flowers_own_does() -> None:
    flower = getattr(InMemoryLinkState, "_fedguard_flower_get_message_ins",
                     InMemoryLinkState.get_message_ins)
    ours = fast_grid._get_message_ins_indexed
    states = {}
    for name in ("flower", "ours"):
        state, grid, ids = _federation()
        _push(grid, ids, 7)
        states[name] = (state, grid, ids)
    seen = {name: [] for name in states}
    for step in range(4):  # one message per node per sweep, as the Simulation Engine asks
        for name, lookup in (("flower", flower), ("ours", ours)):
            state, grid, ids = states[name]
            seen[name].append(_delivered(state, lookup, ids, 1))
            if step == 1:
                _push(grid, ids, 4, start=100)  # a new exchange while some are in flight
    assert seen["ours"] == seen["flower"]
    assert seen["ours"][0] == [[0], [1], [2], [], []]
    for name, lookup in (("flower", flower), ("ours", ours)):  # nothing delivered twice
        state, _, ids = states[name]
        assert _delivered(state, lookup, ids, None) == [[]] * 5


def test_a_simulation_grid_installs_the_index() -> None:
    _, grid, _ = _federation(2)
    fast_grid.FastPollGrid(grid)
    assert InMemoryLinkState.get_message_ins is fast_grid._get_message_ins_indexed
