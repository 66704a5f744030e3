"""Start and stop the Flower processes fedguard launches (SuperLink, SuperNode), one way.

Whoever starts a process here also stops it, with everything below it: Ray and the SuperExec
start children in their own process groups, so stopping a group alone leaves them running.
`stop_on_signals` makes a launcher stop what it started on SIGTERM, SIGINT and SIGHUP.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

VENV_BIN = Path(sys.executable).parent


class LaunchError(RuntimeError):
    """A process could not be started or answered badly; one line with the fix."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    """A console script of this environment (the venv first), or LaunchError."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise LaunchError(f"`{name}` not found; install the project first (make install)")
    return found


def flower_env(flwr_home: Path | None = None, extra: Mapping[str, str] | None = None
               ) -> dict[str, str]:
    """Environment for Flower commands: our venv first, no update checks or runtime installs
    (offline machines), one BLAS thread per process."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.update(extra or {})
    return env


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (Linux /proc), gathered before a kill orphans them."""
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


class Process:
    """One launched process with its log file; owns its whole process tree."""

    def __init__(self, cmd: Sequence[str], log_path: Path, env: Mapping[str, str],
                 cwd: Path) -> None:
        self.cmd = list(cmd)
        self.log_path = log_path
        self.env = dict(env)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=self.cwd, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 3) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return " | ".join(text)[-400:]

    def exited_error(self) -> LaunchError:
        code = self.proc.returncode if self.proc else None
        return LaunchError(f"{Path(self.cmd[0]).name} exited with code {code}: {self.tail()} "
                           f"(log: {self.log_path})")

    def wait_port(self, port: int, timeout: float) -> None:
        """Until `port` accepts connections; LaunchError if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise self.exited_error()
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise LaunchError(f"port {port} did not open within {timeout:.0f}s (log: "
                          f"{self.log_path})")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the process, its group and every descendant (a crash, in tests)."""
        if self.proc is None:
            return
        pids = descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM the process group, without waiting (see `stop_all`)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole tree, then SIGKILL what survives (Ray agents ignore SIGTERM)."""
        if self.proc is None:
            return
        tree = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        for pid in tree:  # children in their own groups got no SIGTERM from killpg
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + min(grace, 2.0)
        while time.monotonic() < deadline and any(_alive(p) for p in tree):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in tree + descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie waits for its parent to reap it: it is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_all(processes: Iterable[Process | None], grace: float = 5.0) -> None:
    """Stop several processes at once: SIGTERM them all first, so their graceful shutdowns
    overlap instead of queueing one `grace` after another."""
    live = [p for p in processes if p is not None]
    for proc in live:
        proc.terminate()
    for proc in live:
        proc.stop(grace)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT/SIGHUP call `stop()` and then exit with 128 + signal;
    on leaving the block `stop()` runs too (idempotent stops are the caller's job)."""
    previous: dict[int, object] = {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        for sig in STOP_SIGNALS:  # a second signal while stopping must not interrupt the stop
            signal.signal(sig, signal.SIG_IGN)
        stop()
        raise SystemExit(128 + signum)

    for sig in STOP_SIGNALS:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        stop()
