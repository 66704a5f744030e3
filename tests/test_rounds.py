"""The plain and the secure path treat refusals, failures and rejections alike (issue 10): one
component sorts every reply, so a run left with too few usable nodes stops the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.grids import drive


@pytest.mark.parametrize("secagg", [False, True])
def test_every_node_refusing_stops_the_run_on_either_path(tmp_path: Path, secagg: bool) -> None:
    """Real nodes without a privacy budget refuse DP work; with every node refusing, plain
    FedAvg used to stop the run while secure aggregation carried on and could end `completed`."""
    status, store = drive(tmp_path, 3, {"dp": True, "secagg": secagg, "num-server-rounds": 2,
                                        "federated-evaluation": False},
                          node_config={"node-data-dir": str(tmp_path / "node-{i}")})
    run = store.get_run("1")
    assert status == "stopped" and run["status"] == "stopped"
    assert "too few nodes left in round 1: 0 usable" in run["error"]
    refusals = store.events("1", "node-refused")
    assert len(refusals) == 3
    assert all("fedguard-node budget set --source" in e["message"] for e in refusals)
    assert store.rounds("1") == []  # no round was recorded as if it had happened
    rows = store.node_results("1", "train")
    assert [r["status"] for r in rows] == ["refused"] * 3
