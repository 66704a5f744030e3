"""Crashes in a real deployment: a SuperNode, then the whole server side, die by SIGKILL mid-run.

Real processes on 127.0.0.1: a `flower-superlink` (its ServerApp runs in a subprocess) and three
`flower-supernode`s with fedguard's warm executors, each on its own partition of the bundled
data. One run lives through both crashes (they share the expensive set-up): a node is killed
right after round 1 is recorded, so round 2 goes on without it after the round timeout, and its
operator restarts it; after round 2 the SuperLink and its ServerApp are killed, restarted on
the same port and database, and the run resumes: no round is lost or counted twice, and the
nodes, which kept running, reconnect and serve the resumed run.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from clients.node.supernode import SuperNode, stop_supernodes
from server.deploy.superlink import SuperLink
from server.store import RunStore, StoreError
from tests.conftest import ROOT, rows_by, store_says_ended, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NODES = 3
# Slow enough rounds that a kill right after a round is recorded hits the next round mid-flight.
SLOW_ROUNDS = {"local-epochs": 3, "federated-evaluation": False, "min-nodes": 2,
               "policy-packs": "none", "round-timeout": 20.0}


def start_nodes(address: str, workdir: Path, ids: range = range(NODES)) -> list[SuperNode]:
    return [
        SuperNode(address, {"partition-id": i, "num-partitions": NODES},
                  workdir / f"node{i}").start()
        for i in ids
    ]


def recorded_rounds(data_dir: Path, run_id: str) -> list[dict[str, Any]]:
    """Rounds in the store so far ([] while the ServerApp has not created it yet)."""
    if not (data_dir / "runs.sqlite").exists():
        return []
    try:
        store = RunStore.in_dir(data_dir, readonly=True)
    except StoreError:
        return []
    try:
        return store.rounds(run_id)
    except sqlite3.OperationalError:  # the file exists, its tables not yet
        return []
    finally:
        store.close()


def ok_train_rows(store: RunStore, run_id: str) -> dict[int, list[dict[str, Any]]]:
    rows = [r for r in store.node_results(run_id, "train") if r["status"] == "ok"]
    return rows_by(rows, "round")


def test_node_crash_then_server_crash_then_resume(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    cfg = {"num-server-rounds": 3, "data-dir": str(data_dir), **SLOW_ROUNDS}
    sl = SuperLink(tmp_path / "flower").start()
    nodes = start_nodes(sl.address, tmp_path)
    replacement: SuperNode | None = None
    try:
        rid = sl.submit(ROOT, cfg)
        run_id = str(rid)
        wait_for(lambda: len(recorded_rounds(data_dir, run_id)) >= 1, 240, "round 1")
        nodes[0].kill()  # SIGKILL: the node and its executor die with round 2 in flight
        assert not nodes[0].alive()
        # The same organisation restarts its node on the same data; it registers anew.
        replacement = SuperNode(sl.address, {"partition-id": 0, "num-partitions": NODES},
                                tmp_path / "node0-again").start()
        wait_for(lambda: len(recorded_rounds(data_dir, run_id)) >= 2, 240, "round 2")
        sl.kill()  # SuperLink and its ServerApp process die at once
        store = RunStore.in_dir(data_dir, readonly=True)
        before = {r["round"]: r for r in store.rounds(run_id)}
        before_rows = store.node_results(run_id, "train")
        assert store.get_run(run_id)["status"] == "running"  # it never got to finish
        store.close()
        done = max(before)
        assert done == 2  # round 3 needs a fresh exchange and 3 epochs: not done yet
        live = [*nodes[1:], replacement]
        assert all(n.alive() for n in live)  # a server crash does not take nodes down

        sl = SuperLink(tmp_path / "flower", port=sl.port).start()  # same address and database
        # min-nodes=3: the resumed run waits for every live node's admission answer (a node
        # reconnecting after the SuperLink's restart may answer after the round timeout)
        rid2 = sl.submit(ROOT, {**cfg, "resume": run_id, "min-nodes": 3})
        status = sl.wait_finished(rid2, 400, ended=store_says_ended(data_dir, run_id))
        assert all(n.alive() for n in live)
    finally:
        stop_supernodes([*nodes, *([replacement] if replacement else [])])
        sl.stop()
    assert status == "finished:completed"

    store = RunStore.in_dir(data_dir, readonly=True)
    run = store.get_run(run_id)
    assert (run["status"], run["last_round"]) == ("completed", 3), run["error"]
    rounds = {r["round"]: r for r in store.rounds(run_id)}
    assert sorted(rounds) == [1, 2, 3]  # none lost, none twice
    ok = ok_train_rows(store, run_id)
    first_ids = {r["node_id"]: r for r in ok[1]}
    assert rounds[1]["num_nodes"] == 3 and len(first_ids) == 3
    # The round in flight when the node died went on without it, after the round timeout.
    survivors = {r["node_id"] for r in ok[2]}
    assert rounds[2]["num_nodes"] == 2 and survivors < set(first_ids)
    dead_id = (set(first_ids) - survivors).pop()
    # Rounds finished before the server crash are untouched by the resume.
    for r in rounds.values():
        if r["round"] <= done:
            assert r["checkpoint_sha256"] == before[r["round"]]["checkpoint_sha256"]
            assert r["ended_at"] == before[r["round"]]["ended_at"]
    train = store.node_results(run_id, "train")
    assert [r for r in train if r["round"] <= done] == [r for r in before_rows
                                                         if r["round"] <= done]
    # After the crashes: the restarted node (a new id, the same data) and the two that kept
    # running train; the dead node never again.
    later = [r for rnd in rounds if rnd > done for r in ok.get(rnd, [])]
    newcomers = [r for r in later if r["node_id"] not in first_ids]
    assert newcomers and {r["num_examples"] for r in newcomers} == {
        first_ids[dead_id]["num_examples"]}
    assert all(r["node_id"] != dead_id for r in later)
    assert rounds[3]["num_nodes"] == 3
    assert run["flower_run_id"] == str(rid2)
    kinds = [e["kind"] for e in store.events(run_id)]
    assert kinds.count("run-started") == 1 and kinds.count("run-resumed") == 1
    assert kinds[-1] == "run-completed"
    assert rounds[3]["server_accuracy"] > rounds[1]["server_accuracy"]
