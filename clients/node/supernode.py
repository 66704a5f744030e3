"""Launch a real Flower SuperNode for this node, with its data path in the node config.

By default the SuperNode runs with `--isolation process` and fedguard's warm executor
(clients/node/executor.py) serves its Runtime API, so one long-lived process runs every message;
`warm=False` keeps Flower's own per-message `flwr-clientapp` processes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy.processes import LaunchError, Process, flower_env, free_port, stop_all, tool

__all__ = ["NodeLaunchError", "SuperNode", "free_port", "node_config_arg", "stop_supernodes"]


class NodeLaunchError(LaunchError):
    """The SuperNode could not start; one line naming the cause and the fix."""


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
    auth_private_key: Path | None = None  # Flower derives the public key from it
    port: int = field(default_factory=free_port)  # the SuperNode's Runtime API
    warm: bool = True
    flwr_home: Path | None = None
    process: Process | None = None
    executor: Process | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"supernode-{self.port}.log"

    def command(self) -> list[str]:
        cmd = [
            tool("flower-supernode"),
            "--superlink", self.superlink,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--isolation", "process" if self.warm else "subprocess",
            "--max-retries", "30",
            "--max-wait-time", "120",
        ]
        if self.node_config:
            cmd += ["--node-config", node_config_arg(self.node_config)]
        if self.root_certificates:
            cmd += ["--root-certificates", str(self.root_certificates)]
        else:
            cmd.append("--insecure")
        if self.auth_private_key:
            cmd += ["--auth-supernode-private-key", str(self.auth_private_key)]
        return cmd

    def executor_command(self) -> list[str]:
        return [sys.executable, "-m", "clients.node.executor", "--runtime-api",
                f"127.0.0.1:{self.port}"]

    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home or self.workdir / "flwr-home")

    def start(self) -> SuperNode:
        self.process = Process(self.command(), self.log_path, self.env(), self.workdir).start()
        try:
            if self.warm:
                self.process.wait_port(self.port, 60.0)
                self.start_executor()
            else:
                time.sleep(0.5)
            if not self.process.alive():
                raise NodeLaunchError(str(self.process.exited_error()))
        except LaunchError as err:
            self.stop()
            raise NodeLaunchError(str(err)) from None
        return self

    def start_executor(self) -> None:
        log = self.workdir / f"executor-{self.port}.log"
        self.executor = Process(self.executor_command(), log, self.env(), self.workdir).start()

    def ensure_executor(self) -> bool:
        """Restart the warm executor if it died (a crash in a task); True if it was."""
        if not self.warm or (self.executor is not None and self.executor.alive()):
            return False
        if self.alive():
            self.start_executor()
            return True
        return False

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def kill(self) -> None:
        """SIGKILL the node and its ClientApp processes (a crash, for fault tests)."""
        for proc in (self.executor, self.process):
            if proc is not None:
                proc.kill()

    def stop(self, grace: float = 5.0) -> None:
        stop_all([self.executor, self.process], grace)

    def __enter__(self) -> SuperNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_supernodes(nodes: Iterable[SuperNode], grace: float = 5.0) -> None:
    """Stop several SuperNodes (and their executors) with overlapping graceful shutdowns."""
    stop_all([p for n in nodes for p in (n.executor, n.process)], grace)
