"""Real Deployment Engine: a SuperLink and two SuperNodes as separate processes on 127.0.0.1."""

from __future__ import annotations

import pytest

from clients.node.supernode import SuperNode
from server.store import RunStore
from tests.conftest import ROOT, rows_by, store_says_ended

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_two_real_nodes_run_two_rounds(tmp_path, superlink) -> None:
    nodes = [
        SuperNode(superlink.address, {"partition-id": i, "num-partitions": 2},
                  tmp_path / f"node{i}").start()
        for i in range(2)
    ]
    try:
        data_dir = tmp_path / "store"
        # Insecure transport fails policy P5, so this plain run switches the gate off.
        rid = superlink.submit(ROOT, {"num-server-rounds": 2, "data-dir": str(data_dir),
                                      "federated-evaluation": True, "policy-packs": "none",
                                          "min-nodes": 2})
        status = superlink.wait_finished(rid, 300, ended=store_says_ended(data_dir, str(rid)))
        assert all(n.alive() for n in nodes)
    finally:
        for n in nodes:
            n.stop()
    assert status == "finished:completed"
    store = RunStore.in_dir(data_dir, readonly=True)
    run = store.get_run(str(rid))
    assert run["status"] == "completed" and run["last_round"] == 2
    rounds = store.rounds(str(rid))
    assert [r["num_nodes"] for r in rounds] == [2, 2]
    assert rounds[1]["server_accuracy"] > rounds[0]["server_accuracy"]
    per_round = rows_by(store.node_results(str(rid), "train"), "round")
    # Two distinct real nodes answered in each round.
    assert all(len({n["node_id"] for n in per_round[r]}) == 2 for r in (1, 2))
    assert all(not n.alive() for n in nodes)
    kinds = {e["kind"] for e in store.events(str(rid))}
    assert {"insecure-transport", "policy-gate-off"} <= kinds  # both are on the record
