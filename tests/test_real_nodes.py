"""The README's real-node section, run verbatim: coordinator and three nodes as separate
processes, TLS, node authentication, DP and secure aggregation, and everything stopped after.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from privacy.dp.ledger import PrivacyLedger
from server.store import RunStore
from server.store.records import COMPLETED

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- real-nodes -->\s*```bash\n(.*?)```\s*<!-- /real-nodes -->", re.S)


def _leftovers(marker: str) -> list[str]:
    """Processes whose command line names `marker` (the demo's directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


@pytest.mark.slow
@pytest.mark.integration
def test_readme_real_node_section_works_verbatim() -> None:
    block = BLOCK.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert block, "README.md lost its <!-- real-nodes --> block"
    work = ROOT / "demo-federation"  # as the README says: a directory inside the checkout
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "FEDGUARD_SERVER_HOME": str(work / ".fedguard-server")}
    try:
        proc = subprocess.run(["bash", "-e", "-c", block.group(1)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert "completed run id" in out and out.count("node stopped") == 3, out[-3000:]
        assert "SuperLink stopped" in out
        store = RunStore.in_dir(work / ".fedguard-server" / "store", readonly=True)
        (run,) = store.list_runs()
        assert run["status"] == COMPLETED
        config = store.get_run(run["run_id"])["config"]
        assert config["tls"] and config["node-auth"] and config["dp"] and config["secagg"]
        assert config["mode"] == "deployment"
        rounds = store.rounds(run["run_id"])
        assert len(rounds) == 3 and rounds[-1]["server_accuracy"] > rounds[0]["server_accuracy"]
        assert all(r["num_nodes"] == 3 for r in rounds)
        store.close()
        ledger = PrivacyLedger(work / "node-1" / "privacy-ledger.sqlite", create=False)
        assert 0 < ledger.spent("demo/digits-part-1") <= 8.0
        assert not _leftovers(str(work)), "processes left running after the README's stops"
    finally:
        for line in _leftovers(str(work)):
            os.kill(int(line.split(":")[0]), 9)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.integration
def test_a_task_the_core_has_never_seen_trains_on_real_supernodes(tmp_path: Path) -> None:
    """Issue 11: a user's own task (7 features, 5 classes, its own nn.Module) shipped in the FAB
    `flwr run` sends, on three real SuperNodes with TLS, node auth, DP, secagg and the gate."""
    from clients.node.supernode import SuperNode
    from clients.task.scaffold import MANIFEST_TOML, pyproject
    from privacy.compliance.provenance import load_record, verify_record
    from privacy.compliance.signing import read_public_key
    from privacy.transport.certs import write_certificates
    from server.deploy.superlink import SuperLink, TLSFiles
    from tests.conftest import store_says_ended
    from tests.test_task_contract import NOVEL_TASK

    app = tmp_path / "novel-app"
    app.mkdir()
    (app / "pyproject.toml").write_text(pyproject("novel-app").replace(
        'task = "task:task"', 'task = "novel_task:task"'), encoding="utf-8")
    (app / "novel_task.py").write_text(NOVEL_TASK, encoding="utf-8")
    (app / "manifest.toml").write_text(MANIFEST_TOML.format(name="novel"), encoding="utf-8")
    certs = tmp_path / "certs"
    write_certificates(certs, 3, ["127.0.0.1", "localhost"], 30, False)
    tls = TLSFiles(certs / "ca.crt", certs / "server.pem", certs / "server.key")
    data_dir = tmp_path / "store"
    nodes: list[SuperNode] = []
    with SuperLink(tmp_path / "superlink", tls=tls, supernode_auth=True) as link:
        try:
            for i in range(3):
                link.register_node(certs / f"supernode-{i + 1}.pub")
                nodes.append(SuperNode(
                    link.address, {"partition-id": i, "num-partitions": 3},
                    tmp_path / f"node-{i}", root_certificates=certs / "ca.crt",
                    auth_private_key=certs / f"supernode-{i + 1}.key",
                    flwr_home=tmp_path / f"node-{i}" / "flwr-home").start())
            rid = link.submit(app, {"data-dir": str(data_dir), "num-server-rounds": 3,
                                    "dp": True, "secagg": True, "local-epochs": 1})
            status = link.wait_finished(rid, 600, ended=store_says_ended(data_dir, str(rid)))
        finally:
            for node in nodes:
                node.stop()
    assert status == "finished:completed"
    store = RunStore.in_dir(data_dir, readonly=True)
    run = store.get_run(str(rid))
    assert run["status"] == COMPLETED, run["error"]
    assert run["config"]["mode"] == "deployment" and run["config"]["tls"]
    assert len(store.manifests(str(rid))) == 3  # the gate saw every node's manifest
    acc = [m.value for m in store.round_metrics(str(rid))
           if m.source == "server" and m.name == "accuracy"]
    assert len(acc) == 3 and acc[-1] > 0.3 and acc[-1] >= acc[0], acc  # chance is 0.2
    signed = load_record(store.artifacts(str(rid))["provenance"]["path"])
    assert verify_record(signed, read_public_key(data_dir / "signing-key.pub")).ok
    assert len(signed["record"]["privacy"]) == 3
