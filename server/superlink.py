"""Start, use and stop a Flower SuperLink we own, and talk to it through the `flwr` CLI.

Used by the simulation runner, the benchmarks and the integration tests. Everything runs against a
project-local FLWR_HOME, with runtime dependency installation disabled (offline machines), and
whoever starts a process here also stops it, including the Ray workers a simulation spawns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent


class LaunchError(RuntimeError):
    """A Flower process could not be started or answered badly; one line with the fix."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flwr_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower commands: our venv first, local FLWR_HOME, no runtime installs."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.update(extra or {})
    return env


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise LaunchError(f"`{name}` not found; install the project first (make install)")
    return found


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise LaunchError(
                f"{Path(proc.args[0]).name} exited with code {proc.returncode}: "
                f"{' | '.join(tail)[-400:]} (log: {log})"
            )
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise LaunchError(f"port {port} did not open within {timeout:.0f}s (log: {log})")


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (Linux /proc), gathered before a kill orphans them.

    Ray starts agents in their own process groups, so killing our group alone leaves them running.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to a process, its group and every descendant (a crash, for fault tests)."""
    pids = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the whole tree, then SIGKILL what survives (Ray agents ignore SIGTERM)."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree + descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


@dataclass
class TLSFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass
class SuperLink:
    """A `flower-superlink` process on free loopback ports, owned by this object."""

    workdir: Path
    simulation: bool = False
    tls: TLSFiles | None = None
    supernode_auth: bool = False
    extra_args: Sequence[str] = ()
    port: int = field(default_factory=free_port)  # flwr 1.41 serves Control, Fleet and Runtime here
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr-home"

    @property
    def log_path(self) -> Path:
        return self.workdir / "superlink.log"

    def start(self, timeout: float = 60.0) -> SuperLink:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        cmd = [
            _tool("flower-superlink"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.workdir / "superlink.db"),
            "--disable-runtime-dependency-installation",
            "--isolation",
            "subprocess",
        ]
        if self.simulation:
            cmd.append("--simulation")
        if self.tls:
            cmd += [
                "--ssl-ca-certfile",
                str(self.tls.ca_cert),
                "--ssl-certfile",
                str(self.tls.server_cert),
                "--ssl-keyfile",
                str(self.tls.server_key),
            ]
        else:
            cmd.append("--insecure")
        if self.supernode_auth:
            cmd.append("--enable-supernode-auth")
        cmd += list(self.extra_args)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=flwr_env(self.flwr_home),
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        try:
            _wait_port(self.port, self.proc, self.log_path, timeout)
        except LaunchError:
            self.stop()
            raise
        self.write_connection()
        return self

    def write_connection(self, name: str = "fedguard") -> None:
        """Point `flwr` (via FLWR_HOME/config.toml) at this SuperLink's Control API."""
        lines = ['[superlink]', f'default = "{name}"', "", f"[superlink.{name}]"]
        lines.append(f'address = "{self.address}"')
        if self.tls:
            lines.append(f'root-certificates = "{self.tls.ca_cert}"')
        else:
            lines.append("insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)

    def kill(self) -> None:
        """SIGKILL the SuperLink and everything it started: a server crash."""
        if self.proc is not None:
            kill_tree(self.proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def __enter__(self) -> SuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the flwr CLI against this SuperLink ------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_tool("flwr"), *args],
            capture_output=True,
            text=True,
            env=flwr_env(self.flwr_home),
            timeout=timeout,
        )

    def submit(
        self,
        app_dir: Path,
        run_config: Mapping[str, Any],
        federation_config: Mapping[str, Any] | None = None,
    ) -> int:
        """`flwr run APP fedguard --format json`; returns the Flower run id."""
        args = ["run", str(app_dir), "fedguard", "--format", "json"]
        if not self.simulation:  # the coordinator's facts the ServerApp cannot observe itself
            run_config = {"tls": self.tls is not None, "node-auth": self.supernode_auth,
                          **run_config}
        if run_config:
            args += ["--run-config", " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())]
        if federation_config:
            args += [
                "--federation-config",
                " ".join(f"{k}={_toml(v)}" for k, v in federation_config.items()),
            ]
        res = self.flwr(*args)
        payload = _last_json(res.stdout)
        if res.returncode != 0 or not payload or not payload.get("success", False):
            msg = (payload or {}).get("error-message") or (res.stderr or res.stdout).strip()
            raise LaunchError(f"flwr run failed: {msg.splitlines()[-1] if msg else res.returncode}")
        return int(payload["run-id"])

    def run_status(self, run_id: int) -> str:
        """Flower's status of a run, e.g. 'pending', 'running', 'finished:completed'."""
        res = self.flwr("ls", "fedguard", "--run-id", str(run_id), "--format", "json")
        payload = _last_json(res.stdout) or {}
        for run in payload.get("runs", []):
            if int(run.get("run-id", -1)) == run_id:
                return str(run.get("status", "unknown"))
        return "unknown"

    def wait_finished(self, run_id: int, timeout: float, poll: float = 1.0) -> str:
        deadline = time.monotonic() + timeout
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(poll)
        return status

    def register_node(self, public_key: Path) -> None:
        """Allow a SuperNode's public key (SuperNode authentication)."""
        res = self.flwr("supernode", "register", str(public_key), "fedguard")
        if res.returncode != 0:
            raise LaunchError(f"registering {public_key} failed: "
                              f"{(res.stderr or res.stdout).strip().splitlines()[-1:]}")

    def stop_run(self, run_id: int) -> None:
        self.flwr("stop", str(run_id), "fedguard", timeout=60)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _last_json(text: str) -> dict[str, Any] | None:
    """`flwr --format json` prints one JSON object, possibly after other output."""
    start = text.find("{")
    while start != -1:
        try:
            obj = json.loads(text[start:])
            return obj if isinstance(obj, dict) else None
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    return None
