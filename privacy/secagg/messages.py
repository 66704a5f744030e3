"""Stage payloads and their validating `encode` / `decode`.

Payloads are flat dicts whose values Flower can carry: int, float, str, bytes, bool, lists of
one of those (ConfigRecord) and 1-D numpy arrays (ArrayRecord). Lists of node ids travel as
packed big-endian bytes because 64-bit ids do not fit a signed int list. `decode` checks
every key, type and length and raises SecAggProtocolError for anything else, so a malformed
or hostile payload can only ever make its sender count as dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from privacy.secagg.crypto import KEY_BYTES, NONCE_BYTES, SHARE_BYTES, SIGNATURE_BYTES
from privacy.secagg.errors import SecAggConfigError, SecAggProtocolError
from privacy.secagg.graph import MAX_NODE_ID, pack_ids, unpack_ids
from privacy.secagg.params import SecAggParams

STAGE_KEY = "secagg.stage"
SHARE_PLAINTEXT_BYTES = 8 + 8 + 2 * SHARE_BYTES  # sender, recipient, seed share, key share
CIPHERTEXT_BYTES = NONCE_BYTES + SHARE_PLAINTEXT_BYTES + 16
MAX_NODES = 1 << 20
MAX_VECTOR = 1 << 31

Validator = Callable[[str, Any], Any]


def _fail(name: str, why: str) -> SecAggProtocolError:
    return SecAggProtocolError(f"payload field '{name}' {why}; the sender is treated as dropped")


def _int(lo: int, hi: int) -> Validator:
    def check(name: str, v: Any) -> int:
        if type(v) is not int and not isinstance(v, np.integer):
            raise _fail(name, f"must be an int, got {type(v).__name__}")
        v = int(v)
        if not lo <= v <= hi:
            raise _fail(name, f"must be in [{lo}, {hi}], got {v}")
        return v

    return check


def _bool(name: str, v: Any) -> bool:
    if type(v) is not bool:
        raise _fail(name, f"must be a bool, got {type(v).__name__}")
    return v


def _float(name: str, v: Any) -> float:
    if not isinstance(v, float | np.floating) or not math.isfinite(v):
        raise _fail(name, "must be a finite float")
    return float(v)


def _str(name: str, v: Any) -> str:
    if type(v) is not str or len(v) > 256:
        raise _fail(name, "must be a str of at most 256 characters")
    return v


def _bytes(*lengths: int) -> Validator:
    def check(name: str, v: Any) -> bytes:
        if type(v) is not bytes:
            raise _fail(name, f"must be bytes, got {type(v).__name__}")
        if len(v) not in lengths:
            raise _fail(name, f"must be {' or '.join(map(str, lengths))} bytes, got {len(v)}")
        return v

    return check


def _ids(name: str, v: Any) -> tuple[int, ...]:
    if type(v) is not bytes or len(v) % 8 or len(v) > 8 * MAX_NODES:
        raise _fail(name, "must be packed 8-byte node ids")
    ids = unpack_ids(v)
    if len(set(ids)) != len(ids):
        raise _fail(name, "contains duplicate node ids")
    return ids


def _bytes_list(*lengths: int) -> Validator:
    item = _bytes(*lengths)

    def check(name: str, v: Any) -> list[bytes]:
        if type(v) is not list or len(v) > MAX_NODES:
            raise _fail(name, "must be a list of bytes")
        return [item(f"{name}[{i}]", x) for i, x in enumerate(v)]

    return check


def _u64_array(name: str, v: Any) -> np.ndarray:
    if not isinstance(v, np.ndarray) or v.dtype != np.uint64 or v.ndim != 1:
        raise _fail(name, "must be a 1-D numpy uint64 array")
    if not 1 <= v.size <= MAX_VECTOR:
        raise _fail(name, "has an impossible length")
    return np.ascontiguousarray(v)


_NODE = _int(0, MAX_NODE_ID)
_ROUND = _int(0, 2**63 - 1)


def _fraction(name: str, v: Any) -> float:
    v = _float(name, v)
    if not 0 <= v < 1:
        raise _fail(name, "must be in [0, 1)")
    return v


def _enc_value(v: Any) -> Any:
    if isinstance(v, tuple):  # node id tuples
        return pack_ids(v)
    if isinstance(v, list):
        return list(v)
    return v


@dataclass(frozen=True)
class _Message:
    """Base: subclasses declare STAGE and a validator per field."""

    STAGE: ClassVar[str] = ""
    SCHEMA: ClassVar[dict[str, Validator]] = {}

    def check(self) -> None:
        """Cross-field checks (lengths that must match); overridden where needed."""


@dataclass(frozen=True)
class SetupMsg(_Message):
    """Server -> every sampled node: public round parameters (stage 0)."""

    STAGE: ClassVar[str] = "setup"
    run_id: str
    round_id: int
    node_ids: tuple[int, ...]
    graph_seed: bytes
    num_neighbours: int
    threshold: int
    min_survivors: int
    clip_range: float
    quant_bits: int
    mod_bits: int
    vector_length: int
    stochastic_rounding: bool
    require_signatures: bool
    corrupt_fraction: float
    dropout_rate: float
    sigma: int
    eta: int
    SCHEMA: ClassVar[dict[str, Validator]] = {
        "run_id": _str,
        "round_id": _ROUND,
        "node_ids": _ids,
        "graph_seed": _bytes(32),
        "num_neighbours": _int(1, MAX_NODES),
        "threshold": _int(1, MAX_NODES),
        "min_survivors": _int(1, MAX_NODES),
        "clip_range": _float,
        "quant_bits": _int(0, 64),
        "mod_bits": _int(1, 64),
        "vector_length": _int(1, MAX_VECTOR),
        "stochastic_rounding": _bool,
        "require_signatures": _bool,
        "corrupt_fraction": _fraction,
        "dropout_rate": _fraction,
        "sigma": _int(1, 256),
        "eta": _int(1, 256),
    }

    @classmethod
    def for_round(
        cls, run_id: str, round_id: int, node_ids: tuple[int, ...], graph_seed: bytes,
        params: SecAggParams, require_signatures: bool,
    ) -> SetupMsg:
        """The setup message announcing `params` for one round."""
        shared = {f.name for f in fields(cls)} & {f.name for f in fields(params)}
        return cls(
            run_id=run_id,
            round_id=round_id,
            node_ids=node_ids,
            graph_seed=graph_seed,
            require_signatures=require_signatures,
            **{name: getattr(params, name) for name in shared},
        )

    def params(self) -> SecAggParams:
        """Validated parameters; unsafe ones are a protocol error (a client refuses them)."""
        try:
            shared = {f.name for f in fields(SecAggParams)} - {"num_nodes"}
            return SecAggParams(
                num_nodes=len(self.node_ids), **{name: getattr(self, name) for name in shared}
            ).validate()
        except SecAggConfigError as exc:
            raise SecAggProtocolError(f"setup parameters refused: {exc}") from None

    def check(self) -> None:
        self.params()

    def to_flat(self) -> dict[str, bytes | int | str]:
        """Fields as bytes/int/str only (client state): floats as hex, bools as ints."""
        out: dict[str, bytes | int | str] = {}
        for name, value in _fields_of(self).items():
            if isinstance(value, bool):
                out[name] = int(value)
            elif isinstance(value, float):
                out[name] = value.hex()
            else:
                out[name] = _enc_value(value)
        return out

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> SetupMsg:
        """Inverse of `to_flat`, validated like a received payload."""
        payload: dict[str, Any] = {STAGE_KEY: cls.STAGE}
        for f in fields(cls):
            value = flat.get(f.name)
            if f.type == "float" and isinstance(value, str):
                value = float.fromhex(value)
            elif f.type == "bool" and type(value) is int:
                value = bool(value)
            payload[f.name] = value
        return decode(payload, expect=cls)  # type: ignore[return-value]


@dataclass(frozen=True)
class AdvertiseKeysMsg(_Message):
    """Node -> server: the round's two X25519 public keys, optionally signed (stage 1)."""

    STAGE: ClassVar[str] = "advertise_keys"
    node_id: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes
    SCHEMA: ClassVar[dict[str, Validator]] = {
        "node_id": _NODE,
        "c_pk": _bytes(KEY_BYTES),
        "s_pk": _bytes(KEY_BYTES),
        "signature": _bytes(0, SIGNATURE_BYTES),
    }


