"""Real Deployment Engine: one SuperLink with TLS and node authentication, three registered
SuperNodes and one unregistered, as separate processes on 127.0.0.1 (module-scoped, so a further
run here reuses the warm nodes: starting processes is most of the cost).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.node.supernode import SuperNode, stop_supernodes
from clients.task.scaffold import MANIFEST_TOML, pyproject
from privacy.compliance.provenance import load_record, verify_record
from privacy.compliance.signing import read_public_key
from privacy.transport.certs import write_certificates
from server.deploy.superlink import SuperLink, TLSFiles
from server.store import RunStore
from server.store.records import COMPLETED
from tests.conftest import rows_by, store_says_ended
from tests.test_task_contract import NOVEL_TASK

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NODES = 3


@dataclass
class Federation:
    link: SuperLink
    nodes: list[SuperNode]
    stranger: SuperNode  # has a key pair, was never registered
    workdir: Path

    def run(self, app: Path, name: str, config: dict[str, object]) -> tuple[str, RunStore]:
        data_dir = self.workdir / name
        rid = self.link.submit(app, {"data-dir": str(data_dir), **config})
        status = self.link.wait_finished(rid, 600, ended=store_says_ended(data_dir, str(rid)))
        assert status == "finished:completed", status
        return str(rid), RunStore.in_dir(data_dir, readonly=True)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    work = tmp_path_factory.mktemp("federation")
    certs = work / "certs"
    write_certificates(certs, NODES + 1, ["127.0.0.1", "localhost"], 30, False)
    tls = TLSFiles(certs / "ca.crt", certs / "server.pem", certs / "server.key")
    nodes: list[SuperNode] = []
    with SuperLink(work / "superlink", tls=tls, supernode_auth=True) as link:
        try:
            for i in range(NODES + 1):
                if i < NODES:
                    link.register_node(certs / f"supernode-{i + 1}.pub")
                nodes.append(SuperNode(
                    link.address, {"partition-id": i % NODES, "num-partitions": NODES},
                    work / f"node-{i}", root_certificates=certs / "ca.crt",
                    auth_private_key=certs / f"supernode-{i + 1}.key",
                    flwr_home=work / f"node-{i}" / "flwr-home").start())
            yield Federation(link, nodes[:NODES], nodes[NODES], work)
        finally:
            stop_supernodes(nodes)


def test_a_task_the_core_has_never_seen_trains_on_real_nodes(
        federation: Federation, tmp_path: Path) -> None:
    """Issue 11: a user's own task (7 features, 5 classes, its own nn.Module) shipped in the FAB
    `flwr run` sends, on real SuperNodes with TLS, node auth and the policy gate, with federated
    evaluation. (DP and secagg on real nodes: the README block, tests/test_real_nodes.py; the
    same task under DP and secagg: tests/test_task_contract.py.)"""
    app = tmp_path / "novel-app"
    app.mkdir()
    (app / "pyproject.toml").write_text(pyproject("novel-app").replace(
        'task = "task:task"', 'task = "novel_task:task"'), encoding="utf-8")
    (app / "novel_task.py").write_text(NOVEL_TASK, encoding="utf-8")
    # each node holds 150 records; a plain update is checked against the declared count
    (app / "manifest.toml").write_text(MANIFEST_TOML.format(name="novel").replace(
        "records = 120", "records = 150"), encoding="utf-8")
    rid, store = federation.run(app, "novel", {"num-server-rounds": 2, "local-epochs": 2,
                                               "federated-evaluation": True})
    run = store.get_run(rid)
    assert run["status"] == COMPLETED and run["last_round"] == 2, run["error"]
    assert run["config"]["mode"] == "deployment" and run["config"]["tls"]
    assert run["config"]["node-auth"]
    assert len(store.manifests(rid)) == NODES  # the gate saw every node's manifest
    acc = [m.value for m in store.round_metrics(rid)
           if m.source == "server" and m.name == "accuracy"]
    assert len(acc) == 2 and min(acc) > 0.5, acc  # chance is 0.2; round 1 may converge
    rounds = store.rounds(rid)
    assert [r["num_nodes"] for r in rounds] == [NODES, NODES]
    per_round = rows_by(store.node_results(rid, "train"), "round")
    assert all(len({n["node_id"] for n in per_round[r]}) == NODES for r in (1, 2))
    fed = [m for m in store.round_metrics(rid) if m.source == "federated"]
    assert fed, "no federated evaluation was recorded"
    signed = load_record(store.artifacts(rid)["provenance"]["path"])
    assert verify_record(signed, read_public_key(store.path.parent / "signing-key.pub")).ok
    # Only registered nodes ever took part; the SuperLink refused the stranger's activation.
    assert len({n["node_id"] for n in store.node_results(rid)}) == NODES
    log = next(federation.stranger.workdir.glob("supernode-*.log")).read_text(errors="replace")
    assert "Failed to activate SuperNode" in log  # Flower's exit code 305
    assert not federation.stranger.alive()
    assert all(n.alive() for n in federation.nodes)
