"""Start, use and stop a Flower SuperLink we own, and talk to it through the `flwr` CLI.

Used by the simulation runner, the benchmarks and the integration tests. Everything runs against a
project-local FLWR_HOME, with runtime dependency installation disabled (offline machines), and
whoever starts a process here also stops it, including the Ray workers a simulation spawns.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy.processes import LaunchError, Process, flower_env, free_port, tool

__all__ = ["LaunchError", "SuperLink", "TLSFiles", "free_port"]
FLWR_LS_EVERY_S = 20.0  # `flwr ls` costs ~1.35 CPU-seconds: ask Flower rarely

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
    host: str = "127.0.0.1"  # 0.0.0.0 for nodes on other machines
    port: int = field(default_factory=free_port)  # flwr 1.41 serves Control, Fleet and Runtime here
    process: Process | None = None

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
            tool("flower-superlink"),
            "--host",
            self.host,
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
        self.process = Process(cmd, self.log_path, flower_env(self.flwr_home), self.workdir).start()
        try:
            self.process.wait_port(self.port, timeout)
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
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        """SIGKILL the SuperLink and everything it started: a server crash."""
        if self.process is not None:
            self.process.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def __enter__(self) -> SuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the flwr CLI against this SuperLink ------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool("flwr"), *args],
            capture_output=True,
            text=True,
            env=flower_env(self.flwr_home),
            timeout=timeout,
        )

    def submit(
        self,
        app_dir: Path,
        run_config: Mapping[str, Any],
        federation_config: Mapping[str, Any] | None = None,
    ) -> int:
        """`flwr run APP fedguard --format json`; returns the Flower run id."""
        check_declared(app_dir, run_config)
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

    def wait_finished(self, run_id: int, timeout: float,
                      ended: Callable[[], bool] | None = None) -> str:
        """Flower's final status of a run. `ended()` (e.g. "the run store says the run is
        over") is polled cheaply every 0.25 s; Flower itself is asked only every
        FLWR_LS_EVERY_S seconds, and as soon as `ended()` turns true."""
        deadline = time.monotonic() + timeout
        status, next_ask = "unknown", 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            done = ended() if ended is not None else False
            if done or now >= next_ask:
                status = self.run_status(run_id)
                if status.startswith("finished"):
                    return status
                next_ask = now + (2.0 if done else FLWR_LS_EVERY_S if ended else 5.0)
            time.sleep(0.25)
        return status

    def register_node(self, public_key: Path) -> None:
        """Allow a SuperNode's public key (SuperNode authentication)."""
        res = self.flwr("supernode", "register", str(public_key), "fedguard")
        if res.returncode != 0:
            raise LaunchError(f"registering {public_key} failed: "
                              f"{(res.stderr or res.stdout).strip().splitlines()[-1:]}")

    def stop_run(self, run_id: int) -> None:
        self.flwr("stop", str(run_id), "fedguard", timeout=60)


def check_declared(app_dir: Path, run_config: Mapping[str, Any]) -> None:
    """Flower silently drops run-config overrides the app does not declare: refuse them."""
    import tomllib

    try:
        data = tomllib.loads((Path(app_dir) / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise LaunchError(f"{app_dir}/pyproject.toml cannot be read ({err}); give a Flower app "
                          "directory") from None
    declared = set(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))
    unknown = sorted(set(run_config) - declared)
    if unknown:
        raise LaunchError(f"run config key {unknown[0]!r} is not declared in {app_dir}/"
                          "pyproject.toml [tool.flwr.app.config]; add it there (Flower ignores "
                          "undeclared keys)")


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


def parse_value(raw: str) -> Any:
    """A `--set key=value` value as TOML would read it: bool, int, float, else a string."""
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw.strip("'\"")