@dataclass(frozen=True)
class KeysMsg(_Message):
    """Server -> node: the advertised keys of that node's live neighbours."""

    STAGE: ClassVar[str] = "keys"
    round_id: int
    node_ids: tuple[int, ...]
    c_pks: list[bytes]
    s_pks: list[bytes]
    signatures: list[bytes]
    SCHEMA: ClassVar[dict[str, Validator]] = {
        "round_id": _ROUND,
        "node_ids": _ids,
        "c_pks": _bytes_list(KEY_BYTES),
        "s_pks": _bytes_list(KEY_BYTES),
        "signatures": _bytes_list(0, SIGNATURE_BYTES),
    }

    def check(self) -> None:
        n = len(self.node_ids)
        if not len(self.c_pks) == len(self.s_pks) == len(self.signatures) == n:
            raise _fail("c_pks/s_pks/signatures", f"must each have {n} entries")


@dataclass(frozen=True)
class ShareKeysMsg(_Message):
    """Node -> server: encrypted share bundles, one per neighbour, and b_u's commitment."""

    STAGE: ClassVar[str] = "share_keys"
    node_id: int
    recipients: tuple[int, ...]
    ciphertexts: list[bytes]
    seed_commit: bytes
    SCHEMA: ClassVar[dict[str, Validator]] = {
        "node_id": _NODE,
        "recipients": _ids,
        "ciphertexts": _bytes_list(CIPHERTEXT_BYTES),
        "seed_commit": _bytes(32),
    }

    def check(self) -> None:
        if len(self.recipients) != len(self.ciphertexts):
            raise _fail("ciphertexts", "must have one entry per recipient")
        if self.node_id in self.recipients:
            raise _fail("recipients", "must not contain the sender")


