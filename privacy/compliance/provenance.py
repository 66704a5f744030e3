"""Signed provenance records: which data, privacy settings and checks produced a model.

A record binds the final model's SHA-256 to the chain of round checkpoints, each node's
manifest hash, each node's (epsilon, delta, accountant), the secure-aggregation settings, the
policy verdicts, the software versions and the audit log's signed head. It is signed with the
server's Ed25519 key over canonical JSON. Verification takes the server's public key as a
required pin: the key the record names is for display only, since a forger names their own.
With the pin, anyone can check that nothing in the record changed, that a model file is the one
it describes and that an audit log contains the head the record bound.

The checkpoint list is hash-chained (``chain_i = SHA-256(chain_{i-1}:round:sha256)``), so a
record cannot silently drop or reorder rounds, and the final model must be the last round's
checkpoint: :func:`build_record` refuses anything else.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.compliance.audit import AuditError, AuditHead, AuditLog, parse_head
from privacy.compliance.signing import (
    SigningError,
    canonical_json,
    key_id,
    parse_public_key,
    public_key_b64,
    sign_bytes,
    verify_bytes,
)
from privacy.files import atomic_write, sha256_file

__all__ = [
    "MAX_RECORD_BYTES",
    "SCHEMA",
    "ProvenanceCheck",
    "ProvenanceError",
    "build_record",
    "checkpoint_chain",
    "load_record",
    "sign_record",
    "sha256_file",
    "verify_record",
    "write_record",
]

SCHEMA = "fedguard.provenance/1"
MAX_RECORD_BYTES = 5 * 1024 * 1024  # far above any real record; a bigger file is not one
_GENESIS = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ProvenanceError(ValueError):
    """A provenance input or record file that cannot be used; one line naming it and the fix."""


@dataclass(frozen=True)
class ProvenanceCheck:
    """Result of :func:`verify_record`; ``reasons`` lists every problem found (empty if ok).

    ``ok`` needs the signature checked against a trusted key: with no key given,
    ``signature_checked`` is False and ``ok`` is False even when ``reasons`` is empty.
    ``key_id`` names the trusted key once the record verified.
    """

    ok: bool
    reasons: list[str] = field(default_factory=list)
    key_id: str | None = None
    signature_checked: bool = True


def _check_sha(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ProvenanceError(f"{what}={value!r} is not a SHA-256; pass 64 lowercase hex digits")
    return value


def checkpoint_chain(round_checkpoints: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
    """Hash-chain the (round, sha256) list; rounds must be strictly increasing integers."""
    out: list[dict[str, Any]] = []
    prev, last_round = _GENESIS, None
    for item in round_checkpoints:
        try:
            rnd, digest = item
        except (TypeError, ValueError):
            raise ProvenanceError(
                f"round checkpoint {item!r} is not a (round, sha256) pair; pass a list of pairs"
            ) from None
        if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 0:
            raise ProvenanceError(f"checkpoint round {rnd!r} is not a round number; use an int")
        if last_round is not None and rnd <= last_round:
            raise ProvenanceError(
                f"checkpoint round {rnd} follows round {last_round}; list rounds ascending"
            )
        _check_sha(digest, f"checkpoint sha256 for round {rnd}")
        prev = hashlib.sha256(f"{prev}:{rnd}:{digest}".encode()).hexdigest()
        out.append({"round": rnd, "sha256": digest, "chain": prev})
        last_round = rnd
    return out


def _privacy_entry(node: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ProvenanceError(f"privacy[{node!r}] must be a dict with epsilon, delta, accountant")
    eps, delta, acct = spec.get("epsilon"), spec.get("delta"), spec.get("accountant")
    for name, value in (("epsilon", eps), ("delta", delta)):
        ok = value is None or (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0
        )
        if not ok:
            raise ProvenanceError(
                f"privacy[{node!r}].{name}={value!r} is invalid; use a finite number >= 0 or None"
            )
    if acct is not None and not isinstance(acct, str):
        raise ProvenanceError(f"privacy[{node!r}].accountant={acct!r} must be a string")
    return {"epsilon": eps, "delta": delta, "accountant": acct}


def build_record(
    model_sha256: str,
    round_checkpoints: Sequence[tuple[int, str]],
    manifests: Mapping[str, str],
    privacy: Mapping[str, Mapping[str, Any]],
    secagg: Mapping[str, Any],
    verdicts: Mapping[str, Any],
    versions: Mapping[str, str],
    *,
    audit_head: Mapping[str, Any] | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    """Assemble an unsigned record; raises ProvenanceError on any malformed input."""
    _check_sha(model_sha256, "model_sha256")
    chain = checkpoint_chain(round_checkpoints)
    if chain and chain[-1]["sha256"] != model_sha256:
        raise ProvenanceError(
            f"model_sha256 differs from the last checkpoint (round {chain[-1]['round']}); "
            "record the final round's checkpoint as the model"
        )
    for node, digest in manifests.items():
        _check_sha(digest, f"manifest sha256 for node {node!r}")
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "created": (created or datetime.now(UTC)).isoformat(timespec="seconds"),
        "model": {"sha256": model_sha256},
        "checkpoints": chain,
        "manifests": {str(k): v for k, v in sorted(manifests.items())},
        "privacy": {str(k): _privacy_entry(str(k), v) for k, v in sorted(privacy.items())},
        "secagg": dict(secagg),
        "verdicts": dict(verdicts),
        "versions": dict(versions),
    }
    if audit_head is not None:
        try:
            record["audit_head"] = parse_head(audit_head).to_json()
        except AuditError as exc:
            raise ProvenanceError(f"audit_head: {exc}; pass the audit log's head") from None
    try:
        canonical_json(record)
    except SigningError as exc:
        raise ProvenanceError(f"provenance record: {exc}") from None
    return record


def sign_record(record: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Wrap `record` with an Ed25519 signature over its canonical JSON."""
    try:
        body = canonical_json(dict(record))
    except SigningError as exc:
        raise ProvenanceError(f"provenance record: {exc}") from None
    public = public_key_b64(key)
    return {
        "record": dict(record),
        "alg": "Ed25519",
        "public_key": public,
        "key_id": key_id(public),
        "signature": sign_bytes(body, key),
    }


