"""Which data manifest a node sends before round 1 (the file's bytes, never data)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ManifestMissing(FileNotFoundError):
    """The node has no manifest to send; one line with the fix."""


def manifest_bytes(node_config: Mapping[str, Any], run_config: Mapping[str, Any],
                   demo_manifest: str | Path | None = None) -> bytes:
    """The node's own `manifest-path`; else (simulation) `<manifest-dir>/partition-<id>.toml`;
    else, for a virtual node of a task that ships one (bundled datasets), the task's manifest."""
    own = node_config.get("manifest-path")
    if own:
        path = Path(str(own))
        if not path.is_file():
            raise ManifestMissing(f"manifest-path {path}: file not found; create one with "
                                  "`fedguard-node manifest init`")
        return path.read_bytes()
    pid = node_config.get("partition-id")
    sim_dir = str(run_config.get("manifest-dir", ""))
    if sim_dir and pid is not None:
        path = Path(sim_dir) / f"partition-{int(pid)}.toml"
        if path.is_file():
            return path.read_bytes()
    if pid is not None and not node_config.get("data-path") and demo_manifest:
        path = Path(demo_manifest)
        if path.is_file():
            return path.read_bytes()
    raise ManifestMissing("this node has no data manifest; start it with --manifest FILE "
                          "(create one with `fedguard-node manifest init`)")
