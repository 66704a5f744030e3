"""Launch a real Flower SuperNode for this node, with its data path in the node config."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent


class NodeLaunchError(RuntimeError):
    """The SuperNode could not start; one line naming the cause and the fix."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_config_arg(values: Mapping[str, Any]) -> str:
    """Flower's `--node-config` syntax: space-separated TOML key=value pairs."""
    parts = []
    for key, val in values.items():
        if isinstance(val, bool):
            parts.append(f"{key}={'true' if val else 'false'}")
        elif isinstance(val, int | float):
            parts.append(f"{key}={val}")
        else:
            text = str(val)
            if "'" in text:
                raise NodeLaunchError(f"node config {key}: values cannot contain a single quote")
            parts.append(f"{key}='{text}'")
    return " ".join(parts)


@dataclass
class SuperNode:
    """A `flower-supernode` process connected to a SuperLink's Fleet API."""

    superlink: str
    node_config: Mapping[str, Any]
    workdir: Path
    root_certificates: Path | None = None
    auth_private_key: Path | None = None
    auth_public_key: Path | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"supernode-{self.port}.log"

    def command(self) -> list[str]:
        exe = VENV_BIN / "flower-supernode"
        cmd = [
            str(exe) if exe.exists() else "flower-supernode",
            "--superlink",
            self.superlink,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--isolation",
            "subprocess",
            "--max-retries",
            "30",
            "--max-wait-time",
            "120",
        ]
        if self.node_config:
            cmd += ["--node-config", node_config_arg(self.node_config)]
        if self.root_certificates:
            cmd += ["--root-certificates", str(self.root_certificates)]
        else:
            cmd.append("--insecure")
        if self.auth_private_key:
            cmd += ["--auth-supernode-private-key", str(self.auth_private_key)]
        if self.auth_public_key:
            cmd += ["--auth-supernode-public-key", str(self.auth_public_key)]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self) -> SuperNode:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        time.sleep(0.5)
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-2:]
            raise NodeLaunchError(
                f"flower-supernode exited with code {self.proc.returncode}: {' | '.join(tail)}"
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node and its ClientApp processes (a crash, for fault tests)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)

    def __enter__(self) -> SuperNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
