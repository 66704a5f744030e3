"""Crashes in a real deployment: a SuperNode or the whole server side dies by SIGKILL mid-run.

Real processes on 127.0.0.1: a `flower-superlink` (its ServerApp runs in a subprocess) and three
`flower-supernode`s, each with its own partition of the bundled data. Each round
starts a ClientApp process per node and trains 20 local epochs, so a kill issued right after a
round is recorded lands while the next round is in flight. The round timeout (45 s) must also
cover a first round on a busy 2-core machine: with 20 s, nodes still starting their first
ClientApp missed it and the run stopped with too few nodes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from clients.node.supernode import SuperNode
from server.deploy.superlink import SuperLink
from server.store import RunStore, StoreError
from tests.conftest import ROOT, rows_by, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NODES = 3
# Slow enough rounds that a kill right after a round is recorded hits the next round mid-flight.
SLOW_ROUNDS = {"local-epochs": 20, "federated-evaluation": False, "min-nodes": 2,
               "policy-packs": "none"}


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


def test_killed_node_is_left_out_then_rejoins(tmp_path: Path, superlink: SuperLink) -> None:
    data_dir = tmp_path / "store"
    nodes = start_nodes(superlink.address, tmp_path)
    replacement: SuperNode | None = None
    try:
        rid = superlink.submit(ROOT, {"num-server-rounds": 4, "data-dir": str(data_dir),
                                      "round-timeout": 45.0, **SLOW_ROUNDS})
        run_id = str(rid)
        wait_for(lambda: len(recorded_rounds(data_dir, run_id)) >= 1, 240, "round 1")
        nodes[0].kill()  # SIGKILL: the node and its ClientApp process die mid-round
        assert not nodes[0].alive()
        # The same organisation restarts its node on the same data; it registers anew.
        replacement = SuperNode(superlink.address, {"partition-id": 0, "num-partitions": NODES},
                                tmp_path / "node0-again").start()
        status = superlink.wait_finished(rid, timeout=400)
        assert all(n.alive() for n in nodes[1:]) and replacement.alive()
    finally:
        for n in [*nodes, *([replacement] if replacement else [])]:
            n.stop()
    assert status == "finished:completed"

    store = RunStore.in_dir(data_dir, readonly=True)
    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["last_round"] == 4
    rounds = {r["round"]: r for r in store.rounds(run_id)}
    assert sorted(rounds) == [1, 2, 3, 4]
    ok = ok_train_rows(store, run_id)
    assert rounds[1]["num_nodes"] == 3 and len(ok[1]) == 3
    first_ids = {r["node_id"]: r for r in ok[1]}
    # The round in flight when the node died went on without it, after the round timeout:
    # two updates aggregated, and the dead node's id is not among them.
    killed_round = min(r for r in rounds if r > 1 and rounds[r]["num_nodes"] == 2)
    survivors = {r["node_id"] for r in ok[killed_round]}
    assert len(survivors) == 2 and survivors < set(first_ids)
    dead_id = (set(first_ids) - survivors).pop()
    assert rounds[killed_round]["checkpoint_sha256"]
    # The restarted node (a new node id, the same data) trains in a later round.
    later = [r for rnd in rounds if rnd > killed_round for r in ok.get(rnd, [])]
    newcomers = [r for r in later if r["node_id"] not in first_ids]
    assert newcomers, f"no new node trained after round {killed_round}: {later}"
    assert {r["num_examples"] for r in newcomers} == {first_ids[dead_id]["num_examples"]}
    assert all(r["node_id"] != dead_id for r in later)
    assert rounds[4]["num_nodes"] == 3
    # Accuracy kept improving across the crash.
    assert rounds[4]["server_accuracy"] > rounds[1]["server_accuracy"]


def test_server_killed_mid_run_resumes_with_the_same_nodes(tmp_path: Path) -> None:
    """SIGKILL SuperLink + ServerApp; restart it on the same port and database; resume.

    The SuperNodes keep running through the outage (they retry) and serve the resumed run.
    """
    data_dir = tmp_path / "store"
    cfg = {"num-server-rounds": 4, "data-dir": str(data_dir), **SLOW_ROUNDS}
    sl = SuperLink(tmp_path / "flower").start()
    nodes = start_nodes(sl.address, tmp_path)
    try:
        rid = sl.submit(ROOT, cfg)
        run_id = str(rid)
        wait_for(lambda: len(recorded_rounds(data_dir, run_id)) >= 2, 300, "two rounds")
        sl.kill()  # SuperLink and its ServerApp process die at once
        store = RunStore.in_dir(data_dir, readonly=True)
        before = {r["round"]: r for r in store.rounds(run_id)}
        before_rows = store.node_results(run_id, "train")
        assert store.get_run(run_id)["status"] == "running"  # it never got to finish
        store.close()
        done = max(before)
        assert 2 <= done < 4
        assert all(n.alive() for n in nodes)  # a server crash does not take nodes down

        sl = SuperLink(tmp_path / "flower", port=sl.port).start()  # same address and database
        rid2 = sl.submit(ROOT, {**cfg, "resume": run_id})
        status = sl.wait_finished(rid2, timeout=400)
        assert all(n.alive() for n in nodes)
    finally:
        for n in nodes:
            n.stop()
        sl.stop()
    assert status == "finished:completed"

    store = RunStore.in_dir(data_dir, readonly=True)
    after = store.rounds(run_id)
    assert [r["round"] for r in after] == [1, 2, 3, 4]  # none lost, none twice
    for r in after:
        if r["round"] <= done:  # rounds finished before the crash are untouched
            assert r["checkpoint_sha256"] == before[r["round"]]["checkpoint_sha256"]
            assert r["ended_at"] == before[r["round"]]["ended_at"]
    train = store.node_results(run_id, "train")
    assert [r for r in train if r["round"] <= done] == [r for r in before_rows
                                                         if r["round"] <= done]
    per_round = rows_by(train, "round")
    assert sorted(per_round) == [1, 2, 3, 4]
    # One row per node per round, all from the same three real nodes before and after.
    ids = {r["node_id"] for r in per_round[1]}
    assert len(ids) == NODES
    for rnd, rows in per_round.items():
        assert sorted(r["node_id"] for r in rows) == sorted(ids), rnd
        assert all(r["status"] == "ok" for r in rows)
    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["last_round"] == 4
    assert run["flower_run_id"] == str(rid2)
    kinds = [e["kind"] for e in store.events(run_id)]
    assert kinds.count("run-started") == 1 and kinds.count("run-resumed") == 1
    assert kinds[-1] == "run-completed"
    assert after[-1]["server_accuracy"] >= after[done - 1]["server_accuracy"] - 0.05