@dataclass(frozen=True)
class ForwardedSharesMsg(_Message):
    """Server -> node: the bundles its neighbours encrypted to it (stage 2 relay)."""

    STAGE: ClassVar[str] = "forward_shares"
    round_id: int
    senders: tuple[int, ...]
    ciphertexts: list[bytes]
    SCHEMA: ClassVar[dict[str, Validator]] = {
        "round_id": _ROUND,
        "senders": _ids,
        "ciphertexts": _bytes_list(CIPHERTEXT_BYTES),
    }

    def check(self) -> None:
        if len(self.senders) != len(self.ciphertexts):
            raise _fail("ciphertexts", "must have one entry per sender")


@dataclass(frozen=True)
class MaskedInputMsg(_Message):
    """Node -> server: masked quantised vector and the senders whose bundles failed (stage 3)."""

    STAGE: ClassVar[str] = "masked_input"
    node_id: int
    masked: np.ndarray
    rejected: tuple[int, ...]
    SCHEMA: ClassVar[dict[str, Validator]] = {
        "node_id": _NODE,
        "masked": _u64_array,
        "rejected": _ids,
    }


@dataclass(frozen=True)
class UnmaskRequestMsg(_Message):
    """Server -> survivors: whose seeds (survivors) and whose mask keys (dropped) to reveal."""

    STAGE: ClassVar[str] = "unmask_request"
    round_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    SCHEMA: ClassVar[dict[str, Validator]] = {
        "round_id": _ROUND,
        "survivors": _ids,
        "dropped": _ids,
    }

    def check(self) -> None:
        if set(self.survivors) & set(self.dropped):
            raise _fail("dropped", "overlaps survivors (would reveal both secrets of a node)")


@dataclass(frozen=True)
class UnmaskSharesMsg(_Message):
    """Node -> server: its shares of survivors' seeds and of dropped nodes' mask keys."""

    STAGE: ClassVar[str] = "unmask"
    node_id: int
    seed_owners: tuple[int, ...]
    seed_shares: list[bytes]
    key_owners: tuple[int, ...]
    key_shares: list[bytes]
    SCHEMA: ClassVar[dict[str, Validator]] = {
        "node_id": _NODE,
        "seed_owners": _ids,
        "seed_shares": _bytes_list(SHARE_BYTES),
        "key_owners": _ids,
        "key_shares": _bytes_list(SHARE_BYTES),
    }

    def check(self) -> None:
        if len(self.seed_owners) != len(self.seed_shares):
            raise _fail("seed_shares", "must have one entry per seed owner")
        if len(self.key_owners) != len(self.key_shares):
            raise _fail("key_shares", "must have one entry per key owner")
        if set(self.seed_owners) & set(self.key_owners):
            raise _fail("key_owners", "overlaps seed_owners")


Message = (
    SetupMsg
    | AdvertiseKeysMsg
    | KeysMsg
    | ShareKeysMsg
    | ForwardedSharesMsg
    | MaskedInputMsg
    | UnmaskRequestMsg
    | UnmaskSharesMsg
)
_BY_STAGE: dict[str, type[_Message]] = {
    cls.STAGE: cls
    for cls in (
        SetupMsg,
        AdvertiseKeysMsg,
        KeysMsg,
        ShareKeysMsg,
        ForwardedSharesMsg,
        MaskedInputMsg,
        UnmaskRequestMsg,
        UnmaskSharesMsg,
    )
}


def _fields_of(msg: _Message) -> dict[str, Any]:
    return {f.name: getattr(msg, f.name) for f in fields(msg)}


def encode(msg: Message) -> dict[str, Any]:
    """Message -> flat payload dict (node-id tuples packed to bytes, arrays left as arrays)."""
    msg.check()
    out: dict[str, Any] = {STAGE_KEY: msg.STAGE}
    for name, value in _fields_of(msg).items():
        out[name] = _enc_value(value)
    return out


def decode(payload: Mapping[str, Any], expect: type[_Message] | None = None) -> Message:
    """Validate a payload and build its message; anything malformed -> SecAggProtocolError."""
    if not isinstance(payload, Mapping):
        raise SecAggProtocolError("payload must be a mapping; the sender is treated as dropped")
    stage = payload.get(STAGE_KEY)
    cls = _BY_STAGE.get(stage) if isinstance(stage, str) else None
    if cls is None:
        raise _fail(STAGE_KEY, f"must be one of {sorted(_BY_STAGE)}")
    if expect is not None and cls is not expect:
        raise _fail(STAGE_KEY, f"is '{stage}' but stage '{expect.STAGE}' was expected")
    expected_keys = set(cls.SCHEMA) | {STAGE_KEY}
    keys = set(payload)
    if keys != expected_keys:
        missing = sorted(expected_keys - keys)
        extra = sorted(map(repr, keys - expected_keys))
        raise SecAggProtocolError(
            f"'{stage}' payload has missing keys {missing} / unknown keys {extra}; "
            "the sender is treated as dropped"
        )
    values = {name: check(name, payload[name]) for name, check in cls.SCHEMA.items()}
    msg = cls(**values)
    msg.check()
    return msg  # type: ignore[return-value]
