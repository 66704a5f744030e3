"""Client side of SecAgg+: a small state machine, one method per stage.

Deployment runs every Flower message in a fresh process, so the whole state round-trips
through `to_state()` / `from_state()` as a flat dict of bytes/int/str (fits a ConfigRecord).
Identity keys are deliberately not part of that state: they come from the node's config.
Nothing is global: a node may hold the states of two overlapping rounds (round r unmasking
while round r+1 sets up); every server message names its round and is refused by the state
of another round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy.secagg import crypto
from privacy.secagg.errors import (
    SecAggAbort,
    SecAggConfigError,
    SecAggInputError,
    SecAggProtocolError,
)
from privacy.secagg.graph import NeighbourGraph, pack_ids, share_group, unpack_ids
from privacy.secagg.messages import (
    SHARE_PLAINTEXT_BYTES,
    AdvertiseKeysMsg,
    ForwardedSharesMsg,
    KeysMsg,
    MaskedInputMsg,
    SetupMsg,
    ShareKeysMsg,
    UnmaskRequestMsg,
    UnmaskSharesMsg,
)
from privacy.secagg.params import SecAggParams, context_digest, ring_mode
from privacy.secagg.quantize import quantize

STATE_VERSION = 2
_STAGES = ("new", "advertised", "shared", "masked", "done")
_K = crypto.KEY_BYTES
_S = crypto.SEED_BYTES
_SH = crypto.SHARE_BYTES

TrustedKeys = Mapping[int, Ed25519PublicKey | bytes]
IdentityKey = Ed25519PrivateKey | bytes


def mod_mask(mod_bits: int) -> np.uint64:
    """Bit mask reducing uint64 values modulo 2**mod_bits (2**mod_bits divides 2**64)."""
    return np.uint64((1 << mod_bits) - 1)


def pair_sign(me: int, other: int) -> bool:
    """True when `me` adds the pairwise mask shared with `other` (the other one subtracts)."""
    return me < other


def _as_public(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    return key if isinstance(key, Ed25519PublicKey) else Ed25519PublicKey.from_public_bytes(key)


def as_trusted_keys(keys: TrustedKeys | None) -> dict[int, Ed25519PublicKey] | None:
    """Normalise a caller's node id -> Ed25519 public key map (objects or raw 32 bytes)."""
    if keys is None:
        return None
    try:
        return {int(k): _as_public(v) for k, v in keys.items()}
    except (TypeError, ValueError) as exc:
        raise SecAggConfigError(
            f"trusted_keys must map node ids to Ed25519 public keys (32 raw bytes): {exc}"
        ) from None


def _as_private(key: IdentityKey | None) -> Ed25519PrivateKey | None:
    if key is None or isinstance(key, Ed25519PrivateKey):
        return key
    try:
        return Ed25519PrivateKey.from_private_bytes(key)
    except (TypeError, ValueError):
        raise SecAggConfigError(
            "identity_key must be an Ed25519 private key (object or 32 raw bytes)"
        ) from None


