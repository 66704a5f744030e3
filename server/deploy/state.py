"""What `fedguard-server start` tells its other subcommands: where the running SuperLink is.

One small JSON file in the server's home, written atomically when the SuperLink is up and
removed when it stops; a stale file (its process gone) counts as "not running".
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from privacy.files import atomic_write

STATE_FILE = "superlink.json"


@dataclass(frozen=True)
class ServerState:
    """A running coordinator SuperLink."""

    pid: int
    address: str
    flwr_home: str
    store_dir: str
    tls: bool
    node_auth: bool
    ca_cert: str = ""
    start_pid: int = 0  # the `fedguard-server start` process that owns the SuperLink

    def save(self, home: Path) -> None:
        atomic_write(home / STATE_FILE, json.dumps(asdict(self), indent=2).encode("utf-8"))

    @classmethod
    def load(cls, home: Path) -> ServerState | None:
        """The state of a live SuperLink started from `home`, else None."""
        try:
            data = json.loads((home / STATE_FILE).read_text(encoding="utf-8"))
            state = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        try:
            os.kill(state.pid, 0)
        except (ProcessLookupError, PermissionError):
            return None
        return state


def clear(home: Path) -> None:
    (home / STATE_FILE).unlink(missing_ok=True)
