"""Real processes: TLS, SuperNode authentication and secure aggregation together."""

from __future__ import annotations

import json

import pytest

from clients.node.supernode import SuperNode
from privacy.transport.certs import write_certificates
from server.deploy.superlink import SuperLink, TLSFiles
from server.store import RunStore
from tests.conftest import ROOT, store_says_ended

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_tls_authenticated_secagg_run_refuses_unregistered_node(tmp_path) -> None:
    certs = tmp_path / "certs"
    write_certificates(certs, nodes=3)
    tls = TLSFiles(certs / "ca.crt", certs / "server.pem", certs / "server.key")
    data_dir = tmp_path / "store"
    with SuperLink(tmp_path / "link", tls=tls, supernode_auth=True) as sl:
        for i in (1, 2):
            sl.register_node(certs / f"supernode-{i}.pub")  # node 3 is never registered
        nodes = [
            SuperNode(sl.address, {"partition-id": i - 1, "num-partitions": 3},
                      tmp_path / f"node{i}", root_certificates=certs / "ca.crt",
                      auth_private_key=certs / f"supernode-{i}.key").start()
            for i in (1, 2, 3)
        ]
        try:
            # Two nodes only to keep the test small: policy P6 wants 3 with secagg, so its
            # threshold is lowered for this run (and the override is on the record).
            rid = sl.submit(ROOT, {"num-server-rounds": 2, "data-dir": str(data_dir),
                                   "secagg": True, "federated-evaluation": False, "min-nodes": 2,
                                   "policy-params": "baseline.secagg-min-nodes=2"})
            status = sl.wait_finished(rid, 400, ended=store_says_ended(data_dir, str(rid)))
        finally:
            for n in nodes:
                n.stop()
    assert status == "finished:completed"
    store = RunStore.in_dir(data_dir, readonly=True)
    assert store.get_run(str(rid))["status"] == "completed"
    rounds = store.rounds(str(rid))
    assert len(rounds) == 2 and rounds[1]["server_accuracy"] > rounds[0]["server_accuracy"]
    for r in rounds:
        facts = json.loads(r["extra"])["secagg"]
        assert len(facts["contributors"]) == 2 and facts["dropped"] == {}
    # Only the two registered nodes ever took part; the third was refused by the SuperLink.
    assert len({n["node_id"] for n in store.node_results(str(rid))}) == 2
    log3 = next((tmp_path / "node3").glob("supernode-*.log")).read_text(errors="replace")
    assert "Failed to activate SuperNode" in log3  # Flower's exit code 305
