"""Launch a real Flower SuperNode for this node, with its data path in the node config."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy.processes import LaunchError, Process, flower_env, free_port, tool

__all__ = ["NodeLaunchError", "SuperNode", "free_port", "node_config_arg"]


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
    auth_private_key: Path | None = None
    auth_public_key: Path | None = None
    port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"supernode-{self.port}.log"

    def command(self) -> list[str]:
        cmd = [
            tool("flower-supernode"),
            "--superlink", self.superlink,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--isolation", "subprocess",
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
        if self.auth_public_key:
            cmd += ["--auth-supernode-public-key", str(self.auth_public_key)]
        return cmd

    def start(self) -> SuperNode:
        self.process = Process(self.command(), self.log_path, flower_env(), self.workdir).start()
        time.sleep(0.5)
        if not self.process.alive():
            raise NodeLaunchError(str(self.process.exited_error()))
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def kill(self) -> None:
        """SIGKILL the node and its ClientApp processes (a crash, for fault tests)."""
        if self.process is not None:
            self.process.kill()

    def stop(self, grace: float = 5.0) -> None:
        if self.process is not None:
            self.process.stop(grace)

    def __enter__(self) -> SuperNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
