"""Append-only, hash-chained audit log (JSON lines) with a head file that catches truncation.

Each line is one entry ``{seq, ts, kind, payload, prev, hash}`` where ``hash`` is SHA-256 over
the canonical JSON of the other fields and ``prev`` is the previous entry's hash (64 zeros for
the first). Changing, deleting, inserting or reordering any entry breaks ``seq``, ``prev`` or
``hash`` from that line on, which :meth:`AuditLog.verify` reports with the first bad line.

Cutting entries off the *end* leaves a valid shorter chain, so every append also rewrites a
side file ``<log>.head`` (atomically) holding the last ``seq`` and ``hash``; verification
requires the head entry to be present. If the log was opened with the server's Ed25519 key, the
head is signed too, so an attacker who rewrites both files still needs that key. What this does
*not* detect: someone with write access *and* the key (or, without a key, someone who rewrites
log and head consistently) can forge history; publish the head hash elsewhere (e.g. in a signed
provenance record) to pin it.

Entries are fsync'd before :meth:`append` returns. A crash mid-write leaves at most one partial
last line, which was never acknowledged; the next append removes it. A crash between the log
write and the head update leaves the log ahead of the head, which verification accepts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.compliance.signing import (
    SigningError,
    canonical_json,
    public_key_b64,
    sign_bytes,
    verify_bytes,
)

__all__ = ["GENESIS", "AuditError", "AuditLog", "AuditVerification", "entry_hash"]

GENESIS = "0" * 64
_FIELDS = ("seq", "ts", "kind", "payload", "prev", "hash")
_MAX_KIND = 100


class AuditError(ValueError):
    """Bad input to the audit log (kind, payload) or an unusable log file."""


@dataclass(frozen=True)
class AuditVerification:
    """Outcome of :meth:`AuditLog.verify`; ``first_bad`` is a 1-based line number."""

    ok: bool
    count: int
    first_bad: int | None = None
    reason: str = ""


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of an entry without its own ``hash`` field."""
    body = {k: entry[k] for k in ("seq", "ts", "kind", "payload", "prev")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _head_message(seq: int, digest: str) -> bytes:
    return canonical_json({"audit-head": {"seq": seq, "hash": digest}})


def _last_line(fh: Any, size: int) -> bytes:
    """Last complete line of a file whose size is `size` and which ends in a newline."""
    pos, buf = size, b""
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        idx = buf.rfind(b"\n", 0, len(buf) - 1)
        if idx >= 0:
            return buf[idx + 1 : -1]
    return buf[:-1]


class AuditLog:
    """An append-only audit log at `path`; pass `key` to sign the head file."""

    def __init__(self, path: str | Path, key: Ed25519PrivateKey | None = None) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self._key = key

    # -- writing ---------------------------------------------------------------------------
    def append(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Append one entry, fsync it, update the head; return the entry written."""
        return self.extend([(kind, payload)])[0]

    def extend(self, items: Iterable[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append several entries with a single fsync (e.g. all verdicts of one report)."""
        items = list(items)
        for kind, payload in items:
            if not isinstance(kind, str) or not kind or len(kind) > _MAX_KIND:
                raise AuditError(f"audit kind {kind!r} is invalid; use a short non-empty string")
            if not isinstance(payload, dict):
                raise AuditError(f"audit payload for {kind!r} must be a dict, not {type(payload)}")
        if not items:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                seq, prev = self._tail(fh)
                written: list[dict[str, Any]] = []
                lines: list[bytes] = []
                for kind, payload in items:
                    seq += 1
                    entry: dict[str, Any] = {
                        "seq": seq,
                        "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
                        "kind": kind,
                        "payload": payload,
                        "prev": prev,
                    }
                    try:
                        entry["hash"] = entry_hash(entry)
                    except SigningError as exc:
                        raise AuditError(f"audit payload for {kind!r}: {exc}") from None
                    prev = entry["hash"]
                    lines.append(canonical_json(entry) + b"\n")
                    written.append(entry)
                fh.seek(0, os.SEEK_END)
                fh.write(b"".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
                self._write_head(seq, prev)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return written

    def _tail(self, fh: Any) -> tuple[int, str]:
        """(seq, hash) of the last entry, dropping a partial line left by a crash."""
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0, GENESIS
        fh.seek(size - 1)
        if fh.read(1) != b"\n":
            fh.seek(0)
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
            size = cut
            if size == 0:
                return 0, GENESIS
        try:
            last = json.loads(_last_line(fh, size))
            return int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(
                f"audit log {self.path} has a corrupt last entry; run "
                f"`fedguard-policy verify-audit {self.path}` and restore it from backup"
            ) from None

    def _write_head(self, seq: int, digest: str) -> None:
        head: dict[str, Any] = {"seq": seq, "hash": digest}
        if self._key is not None:
            head["public_key"] = public_key_b64(self._key)
            head["signature"] = sign_bytes(_head_message(seq, digest), self._key)
        fd, tmp = tempfile.mkstemp(prefix=".head-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(canonical_json(head))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.head_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- reading ---------------------------------------------------------------------------
    def entries(self) -> Iterator[dict[str, Any]]:
        """Parsed entries in file order (no verification; use :meth:`verify` for that)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            for raw in fh:
                with contextlib.suppress(ValueError):
                    yield json.loads(raw)

    def verify(self, trusted_public_key: str | None = None) -> AuditVerification:
        """Check the whole chain and the head; never raises for a damaged file.

        `trusted_public_key` (base64) pins the key the head must be signed with; without it a
        signed head is checked against the key it names.
        """
        if not self.path.exists():
            return AuditVerification(False, 0, None, f"audit log {self.path} does not exist")
        prev, count, hashes = GENESIS, 0, [GENESIS]
        with open(self.path, "rb") as fh:
            data = fh.read()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for lineno, raw in enumerate(lines, start=1):
            bad = self._check_line(raw, lineno, prev)
            if bad:
                return AuditVerification(False, count, lineno, bad)
            entry = json.loads(raw)
            prev = entry["hash"]
            hashes.append(prev)
            count += 1
        if not data.endswith(b"\n") and data:
            return AuditVerification(False, count, count, "last line is incomplete")
        return self._check_head(count, hashes, trusted_public_key)

    @staticmethod
    def _check_line(raw: bytes, lineno: int, prev: str) -> str:
        try:
            entry = json.loads(raw)
        except ValueError:
            return f"line {lineno} is not valid JSON"
        if not isinstance(entry, dict) or tuple(sorted(entry)) != tuple(sorted(_FIELDS)):
            return f"line {lineno} does not have exactly the fields {', '.join(_FIELDS)}"
        if entry["seq"] != lineno or isinstance(entry["seq"], bool):
            return f"line {lineno} has seq {entry['seq']!r} (entries deleted, inserted or moved)"
        if entry["prev"] != prev:
            return f"line {lineno} does not chain to the previous entry (edited or reordered)"
        try:
            if entry_hash(entry) != entry["hash"]:
                return f"line {lineno} content does not match its hash (edited)"
        except SigningError:
            return f"line {lineno} holds a value that is not canonical JSON"
        return ""

    def _check_head(
        self, count: int, hashes: list[str], trusted_public_key: str | None
    ) -> AuditVerification:
        if not self.head_path.exists():
            if count == 0:
                return AuditVerification(True, 0)
            return AuditVerification(
                False, count, None, f"head file {self.head_path.name} is missing; truncation "
                "cannot be ruled out"
            )
        try:
            head = json.loads(self.head_path.read_bytes())
            seq, digest = int(head["seq"]), str(head["hash"])
        except (ValueError, KeyError, TypeError, OSError):
            return AuditVerification(False, count, None, "head file is unreadable")
        if seq > count:
            return AuditVerification(
                False, count, count + 1, f"log truncated: head records {seq} entries, log has "
                f"{count}"
            )
        if seq < 0 or hashes[seq] != digest:
            return AuditVerification(False, count, seq or 1, "head hash does not match entry "
                                     f"{seq} (log or head edited)")
        signature, public = head.get("signature"), head.get("public_key")
        if trusted_public_key is not None and public != trusted_public_key:
            return AuditVerification(False, count, None, "head is not signed by the trusted key")
        signed = signature is not None or public is not None
        if signed and not (
            isinstance(signature, str)
            and isinstance(public, str)
            and verify_bytes(_head_message(seq, digest), signature, public)
        ):
            return AuditVerification(False, count, None, "head signature is invalid")
        return AuditVerification(True, count)
