"""The server's Ed25519 signing key and the canonical JSON that everything signed or hashed uses.

One canonical byte form (sorted keys, no whitespace, UTF-8, no NaN) means a record hashes and
verifies the same on every machine and Python version; the key lives in the server's data
directory, is created on first use with mode 0600 and never leaves it.

Its public half is published beside it as ``signing-key.pub`` (one line of base64), rewritten
whenever it is missing or stale, so that a verifier has a key to pin: a signature only proves
who signed when it is checked against a key the verifier trusts, never against a key that the
signed file names itself.
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

from privacy.files import atomic_write, fsync_dir

__all__ = [
    "KEY_FILENAME",
    "PUBLIC_KEY_FILENAME",
    "SigningError",
    "canonical_json",
    "key_id",
    "load_or_create_key",
    "parse_public_key",
    "public_key_b64",
    "read_public_key",
    "sign_bytes",
    "verify_bytes",
]

KEY_FILENAME = "server-ed25519.pem"
PUBLIC_KEY_FILENAME = "signing-key.pub"
_MAX_PUB_BYTES = 4096


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
    Either way the public half is (re)published as `PUBLIC_KEY_FILENAME` if missing or stale.
    """
    key = _load_or_create(Path(data_dir))
    _publish(Path(data_dir), key)
    return key


def _load_or_create(directory: Path) -> Ed25519PrivateKey:
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
    fsync_dir(directory)
    return key


def _publish(directory: Path, key: Ed25519PrivateKey) -> None:
    """Write the public key file atomically unless it already holds this key."""
    path = directory / PUBLIC_KEY_FILENAME
    line = public_key_b64(key) + "\n"
    try:
        if path.is_file() and path.read_bytes() == line.encode("ascii"):
            return
        atomic_write(path, line.encode("ascii"))
    except OSError as exc:
        raise SigningError(
            f"cannot publish the public key as {path} ({exc.strerror or exc}); make the data "
            "directory writable"
        ) from None


def parse_public_key(text: str) -> str:
    """Validate a base64 raw Ed25519 public key and return it normalised (whitespace stripped).

    Raises SigningError (one line) for anything else, so a typo never becomes "not verified".
    """
    value = text.strip() if isinstance(text, str) else ""
    try:
        raw = base64.b64decode(value, validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        shown = value[:20] + ("…" if len(value) > 20 else "")
        raise SigningError(
            f"public key {shown!r} is not a base64 Ed25519 public key; pass the server's "
            f"{PUBLIC_KEY_FILENAME} or the one line of base64 it holds"
        ) from None
    return base64.b64encode(raw).decode("ascii")


def read_public_key(path: str | Path) -> str:
    """The key in a public key file (as written by :func:`load_or_create_key`)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_PUB_BYTES + 1)
    except FileNotFoundError:
        raise SigningError(f"public key file {path} not found; check the path") from None
    except OSError as exc:
        raise SigningError(f"public key file {path}: {exc.strerror or exc}") from None
    text = data.decode("ascii", errors="replace") if len(data) <= _MAX_PUB_BYTES else ""
    try:
        return parse_public_key(text)
    except SigningError:
        raise SigningError(
            f"public key file {path} does not hold a base64 Ed25519 public key; use the "
            f"server's {PUBLIC_KEY_FILENAME}"
        ) from None


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Raw 32-byte public key, base64: short enough to print, pin and compare by eye."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def key_id(public_b64: str) -> str:
    """First 16 hex digits of SHA-256 over the raw public key: a stable name for the key.

    Never raises: a value that is not base64 is named "invalid key" (it may come from a forged
    file and only ever appears in messages).
    """
    try:
        raw = base64.b64decode(public_b64, validate=True)
    except (ValueError, TypeError):
        return "invalid key"
    return hashlib.sha256(raw).hexdigest()[:16]


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