def _check_chain(record: Mapping[str, Any], reasons: list[str]) -> str | None:
    """Recompute the checkpoint chain; return the last checkpoint's sha256."""
    stored = record.get("checkpoints")
    if not isinstance(stored, list):
        reasons.append("record has no checkpoints list")
        return None
    try:
        pairs = [(c["round"], c["sha256"]) for c in stored]
        again = checkpoint_chain(pairs)
    except (ProvenanceError, KeyError, TypeError) as exc:
        reasons.append(f"checkpoint list is malformed: {exc}")
        return None
    if [c.get("chain") for c in stored] != [c["chain"] for c in again]:
        reasons.append("checkpoint hash chain does not recompute (rounds edited or reordered)")
    return again[-1]["sha256"] if again else None


def _check_signature(signed: Mapping[str, Any], record: Mapping[str, Any], trusted: str,
                     reasons: list[str]) -> None:
    """The record's signature under the pinned key; the key fields it names must agree."""
    public, signature = signed.get("public_key"), signed.get("signature")
    if signed.get("alg") != "Ed25519" or not isinstance(signature, str):
        reasons.append("signature block is missing or not Ed25519")
        return
    if public is not None and public != trusted:
        named = key_id(public) if isinstance(public, str) else "invalid key"
        reasons.append(f"record is signed by a key other than the trusted one (record key "
                       f"{named}, trusted key {key_id(trusted)})")
        return
    if signed.get("key_id") not in (None, key_id(trusted)):
        reasons.append(f"record's key_id {str(signed.get('key_id'))[:40]!r} is not the trusted "
                       f"key {key_id(trusted)}")
    try:
        body = canonical_json(dict(record))
    except (SigningError, RecursionError):
        body = b""
    if not body or not verify_bytes(body, signature, trusted):
        reasons.append("signature does not match the record (record edited or wrong key)")


