"""Every launcher stops everything it started, on SIGTERM, SIGINT and SIGHUP (issue 16.5).

The launchers are the real console scripts; a process counts as started by them when it is a
descendant of theirs at the moment the signal is sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privacy.processes import descendants, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _stop_and_check(proc: subprocess.Popen, sig: int, at_least: int) -> None:
    tree = descendants(proc.pid)
    assert len(tree) >= at_least, f"expected the launcher to have started {at_least}+ processes"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    _wait(lambda: not any(_alive(p) for p in tree), 30, "every started process to exit")


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_fedguard_server_start_stops_the_superlink_and_its_children(tmp_path: Path,
                                                                    sig: int) -> None:
    port = free_port()
    proc = subprocess.Popen([BIN / "fedguard-server", "--home", tmp_path, "start", "--insecure",
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: (tmp_path / "superlink.json").exists(), 60, "the SuperLink to start")
        _stop_and_check(proc, sig, at_least=1)
        assert not (tmp_path / "superlink.json").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_fedguard_node_start_stops_the_supernode_and_its_executor(tmp_path: Path,
                                                                  sig: int) -> None:
    manifest = ROOT / "clients" / "tasks" / "manifests" / "digits.toml"
    proc = subprocess.Popen([BIN / "fedguard-node", "start", "--insecure", "--superlink",
                             f"127.0.0.1:{free_port()}", "--partition-id", "0",
                             "--num-partitions", "2", "--data-dir", tmp_path / "node",
                             "--manifest", manifest], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: (tmp_path / "node" / "node.json").exists(), 60, "the node to start")
        _wait(lambda: len(descendants(proc.pid)) >= 2, 30, "the SuperNode and the executor")
        _stop_and_check(proc, sig, at_least=2)
        assert not (tmp_path / "node" / "node.json").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_node_without_a_manifest_refuses_to_start_naming_the_fix(tmp_path: Path) -> None:
    proc = subprocess.run([BIN / "fedguard-node", "start", "--insecure", "--partition-id", "0",
                           "--num-partitions", "2", "--data-dir", tmp_path / "n"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "\n" not in err and "fedguard-node manifest init" in err and "--no-manifest" in err
