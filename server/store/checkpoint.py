"""Atomic model checkpoints: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

from pathlib import Path

import torch

from privacy.files import atomic_writer, sha256_file


def checkpoint_path(run_dir: Path, round_: int) -> Path:
    return run_dir / f"round-{round_:04d}.pt"


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], round_: int) -> str:
    """Write `{round, state}` atomically; return the file's SHA-256."""
    with atomic_writer(path) as fh:
        torch.save({"round": round_, "state_dict": state}, fh)
    return sha256_file(path)


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not match the hash the run store recorded."""


def load_checkpoint(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint's state dict, refusing one whose bytes differ from the recorded hash."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; the run cannot resume from it")
    if expected_sha256 and sha256_file(path) != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path} does not match its recorded SHA-256; it was modified or corrupted"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return blob["state_dict"]