def _audit_head(record: Mapping[str, Any], trusted: str | None,
                reasons: list[str]) -> AuditHead | None:
    """The audit head the record binds (None if absent or malformed), its signature pinned."""
    if record.get("audit_head") is None:
        return None
    try:
        head = parse_head(record["audit_head"])
    except AuditError as exc:
        reasons.append(f"audit head in the record is malformed: {exc}")
        return None
    problem = head.signature_problem(trusted) if trusted is not None else ""
    if problem:
        reasons.append(f"audit head in the record: {problem}")
    return head


def verify_record(
    signed: Mapping[str, Any],
    trusted_public_key: str | None,
    *,
    model_path: str | Path | None = None,
    audit_log: str | Path | None = None,
) -> ProvenanceCheck:
    """Check signature, checkpoint chain and (optionally) model file and audit log; never raises.

    `trusted_public_key` (base64) is required: the server key that must have signed the record
    and the audit head it binds; there is no fallback to the key the record names. Passing
    None runs every other check and reports the signature as not checked (``ok`` False).
    `audit_log` must verify under the same key and contain the head the record bound.
    """
    reasons: list[str] = []
    trusted = trusted_public_key
    if trusted is not None:
        try:
            trusted = parse_public_key(trusted)
        except SigningError as exc:
            return ProvenanceCheck(False, [f"trusted {exc}"])
    checked = trusted is not None
    if not isinstance(signed, Mapping) or not isinstance(signed.get("record"), Mapping):
        return ProvenanceCheck(False, ["not a signed provenance record (no 'record' object)"],
                               signature_checked=checked)
    record = signed["record"]
    if trusted is not None:
        _check_signature(signed, record, trusted, reasons)
    if record.get("schema") != SCHEMA:
        reasons.append(f"unknown schema {str(record.get('schema'))[:60]!r}; expected {SCHEMA}")
    model = record.get("model")
    model_sha = model.get("sha256") if isinstance(model, Mapping) else None
    if not isinstance(model_sha, str) or not _HEX64.fullmatch(model_sha):
        reasons.append("record has no valid model SHA-256")
    last = _check_chain(record, reasons)
    if last is not None and last != model_sha:
        reasons.append("model hash differs from the last checkpoint in the chain")
    head = _audit_head(record, trusted, reasons)
    if model_path is not None:
        try:
            actual = sha256_file(model_path)
        except OSError as exc:
            reasons.append(f"cannot read model file {model_path}: {exc.strerror or exc}")
        else:
            if actual != model_sha:
                reasons.append(f"model file {Path(model_path).name} does not match the record's "
                               "SHA-256 (different or modified model)")
    if audit_log is not None:
        if head is None:
            reasons.append("record binds no valid audit head, so no audit log can be tied to it")
        else:
            log = AuditLog(audit_log).verify(trusted, anchor=(head.seq, head.hash))
            if not log.ok:
                where = f" at line {log.first_bad}" if log.first_bad else ""
                reasons.append(f"audit log {Path(audit_log).name}{where}: {log.reason}")
    ok = checked and not reasons
    kid = key_id(trusted) if ok and trusted is not None else None
    return ProvenanceCheck(ok, reasons, kid, checked)


def write_record(path: str | Path, signed: Mapping[str, Any]) -> None:
    """Write a signed record atomically and durably (temp file, fsync, rename, fsync dir)."""
    target = Path(path)
    data = json.dumps(signed, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")
    atomic_write(target, data + b"\n")


def load_record(path: str | Path) -> dict[str, Any]:
    """Read a signed record file; ProvenanceError (one line) if it is missing or not JSON."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        raise ProvenanceError(f"provenance record {path} not found; check the path") from None
    except OSError as exc:
        raise ProvenanceError(f"provenance record {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECORD_BYTES:
        raise ProvenanceError(f"provenance record {path} is larger than 5 MiB; is it a record?")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ProvenanceError(
            f"provenance record {path} is not JSON ({type(exc).__name__}); pass the .json record"
        ) from None
    if not isinstance(data, dict):
        raise ProvenanceError(f"provenance record {path} is not a JSON object")
    return data
