"""Signed provenance records: which data, privacy settings and checks produced a model.

A record binds the final model's SHA-256 to the chain of round checkpoints, each node's
manifest hash, each node's (epsilon, delta, accountant), the secure-aggregation settings, the
policy verdicts and the software versions. It is signed with the server's Ed25519 key over
canonical JSON, so anyone holding the public key can check that nothing in it changed and that
a model file is the one it describes.

The checkpoint list is hash-chained (``chain_i = SHA-256(chain_{i-1}:round:sha256)``), so a
record cannot silently drop or reorder rounds, and the final model must be the last round's
checkpoint: :func:`build_record` refuses anything else.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from privacy.files import sha256_file

__all__ = [
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
_GENESIS = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ProvenanceError(ValueError):
    """A provenance input or record file that cannot be used; one line naming it and the fix."""


@dataclass(frozen=True)
class ProvenanceCheck:
    """Result of :func:`verify_record`; ``reasons`` lists every problem found (empty if ok)."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    key_id: str | None = None


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
        record["audit_head"] = dict(audit_head)
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


def verify_record(
    signed: Mapping[str, Any],
    model_path: str | Path | None = None,
    trusted_public_key: str | None = None,
) -> ProvenanceCheck:
    """Check signature, checkpoint chain and (optionally) the model file; never raises.

    Without `trusted_public_key` the signature is checked against the key the record names,
    which proves integrity but not who signed: pin the server's key for that.
    """
    reasons: list[str] = []
    if not isinstance(signed, Mapping) or not isinstance(signed.get("record"), Mapping):
        return ProvenanceCheck(False, ["not a signed provenance record (no 'record' object)"])
    record = signed["record"]
    public, signature = signed.get("public_key"), signed.get("signature")
    if signed.get("alg") != "Ed25519" or not isinstance(public, str) or not isinstance(
        signature, str
    ):
        reasons.append("signature block is missing or not Ed25519")
    else:
        if trusted_public_key is not None and public != trusted_public_key:
            reasons.append("record is signed by a key other than the trusted one")
        try:
            body = canonical_json(dict(record))
        except SigningError:
            body = b""
        if not body or not verify_bytes(body, signature, public):
            reasons.append("signature does not match the record (record edited or wrong key)")
    if record.get("schema") != SCHEMA:
        reasons.append(f"unknown schema {record.get('schema')!r}; expected {SCHEMA}")
    model = record.get("model")
    model_sha = model.get("sha256") if isinstance(model, Mapping) else None
    if not isinstance(model_sha, str) or not _HEX64.fullmatch(model_sha):
        reasons.append("record has no valid model SHA-256")
    last = _check_chain(record, reasons)
    if last is not None and last != model_sha:
        reasons.append("model hash differs from the last checkpoint in the chain")
    if model_path is not None:
        try:
            actual = sha256_file(model_path)
        except OSError as exc:
            reasons.append(f"cannot read model file {model_path}: {exc.strerror or exc}")
        else:
            if actual != model_sha:
                reasons.append(f"model file {Path(model_path).name} does not match the record's "
                               "SHA-256 (different or modified model)")
    kid = key_id(public) if isinstance(public, str) and not reasons else None
    return ProvenanceCheck(not reasons, reasons, kid)


def write_record(path: str | Path, signed: Mapping[str, Any]) -> None:
    """Write a signed record atomically (temp file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(signed, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=".prov-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_record(path: str | Path) -> dict[str, Any]:
    """Read a signed record file; ProvenanceError (one line) if it is missing or not JSON."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProvenanceError(f"provenance record {path} not found; check the path") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ProvenanceError(
            f"provenance record {path} is not JSON ({type(exc).__name__}); pass the .json record"
        ) from None
    if not isinstance(data, dict):
        raise ProvenanceError(f"provenance record {path} is not a JSON object")
    return data
