"""Cryptographic building blocks from `cryptography`, plus Shamir sharing from `shamir`.

Nothing here implements a cipher, a KDF or an RNG by hand: keys come from X25519/Ed25519
generation or os.urandom, masks from an AES-256-CTR keystream, encryption is AES-GCM. Secret
sharing is our prime-field Shamir (information-theoretic, see `privacy.secagg.shamir`).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privacy.secagg import shamir
from privacy.secagg.params import PROTOCOL_LABEL

KEY_BYTES = 32
SEED_BYTES = 16  # self-mask seed b_u
SHARE_BYTES = shamir.SHARE_BYTES  # one share of b_u or of s_sk
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
_ZERO_IV = bytes(16)


class CryptoFailure(Exception):
    """Internal: authentication or key agreement failed (callers map it to a protocol event)."""


def new_x25519() -> tuple[bytes, bytes]:
    """Fresh X25519 key pair as (raw private, raw public)."""
    sk = X25519PrivateKey.generate()
    return sk.private_bytes_raw(), sk.public_key().public_bytes_raw()


def x25519_public(private_raw: bytes) -> bytes:
    """Public key of a raw X25519 private key (lets the server check reconstructed keys)."""
    return X25519PrivateKey.from_private_bytes(private_raw).public_key().public_bytes_raw()


def agree(
    private: bytes | X25519PrivateKey, peer_public_raw: bytes, purpose: bytes, context: bytes
) -> bytes:
    """X25519 ECDH then HKDF-SHA256 to a 32-byte key bound to purpose and round context.

    Pass a loaded X25519PrivateKey when agreeing with many peers: loading raw bytes
    recomputes the public key and costs as much as the exchange itself.
    """
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public_raw))
    except ValueError as exc:  # low-order / malformed public key
        raise CryptoFailure("key agreement failed") from exc
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=PROTOCOL_LABEL + b"/" + purpose + b"/" + context,
    ).derive(shared)


def derive_seed_key(seed: bytes, context: bytes) -> bytes:
    """Expand the 16-byte self-mask seed into an AES-256 key bound to the round."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES,
        salt=None,
        info=PROTOCOL_LABEL + b"/self-mask/" + context,
    ).derive(seed)


def prg_uint64(key: bytes, length: int) -> np.ndarray:
    """`length` uniform uint64 words from one AES-256-CTR keystream, written in place."""
    out = np.empty(length + 2, dtype="<u8")  # update_into wants block_size - 1 spare bytes
    enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()
    enc.update_into(bytes(8 * length), memoryview(out).cast("B"))
    return out[:length].astype(np.uint64, copy=False)


def uniform_floats(length: int) -> np.ndarray:
    """Uniform floats in [0, 1) from a fresh random key, for stochastic rounding."""
    words = prg_uint64(os.urandom(KEY_BYTES), length)
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def associated_data(context: bytes, sender: int, recipient: int) -> bytes:
    """AEAD associated data: round context plus direction, so ciphertexts cannot be moved."""
    return context + sender.to_bytes(8, "big") + recipient.to_bytes(8, "big")


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM encrypt with a random nonce; output is nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of `seal`; raises CryptoFailure on any tampering or wrong context."""
    if len(blob) < NONCE_BYTES + 16:
        raise CryptoFailure("ciphertext too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise CryptoFailure("authentication failed") from exc


def advertise_message(context: bytes, node_id: int, c_pk: bytes, s_pk: bytes) -> bytes:
    """Bytes an identity key signs when advertising the two round keys."""
    return PROTOCOL_LABEL + b"/advertise/" + context + node_id.to_bytes(8, "big") + c_pk + s_pk


def sign(identity_key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Ed25519 signature."""
    return identity_key.sign(message)


def verify(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """True iff the Ed25519 signature is valid."""
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def commit_seed(context: bytes, node_id: int, seed: bytes) -> bytes:
    """Hash commitment to b_u; lets the server detect a wrongly reconstructed seed."""
    return hashlib.sha256(
        PROTOCOL_LABEL + b"/seed-commit/" + context + node_id.to_bytes(8, "big") + seed
    ).digest()


def split_secrets(secrets: list[bytes], threshold: int, count: int) -> list[list[bytes]]:
    """Shamir-split each secret into `count` shares; `out[i][j]` is index i+1's share of
    secret j (one pass over the holders for all secrets)."""
    return shamir.split(secrets, threshold, count)


def combine_secret(shares: list[tuple[int, bytes]], width: int) -> bytes:
    """Reconstruct a `width`-byte secret from exactly `threshold` (index, share) pairs;
    CryptoFailure if the shares cannot come from such a secret."""
    try:
        return shamir.combine(shares, width)
    except shamir.ShamirError as exc:
        raise CryptoFailure(str(exc)) from exc
