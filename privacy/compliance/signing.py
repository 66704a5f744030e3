"""The server's Ed25519 signing key and the canonical JSON that everything signed or hashed uses.

One canonical byte form (sorted keys, no whitespace, UTF-8, no NaN) means a record hashes and
verifies the same on every machine and Python version; the key lives in the server's data
directory, is created on first use with mode 0600 and never leaves it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

__all__ = [
    "KEY_FILENAME",
    "SigningError",
    "canonical_json",
    "key_id",
    "load_or_create_key",
    "public_key_b64",
    "sign_bytes",
    "verify_bytes",
]

KEY_FILENAME = "server-ed25519.pem"


class SigningError(ValueError):
    """A key file or signature that cannot be used; the message says which and what to do."""


def canonical_json(obj: Any) -> bytes:
    """Serialise `obj` deterministically; reject NaN/inf and non-JSON types with SigningError."""
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise SigningError(
            f"value is not canonical JSON ({exc}); use str/int/float/bool/list/dict"
        ) from None
    return text.encode("utf-8")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise SigningError(
            f"signing key {path} is unreadable ({type(exc).__name__}); restore it from backup "
            "or move it away to create a new key (old records then need the old public key)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"signing key {path} is not an Ed25519 key; move it away and retry")
    return key


def load_or_create_key(data_dir: str | Path) -> Ed25519PrivateKey:
    """Return the server key in `data_dir`, creating it (0600, atomically) on first use.

    Creation writes a temp file and hard-links it into place, which fails if another process
    won the race; we then load the winner's key, so two servers never end up with two keys.
    """
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / KEY_FILENAME
    if path.exists():
        return _read_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, tmp = tempfile.mkstemp(prefix=".key-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_key(path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_dir(directory)
    return key


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Raw 32-byte public key, base64: short enough to print, pin and compare by eye."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def key_id(public_b64: str) -> str:
    """First 16 hex digits of SHA-256 over the raw public key: a stable name for the key."""
    return hashlib.sha256(base64.b64decode(public_b64)).hexdigest()[:16]


def sign_bytes(data: bytes, key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify_bytes(data: bytes, signature_b64: str, public_b64: str) -> bool:
    """True iff `signature_b64` is a valid signature of `data` by `public_b64`; never raises."""
    try:
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64, validate=True))
        pub.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