class SecAggClient:
    """One node's view of one SecAgg+ round.

    identity_key (Ed25519, the node's long-term key) signs the advertised round keys, bound
    to the round context. trusted_keys (node id -> Ed25519 public key, the trust anchor the
    caller supplies) makes this node check its neighbours' signatures: a neighbour whose
    signature is missing or wrong means the server substituted keys, and this node refuses
    the round.
    """

    def __init__(
        self,
        node_id: int,
        *,
        identity_key: IdentityKey | None = None,
        trusted_keys: TrustedKeys | None = None,
    ) -> None:
        if not 0 <= int(node_id) < 2**64:
            raise SecAggConfigError(f"node_id={node_id}: must be a 64-bit Flower node id")
        self.node_id = int(node_id)
        self.identity_key = _as_private(identity_key)
        self.trusted_keys = as_trusted_keys(trusted_keys)
        self.stage = "new"
        self.setup_msg: SetupMsg | None = None
        self.c_sk = b""
        self.s_sk = b""
        self.seed = b""
        self.nbr_keys: dict[int, tuple[bytes, bytes]] = {}  # id -> (c_pk, s_pk)
        self.enc_keys: dict[int, bytes] = {}  # id -> AES-GCM key shared with it (share-enc)
        self.own_seed_share = b""
        self.own_key_share = b""
        self.held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (seed share, key share)
        self.rejected: tuple[int, ...] = ()  # senders whose bundles failed authentication
        self.clipped = 0
        self._derived: tuple[SecAggParams, bytes, NeighbourGraph] | None = None

    # ------------------------------------------------------------------ helpers
    def _expect(self, stage: str) -> None:
        if self.stage != stage:
            raise SecAggProtocolError(
                f"client of node {self.node_id} is at stage '{self.stage}', not '{stage}'; "
                "messages arrived out of order"
            )

    def _round(self) -> tuple[SecAggParams, bytes, NeighbourGraph]:
        """(params, context digest, graph), derived from the setup message once."""
        if self._derived is None:
            msg = self.setup_msg
            assert msg is not None
            params = msg.params()
            ctx = context_digest(
                msg.run_id, msg.round_id, pack_ids(msg.node_ids), msg.graph_seed, params
            )
            graph = NeighbourGraph(msg.node_ids, params.num_neighbours, msg.graph_seed)
            self._derived = (params, ctx, graph)
        return self._derived

    @property
    def params(self) -> SecAggParams:
        """Parameters of the current round (after setup)."""
        self._expect_setup()
        return self._round()[0]

    @property
    def round_id(self) -> int:
        """Round this client belongs to (after setup); key stored states by it."""
        self._expect_setup()
        assert self.setup_msg is not None
        return self.setup_msg.round_id

    def _expect_setup(self) -> None:
        if self.setup_msg is None:
            raise SecAggProtocolError(f"client of node {self.node_id} has not seen setup yet")

    def _expect_round(self, round_id: int) -> None:
        assert self.setup_msg is not None
        if round_id != self.setup_msg.round_id:
            raise SecAggProtocolError(
                f"message for round {round_id} reached node {self.node_id}'s state of round "
                f"{self.setup_msg.round_id}; route messages by round"
            )

    # ------------------------------------------------------------------ stages
    def setup(self, msg: SetupMsg) -> AdvertiseKeysMsg:
        """Stage 0 -> 1: accept the parameters and advertise two fresh X25519 public keys."""
        self._expect("new")
        if self.node_id not in msg.node_ids:
            raise SecAggProtocolError(f"setup does not list node {self.node_id}; not sampled")
        msg.params()  # refuse unsafe parameters before generating anything
        if msg.require_signatures and (self.identity_key is None or self.trusted_keys is None):
            raise SecAggConfigError(
                "this deployment requires signed keys; give the client identity_key and "
                "trusted_keys"
            )
        self.setup_msg = msg
        self._derived = None
        _, ctx, _ = self._round()
        self.c_sk, c_pk = crypto.new_x25519()
        self.s_sk, s_pk = crypto.new_x25519()
        self.seed = os.urandom(_S)
        signature = b""
        if self.identity_key is not None:
            signature = crypto.sign(
                self.identity_key, crypto.advertise_message(ctx, self.node_id, c_pk, s_pk)
            )
        self.stage = "advertised"
        return AdvertiseKeysMsg(self.node_id, c_pk, s_pk, signature)

    def share_keys(self, msg: KeysMsg) -> ShareKeysMsg:
        """Stage 2: Shamir-share b_u and s_sk over the group, one AES-GCM bundle per neighbour."""
        self._expect("advertised")
        self._expect_round(msg.round_id)
        params, ctx, graph = self._round()
        nbrs = graph.neighbours(self.node_id)
        assert self.setup_msg is not None
        must_verify = self.trusted_keys is not None or self.setup_msg.require_signatures
        seen: set[bytes] = set()
        for nid, c_pk, s_pk, sig in zip(
            msg.node_ids, msg.c_pks, msg.s_pks, msg.signatures, strict=True
        ):
            if nid not in nbrs:
                raise SecAggProtocolError(f"keys message lists node {nid}, not a neighbour")
            if c_pk in seen or s_pk in seen or c_pk == s_pk:
                raise SecAggAbort(f"node {nid} re-uses a public key; refusing this round")
            seen |= {c_pk, s_pk}
            if must_verify:
                trusted = (self.trusted_keys or {}).get(nid)
                ok = trusted is not None and crypto.verify(
                    trusted, sig, crypto.advertise_message(ctx, nid, c_pk, s_pk)
                )
                if not ok:
                    raise SecAggAbort(
                        f"signature of node {nid}'s round keys is missing or does not verify "
                        "against the trusted key map; refusing this round"
                    )
            self.nbr_keys[nid] = (c_pk, s_pk)
        if len(self.nbr_keys) + 1 < params.threshold:
            raise SecAggAbort(
                f"only {len(self.nbr_keys)} live neighbours; threshold {params.threshold} "
                "cannot be met"
            )
        group = share_group(self.node_id, nbrs)
        shares = crypto.split_secrets([self.seed, self.s_sk], params.threshold, len(group))
        mine = group.index(self.node_id)
        self.own_seed_share, self.own_key_share = shares[mine]
        recipients: list[int] = []
        ciphertexts: list[bytes] = []
        c_sk = X25519PrivateKey.from_private_bytes(self.c_sk)
        for nid in sorted(self.nbr_keys):
            try:
                key = crypto.agree(c_sk, self.nbr_keys[nid][0], b"share-enc", ctx)
            except crypto.CryptoFailure:
                continue  # unusable key: that neighbour will be rejected in the next stage
            self.enc_keys[nid] = key  # the same key opens the bundle nid sends back
            seed_share, key_share = shares[group.index(nid)]
            plaintext = self.node_id.to_bytes(8, "big") + nid.to_bytes(8, "big") + seed_share
            aad = crypto.associated_data(ctx, self.node_id, nid)
            recipients.append(nid)
            ciphertexts.append(crypto.seal(key, plaintext + key_share, aad))
        self.stage = "shared"
        commit = crypto.commit_seed(ctx, self.node_id, self.seed)
        return ShareKeysMsg(self.node_id, tuple(recipients), ciphertexts, commit)

    def _open_bundle(
        self, sender: int, blob: bytes, ctx: bytes, s_sk: X25519PrivateKey
    ) -> tuple[bytes, bytes, bytes]:
        """Decrypt a bundle -> (seed share, key share, pair mask key); CryptoFailure if bad."""
        key = self.enc_keys.get(sender)
        if key is None:
            raise crypto.CryptoFailure("no shared key with this sender")
        pt = crypto.open_sealed(key, blob, crypto.associated_data(ctx, sender, self.node_id))
        if len(pt) != SHARE_PLAINTEXT_BYTES or pt[:16] != (
            sender.to_bytes(8, "big") + self.node_id.to_bytes(8, "big")
        ):
            raise crypto.CryptoFailure("bundle addressed to another pair")
        mask_key = crypto.agree(s_sk, self.nbr_keys[sender][1], b"pair-mask", ctx)
        return pt[16 : 16 + _SH], pt[16 + _SH :], mask_key

    def masked_input(self, msg: ForwardedSharesMsg, vector: np.ndarray) -> MaskedInputMsg:
        """Stage 3: quantise, add self mask and pairwise masks for every accepted sender.

        A bundle that fails authentication means its sender is dropped for this node: no
        pairwise mask with it, and it is reported so the server excludes it consistently.
        """
        self._expect("shared")
        self._expect_round(msg.round_id)
        params, ctx, _ = self._round()
        if ring_mode(params):
            q, self.clipped = self._ring_vector(vector, params), 0
        else:
            q, self.clipped = quantize(
                self._check_vector(vector, params),
                params.clip_range,
                params.quant_bits,
                params.stochastic_rounding,
            )
        rejected: list[int] = []
        mask_keys: dict[int, bytes] = {}
        s_sk = X25519PrivateKey.from_private_bytes(self.s_sk)
        for sender, blob in zip(msg.senders, msg.ciphertexts, strict=True):
            if sender not in self.nbr_keys:
                raise SecAggProtocolError(f"server forwarded a bundle from non-neighbour {sender}")
            try:
                seed_share, key_share, mask_key = self._open_bundle(sender, blob, ctx, s_sk)
            except crypto.CryptoFailure:
                rejected.append(sender)
                continue
            self.held[sender] = (seed_share, key_share)
            mask_keys[sender] = mask_key
        n = params.vector_length
        acc = q + crypto.prg_uint64(crypto.derive_seed_key(self.seed, ctx), n)
        for other in sorted(mask_keys):
            mask = crypto.prg_uint64(mask_keys[other], n)
            if pair_sign(self.node_id, other):
                acc += mask
            else:
                acc -= mask
        acc &= mod_mask(params.mod_bits)
        self.stage = "masked"
        self.rejected = tuple(sorted(rejected))
        return MaskedInputMsg(self.node_id, acc, self.rejected)

    @staticmethod
    def _ring_vector(vector: np.ndarray, params: SecAggParams) -> np.ndarray:
        arr = np.asarray(vector)
        if arr.dtype != np.uint64 or arr.size != params.vector_length:
            raise SecAggInputError(
                f"ring input must be {params.vector_length} uint64 values, got {arr.size} of "
                f"dtype {arr.dtype}; reduce the integer vector into Z_2^mod_bits first"
            )
        arr = arr.ravel()
        if params.mod_bits < 64 and int(arr.max(initial=0)) >> params.mod_bits:
            raise SecAggInputError(f"ring input has values outside Z_2^{params.mod_bits}")
        return arr.copy()

    @staticmethod
    def _check_vector(vector: np.ndarray, params: SecAggParams) -> np.ndarray:
        arr = np.asarray(vector)
        if arr.dtype.kind not in "fiu" or arr.size != params.vector_length:
            raise SecAggInputError(
                f"vector must be {params.vector_length} real numbers, got {arr.size} of "
                f"dtype {arr.dtype}; pass the flattened update plus its weight"
            )
        return arr.ravel()

    def unmask(self, msg: UnmaskRequestMsg) -> UnmaskSharesMsg:
        """Stage 4: reveal seed shares of survivors and key shares of dropped nodes, once.

        Refused when this node is not listed as a survivor: a node the server calls dropped
        has nothing to contribute, and answering would hand over a share of its own mask key
        (one step towards both of its secrets if the server lies to other nodes).
        """
        self._expect("masked")
        self._expect_round(msg.round_id)
        params, _, graph = self._round()
        if self.node_id not in msg.survivors:
            raise SecAggAbort(
                f"unmask request does not list node {self.node_id} as a survivor; refusing to "
                "reveal shares of its own secrets"
            )
        need = max(params.threshold, params.min_survivors)
        if len(msg.survivors) < need:
            raise SecAggAbort(
                f"server reports {len(msg.survivors)} survivors, fewer than {need}; "
                "refusing to unmask"
            )
        if set(msg.survivors) & set(msg.dropped):  # also checked by decode; never trust it
            raise SecAggProtocolError("unmask request names a node as both survivor and dropped")
        if not graph.connected(msg.survivors):
            raise SecAggAbort(
                "survivors named by the server are unknown or not connected in the neighbour "
                "graph (unmasking would expose partial sums); refusing to unmask"
            )
        if set(msg.survivors) & set(self.rejected):
            raise SecAggAbort(
                "server counts a node whose share bundle this node rejected as a survivor; "
                "refusing to unmask"
            )
        self.stage = "done"  # set first: a second request must never be answered
        held = dict(self.held)
        held[self.node_id] = (self.own_seed_share, self.own_key_share)
        seed_owners = tuple(sorted(u for u in msg.survivors if u in held))
        key_owners = tuple(sorted(u for u in msg.dropped if u in held))
        return UnmaskSharesMsg(
            self.node_id,
            seed_owners,
            [held[u][0] for u in seed_owners],
            key_owners,
            [held[u][1] for u in key_owners],
        )

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, bytes | int | str]:
        """Flat dict of bytes/int/str, suitable for a Flower ConfigRecord."""
        state: dict[str, bytes | int | str] = {
            "version": STATE_VERSION,
            "node_id": str(self.node_id),
            "stage": self.stage,
            "clipped": self.clipped,
        }
        if self.setup_msg is not None:
            state |= {f"setup.{k}": v for k, v in self.setup_msg.to_flat().items()}
        nbr, enc, held = sorted(self.nbr_keys), sorted(self.enc_keys), sorted(self.held)
        state |= {
            "c_sk": self.c_sk,
            "s_sk": self.s_sk,
            "seed": self.seed,
            "own_seed_share": self.own_seed_share,
            "own_key_share": self.own_key_share,
            "nbr.ids": pack_ids(nbr),
            "nbr.c_pks": b"".join(self.nbr_keys[u][0] for u in nbr),
            "nbr.s_pks": b"".join(self.nbr_keys[u][1] for u in nbr),
            "enc.ids": pack_ids(enc),
            "enc.keys": b"".join(self.enc_keys[u] for u in enc),
            "held.ids": pack_ids(held),
            "held.seed_shares": b"".join(self.held[u][0] for u in held),
            "held.key_shares": b"".join(self.held[u][1] for u in held),
            "rejected": pack_ids(self.rejected),
        }
        return state

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        *,
        identity_key: IdentityKey | None = None,
        trusted_keys: TrustedKeys | None = None,
    ) -> SecAggClient:
        """Rebuild a client from `to_state()`; corrupt state -> SecAggProtocolError."""
        try:
            return cls._from_state(state, identity_key, trusted_keys)
        except SecAggProtocolError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise SecAggProtocolError(
                f"stored secure-aggregation state is corrupt ({type(exc).__name__}: {exc}); "
                "drop this node from the round"
            ) from None

    @classmethod
    def _from_state(
        cls,
        state: Mapping[str, Any],
        identity_key: IdentityKey | None,
        trusted_keys: TrustedKeys | None,
    ) -> SecAggClient:
        if state["version"] != STATE_VERSION:
            raise SecAggProtocolError(
                f"state version {state['version']!r} is not {STATE_VERSION}; restart the round"
            )
        client = cls(int(state["node_id"]), identity_key=identity_key, trusted_keys=trusted_keys)
        stage = state["stage"]
        if stage not in _STAGES:
            raise SecAggProtocolError(f"stored stage {stage!r} is unknown; restart the round")
        client.stage = stage
        client.clipped = int(state["clipped"])
        flat = {k[6:]: v for k, v in state.items() if k.startswith("setup.")}
        if flat:
            client.setup_msg = SetupMsg.from_flat(flat)
        elif stage != "new":
            raise SecAggProtocolError("stored state lacks setup parameters; restart the round")
        client.c_sk, client.s_sk = _b(state["c_sk"]), _b(state["s_sk"])
        client.seed = _b(state["seed"])
        client.own_seed_share = _b(state["own_seed_share"])
        client.own_key_share = _b(state["own_key_share"])
        nbr = _ids(state["nbr.ids"])
        c_pks = _chunks(_b(state["nbr.c_pks"]), _K, len(nbr))
        s_pks = _chunks(_b(state["nbr.s_pks"]), _K, len(nbr))
        client.nbr_keys = {u: (c, s) for u, c, s in zip(nbr, c_pks, s_pks, strict=True)}
        enc = _ids(state["enc.ids"])
        enc_keys = _chunks(_b(state["enc.keys"]), _K, len(enc))
        client.enc_keys = dict(zip(enc, enc_keys, strict=True))
        held = _ids(state["held.ids"])
        seeds = _chunks(_b(state["held.seed_shares"]), _SH, len(held))
        keys = _chunks(_b(state["held.key_shares"]), _SH, len(held))
        client.held = {u: (s, k) for u, s, k in zip(held, seeds, keys, strict=True)}
        client.rejected = _ids(state["rejected"])
        return client


def _b(value: Any) -> bytes:
    if type(value) is not bytes:
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    return value


def _ids(value: Any) -> tuple[int, ...]:
    data = _b(value)
    if len(data) % 8:
        raise ValueError("packed node ids must be a multiple of 8 bytes")
    ids = unpack_ids(data)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate node ids")
    return ids


def _chunks(data: bytes, width: int, count: int) -> list[bytes]:
    if len(data) != width * count:
        raise ValueError(f"expected {count} items of {width} bytes")
    return [data[i * width : (i + 1) * width] for i in range(count)]
