"""Append-only, hash-chained audit log (JSON lines) whose head is signed by the server's key.

Each line is one entry ``{seq, ts, kind, payload, prev, hash}`` where ``hash`` is SHA-256 over
the canonical JSON of the other fields and ``prev`` is the previous entry's hash (64 zeros for
the first). Changing, deleting, inserting or reordering any entry breaks ``seq``, ``prev`` or
``hash`` from that line on, which :meth:`AuditLog.verify` reports with the first bad line.

A chain alone cannot show where it ends, so a side file ``<log>.head`` names the last entry
(``seq`` and ``hash``) and, when the log was opened with the server's Ed25519 key, is signed.
Verification against the trusted public key then requires the log to end exactly at the signed
head: entries cut off the end, appended after it, or a head rewritten or stripped of its
signature all fail. Whoever holds the key can still sign any history; the head recorded in the
signed provenance record, and the public key published outside the data directory, limit that.

Crash safety without a window that a forger could use: an append first writes a signed head
that also names the entries about to be written as ``pending``, then appends and fsyncs them,
then writes the head again without ``pending``. The log therefore always ends at the committed
head or at the pending one, both signed. A crash in the middle of the entries leaves a tail that
was never acknowledged: verification reports it, and the next append removes it. The writer
refuses to append to a log that does not match its head, so the server never signs over
entries that someone else added.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.compliance.signing import (
    SigningError,
    canonical_json,
    key_id,
    public_key_b64,
    sign_bytes,
    verify_bytes,
)
from privacy.files import atomic_write

__all__ = [
    "GENESIS",
    "AuditError",
    "AuditHead",
    "AuditLog",
    "AuditVerification",
    "entry_hash",
    "parse_head",
]

GENESIS = "0" * 64
_FIELDS = ("seq", "ts", "kind", "payload", "prev", "hash")
_HEAD_FIELDS = frozenset({"seq", "hash", "public_key", "signature", "pending"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_KIND = 100
_MAX_HEAD_BYTES = 64 * 1024


class AuditError(ValueError):
    """Bad input to the audit log (kind, payload) or an unusable log file."""


@dataclass(frozen=True)
class AuditVerification:
    """Outcome of :meth:`AuditLog.verify`; ``first_bad`` is a 1-based line number.

    ``key_id`` names the trusted key the head was verified with (None for an unsigned log).
    """

    ok: bool
    count: int
    first_bad: int | None = None
    reason: str = ""
    key_id: str | None = None


@dataclass(frozen=True)
class AuditHead:
    """A parsed head: the committed last entry, an optional pending one, the signature."""

    seq: int
    hash: str
    pending: tuple[int, str] | None = None
    public_key: str | None = None
    signature: str | None = None

    def message(self) -> bytes:
        """The bytes the signature covers (a head without `pending` keeps the original form)."""
        body: dict[str, Any] = {"seq": self.seq, "hash": self.hash}
        if self.pending is not None:
            body["pending"] = {"seq": self.pending[0], "hash": self.pending[1]}
        return canonical_json({"audit-head": body})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "hash": self.hash}
        if self.pending is not None:
            out["pending"] = {"seq": self.pending[0], "hash": self.pending[1]}
        if self.public_key is not None:
            out["public_key"] = self.public_key
        if self.signature is not None:
            out["signature"] = self.signature
        return out

    def signature_problem(self, trusted_public_key: str | None) -> str:
        """Why this head does not authenticate under the pin ("" if it does).

        With a pin the head must carry a valid signature by exactly that key; without one
        (a log written without a key) it must carry none: there is no fallback to the key the
        head names, since anyone can name their own.
        """
        signed = self.signature is not None or self.public_key is not None
        if trusted_public_key is None:
            if signed:
                return (f"head is signed (key {key_id(self.public_key or '')}); verify it "
                        "against the server's public key")
            return ""
        if self.signature is None:
            return ("head is not signed by the trusted key (signature stripped, or the log was "
                    "written without a key)")
        if self.public_key is not None and self.public_key != trusted_public_key:
            return (f"head is signed by key {key_id(self.public_key)}, not the trusted key "
                    f"{key_id(trusted_public_key)}")
        if not verify_bytes(self.message(), self.signature, trusted_public_key):
            return "head signature is invalid (head edited, or signed by another key)"
        return ""


def _seq_hash(value: Any, what: str) -> tuple[int, str]:
    if not isinstance(value, Mapping):
        raise AuditError(f"{what} is not an object")
    seq, digest = value.get("seq"), value.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise AuditError(f"{what} has seq {seq!r}; expected an entry number >= 0")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise AuditError(f"{what} has no valid SHA-256 hash")
    return seq, digest


def parse_head(value: Any) -> AuditHead:
    """Validate a head (from the head file or a provenance record); AuditError says what's wrong."""
    if not isinstance(value, Mapping):
        raise AuditError("head is not a JSON object")
    extra = sorted(str(k) for k in value if k not in _HEAD_FIELDS)
    if extra:
        raise AuditError(f"head has unexpected fields {', '.join(extra)}")
    seq, digest = _seq_hash(value, "head")
    pending = None
    if "pending" in value:
        pending = _seq_hash(value["pending"], "head's pending entry")
        if set(value["pending"]) != {"seq", "hash"} or pending[0] <= seq:
            raise AuditError("head's pending entry is malformed")
    public, signature = value.get("public_key"), value.get("signature")
    for name, field_value in (("public_key", public), ("signature", signature)):
        if field_value is not None and not isinstance(field_value, str):
            raise AuditError(f"head's {name} is not a string")
    return AuditHead(seq, digest, pending, public, signature)


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of an entry without its own ``hash`` field."""
    body = {k: entry[k] for k in ("seq", "ts", "kind", "payload", "prev")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


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


def _span(first: int, last: int) -> str:
    return f"entry {first}" if first == last else f"entries {first}-{last}"


class AuditLog:
    """An append-only audit log at `path`; pass `key` to sign its head (the server does)."""

    def __init__(self, path: str | Path, key: Ed25519PrivateKey | None = None) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")
        self._key = key

    # -- writing ---------------------------------------------------------------------------
    def append(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Append one entry, fsync it, update the head; return the entry written."""
        return self.extend([(kind, payload)])[0]

    def extend(self, items: Iterable[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append several entries with a single fsync (e.g. all verdicts of one report).

        Raises AuditError if the log does not end at its head (see the module docstring).
        """
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
                start, start_hash, keep = self._reconcile(fh, *self._tail(fh))
                if keep != fh.seek(0, os.SEEK_END):
                    self._truncate(fh, keep)  # a partial line, or an append that crashed
                seq, prev = start, start_hash
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
                self._write_head(start, start_hash, pending=(seq, prev))
                fh.seek(0, os.SEEK_END)
                fh.write(b"".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
                self._write_head(seq, prev)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return written

    def _tail(self, fh: Any) -> tuple[int, str, int]:
        """(seq, hash) of the last complete entry and the size up to it (past a partial line
        that a crash left, which was never acknowledged)."""
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0, GENESIS, 0
        fh.seek(size - 1)
        if fh.read(1) != b"\n":
            fh.seek(0)
            size = fh.read().rfind(b"\n") + 1
            if size == 0:
                return 0, GENESIS, 0
        try:
            return (*_seq_hash(json.loads(_last_line(fh, size)), "last entry"), size)
        except (ValueError, RecursionError):
            raise AuditError(
                f"audit log {self.path} has a corrupt last entry; run "
                f"`fedguard-policy verify-audit {self.path}` and restore it from backup"
            ) from None

    @staticmethod
    def _truncate(fh: Any, size: int) -> None:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())

    def _reconcile(self, fh: Any, seq: int, digest: str, size: int) -> tuple[int, str, int]:
        """Check that the log ends at its head before we sign more; undo an interrupted append.

        Returns the (seq, hash) to continue from and the bytes of the log to keep. Anything
        the head does not account for is refused rather than signed over: it was written by
        someone without the key.
        """
        restore = (f"run `fedguard-policy verify-audit {self.path}` and restore the log and its "
                   "head from backup")
        try:
            head = self._read_head()
        except AuditError as exc:
            raise AuditError(f"audit log {self.path}: {exc}; {restore}") from None
        if head is None:
            if seq == 0:
                return seq, digest, size
            raise AuditError(f"audit log {self.path} has entries but no head file; {restore}")
        if self._key is None and head.signature is not None:
            raise AuditError(f"audit log {self.path} is signed by key "
                             f"{key_id(head.public_key or '')}; only the server holding that key "
                             "may append to it")
        mine = public_key_b64(self._key) if self._key is not None else None
        problem = head.signature_problem(mine)
        if problem:
            raise AuditError(f"audit log {self.path}: {problem}; refusing to append; {restore}")
        if (seq, digest) == (head.seq, head.hash) or (seq, digest) == head.pending:
            return seq, digest, size
        if head.pending is not None and head.seq < seq < head.pending[0]:
            cut = self._end_of(fh, head)
            if cut is not None:  # the unacknowledged part of an append that crashed
                return head.seq, head.hash, cut
        raise AuditError(
            f"audit log {self.path} does not end at its head (entry {seq} vs head {head.seq}): "
            f"entries were appended, removed or edited; {restore}"
        )

    @staticmethod
    def _end_of(fh: Any, head: AuditHead) -> int | None:
        """Byte offset just past entry `head.seq` if that entry has the head's hash."""
        if head.seq == 0:
            return 0 if head.hash == GENESIS else None
        fh.seek(0)
        offset = 0
        for number, raw in enumerate(fh, start=1):
            offset += len(raw)
            if number == head.seq:
                try:
                    found = _seq_hash(json.loads(raw), "entry")
                except (ValueError, RecursionError):
                    return None
                return offset if found == (head.seq, head.hash) else None
        return None

    def _write_head(self, seq: int, digest: str, pending: tuple[int, str] | None = None) -> None:
        head = AuditHead(seq, digest, pending)
        if self._key is not None:
            head = AuditHead(seq, digest, pending, public_key_b64(self._key),
                             sign_bytes(head.message(), self._key))
        atomic_write(self.head_path, canonical_json(head.to_json()))

    # -- reading ---------------------------------------------------------------------------
    def entries(self) -> Iterator[dict[str, Any]]:
        """Parsed entries in file order (no verification; use :meth:`verify` for that)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            for raw in fh:
                with contextlib.suppress(ValueError, RecursionError):
                    yield json.loads(raw)

    def _read_head(self) -> AuditHead | None:
        """The parsed head file, None if there is none; AuditError if it is unusable."""
        try:
            with open(self.head_path, "rb") as fh:
                data = fh.read(_MAX_HEAD_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"head file is unreadable ({exc.strerror or exc})") from None
        if len(data) > _MAX_HEAD_BYTES:
            raise AuditError("head file is too large to be a head")
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            raise AuditError("head file is not JSON") from None
        return parse_head(value)

    def head(self) -> dict[str, Any] | None:
        """The current head as JSON (None before the first append), for a record to bind."""
        head = self._read_head()
        return head.to_json() if head is not None else None

    def verify(
        self, trusted_public_key: str | None, *, anchor: tuple[int, str] | None = None
    ) -> AuditVerification:
        """Check the whole chain and that it ends at a head signed by the trusted key.

        `trusted_public_key` (base64) is required: the key the head must be signed with, or
        None for a log written without a key (then only its integrity is checked, which
        anyone able to rewrite both files can fake). `anchor` (seq, hash), e.g. the head a
        signed provenance record holds, must also be an entry of the log. Never raises.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return AuditVerification(False, 0, None, f"audit log {self.path} does not exist")
        except OSError as exc:
            return AuditVerification(False, 0, None, f"audit log {self.path} cannot be read "
                                     f"({exc.strerror or exc})")
        prev, count, hashes = GENESIS, 0, [GENESIS]
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for lineno, raw in enumerate(lines, start=1):
            entry, bad = self._check_line(raw, lineno, prev)
            if bad:
                return AuditVerification(False, count, lineno, bad)
            prev = entry["hash"]
            hashes.append(prev)
            count += 1
        if not data.endswith(b"\n") and data:
            return AuditVerification(False, count, count, "last line is incomplete")
        result = self._check_head(count, hashes, trusted_public_key)
        if result.ok and anchor is not None:
            seq, digest = anchor
            if seq > count:
                return AuditVerification(False, count, count + 1, f"log is shorter than the "
                                         f"recorded head (entry {seq}): truncated")
            if hashes[seq] != digest:
                return AuditVerification(False, count, seq or 1, f"entry {seq} differs from the "
                                         "recorded head (log rewritten)")
        return result

    @staticmethod
    def _check_line(raw: bytes, lineno: int, prev: str) -> tuple[dict[str, Any], str]:
        try:
            entry = json.loads(raw)
        except (ValueError, RecursionError):
            return {}, f"line {lineno} is not valid JSON"
        if not isinstance(entry, dict) or tuple(sorted(entry)) != tuple(sorted(_FIELDS)):
            return {}, f"line {lineno} does not have exactly the fields {', '.join(_FIELDS)}"
        seq = entry["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq != lineno:
            return {}, f"line {lineno} has seq {seq!r} (entries deleted, inserted or moved)"
        if entry["prev"] != prev:
            return {}, f"line {lineno} does not chain to the previous entry (edited or reordered)"
        try:
            if entry_hash(entry) != entry["hash"]:
                return {}, f"line {lineno} content does not match its hash (edited)"
        except (SigningError, RecursionError):
            return {}, f"line {lineno} holds a value that is not canonical JSON"
        return entry, ""

    def _check_head(
        self, count: int, hashes: list[str], trusted_public_key: str | None
    ) -> AuditVerification:
        def fail(reason: str, first_bad: int | None = None) -> AuditVerification:
            return AuditVerification(False, count, first_bad, reason)

        try:
            head = self._read_head()
        except AuditError as exc:
            return fail(str(exc))
        if head is None:
            if count == 0 and trusted_public_key is None:
                return AuditVerification(True, 0)
            return fail(f"head file {self.head_path.name} is missing; truncation or appended "
                        "entries cannot be ruled out")
        problem = head.signature_problem(trusted_public_key)
        if problem:
            return fail(problem)
        kid = key_id(trusted_public_key) if trusted_public_key is not None else None
        ends = {(head.seq, head.hash), head.pending}
        if (count, hashes[count]) in ends:
            return AuditVerification(True, count, key_id=kid)
        if count < head.seq:
            return fail(f"log truncated: head records {head.seq} entries, log has {count}",
                        count + 1)
        if hashes[head.seq] != head.hash:
            return fail(f"head hash does not match entry {head.seq} (log or head edited)",
                        head.seq or 1)
        return fail(f"not covered by the head's signature: {_span(head.seq + 1, count)} after "
                    f"entry {head.seq} (appended later, or left by an interrupted append)",
                    head.seq + 1)
