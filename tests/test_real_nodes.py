"""The README's real-node section, run verbatim: coordinator and three nodes as separate
processes, TLS, node authentication, DP and secure aggregation, and everything stopped after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from privacy.compliance.provenance import load_record, verify_record
from privacy.compliance.signing import read_public_key
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
        assert len(rounds) == 2 and rounds[-1]["server_accuracy"] > rounds[0]["server_accuracy"]
        assert all(r["num_nodes"] == 3 for r in rounds)
        for r in rounds:  # every round's secure sum held all three masked inputs
            facts = json.loads(r["extra"])["secagg"]
            assert len(facts["contributors"]) == 3 and facts["dropped"] == {}
        signed = load_record(store.artifacts(run["run_id"])["provenance"]["path"])
        assert verify_record(signed, read_public_key(store.path.parent / "signing-key.pub")).ok
        assert len(signed["record"]["privacy"]) == 3  # each node's DP spend
        store.close()
        ledger = PrivacyLedger(work / "node-1" / "privacy-ledger.sqlite", create=False)
        assert 0 < ledger.spent("demo/digits-part-1") <= 8.0
        assert not _leftovers(str(work)), "processes left running after the README's stops"
    finally:
        for line in _leftovers(str(work)):
            os.kill(int(line.split(":")[0]), 9)
        shutil.rmtree(work, ignore_errors=True)
