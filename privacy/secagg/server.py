"""Server side of SecAgg+: relays keys and bundles, tracks dropouts, recovers only the sum.

The server sees public keys, ciphertexts it cannot open, masked vectors, and finally the
shares needed to strip masks from the sum of the surviving nodes. It never obtains both the
self-mask seed and the mask key of one node, and refuses (SecAggAbort) to unmask a sum of
fewer than `params.min_survivors` nodes (at least the caller's min-nodes, a majority of the
sampled nodes, and what the threat model needs), so it never holds a small partial sum.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy.secagg import crypto
from privacy.secagg.client import TrustedKeys, as_trusted_keys, mod_mask, pair_sign
from privacy.secagg.errors import SecAggAbort, SecAggConfigError, SecAggProtocolError
from privacy.secagg.graph import MAX_NODE_ID, NeighbourGraph, pack_ids, share_group
from privacy.secagg.messages import (
    AdvertiseKeysMsg,
    ForwardedSharesMsg,
    KeysMsg,
    MaskedInputMsg,
    SetupMsg,
    ShareKeysMsg,
    UnmaskRequestMsg,
    UnmaskSharesMsg,
    decode,
)
from privacy.secagg.params import SecAggParams, context_digest, ring_mode
from privacy.secagg.quantize import dequantize_sum

_ORDER = ("setup", "keys", "shares", "masked", "unmask", "done")


@dataclass(frozen=True)
class SecAggResult:
    """Outcome of a round: the sum over `contributors` (de-quantised floats; the exact uint64
    sum in Z_2^mod_bits in ring mode) and why others left."""

    total: np.ndarray
    contributors: tuple[int, ...]
    dropped: dict[int, str] = field(default_factory=dict)


class SecAggServer:
    """One SecAgg+ round seen from the server; call the stage methods in order.

    Each `collect_*` accepts replies keyed by the Flower source node id, either as decoded
    messages or as raw payload dicts (decoded here; a malformed one drops its sender).
    """

    def __init__(
        self,
        node_ids: Sequence[int],
        params: SecAggParams,
        *,
        run_id: str,
        round_id: int,
        trusted_keys: TrustedKeys | None = None,
        graph_seed: bytes | None = None,
    ) -> None:
        """trusted_keys (node id -> Ed25519 public key) is the trust anchor for signed key
        advertisement: with it every node must sign its round keys, and a node whose key is
        missing from the map, or whose signature is missing or wrong, is dropped."""
        ids = tuple(sorted(int(i) for i in node_ids))
        if len(set(ids)) != len(ids) or any(not 0 <= i <= MAX_NODE_ID for i in ids):
            raise SecAggConfigError("node_ids must be distinct 64-bit Flower node ids")
        if len(ids) != params.num_nodes:
            raise SecAggConfigError(
                f"params were resolved for {params.num_nodes} nodes but {len(ids)} were sampled; "
                "call resolve_params with the sampled count"
            )
        params.validate()
        if not 0 <= round_id < 2**63 or len(run_id) > 256:
            raise SecAggConfigError("round_id must be >= 0 and run_id at most 256 characters")
        self.params = params
        self.node_ids = ids
        self.round_id = round_id
        self.trusted_keys = as_trusted_keys(trusted_keys)
        self.setup_msg = SetupMsg.for_round(
            run_id,
            round_id,
            ids,
            graph_seed if graph_seed is not None else os.urandom(32),
            params,
            require_signatures=self.trusted_keys is not None,
        )
        self.setup_msg.check()
        self.context = context_digest(
            run_id, round_id, pack_ids(ids), self.setup_msg.graph_seed, params
        )
        self.graph = NeighbourGraph(ids, params.num_neighbours, self.setup_msg.graph_seed)
        self.neighbours = self.graph.neighbour_map()
        self._share_indices: dict[int, dict[int, int]] = {}
        self.stage = "setup"
        self.alive: set[int] = set(ids)
        self.dropped: dict[int, str] = {}
        self.unexpected: list[int] = []
        self.keys: dict[int, tuple[bytes, bytes, bytes]] = {}
        self.commits: dict[int, bytes] = {}
        self.forwarded: dict[int, tuple[int, ...]] = {}
        self.mask_sets: dict[int, frozenset[int]] = {}
        self.masked: dict[int, np.ndarray] = {}
        self.survivors: tuple[int, ...] = ()
        self.reveal_keys_of: tuple[int, ...] = ()

    def summary(self) -> dict[str, Any]:
        """Public, JSON-ready facts about the round for the audit log (no secrets, no data)."""
        p = self.params
        return {
            "protocol": "secagg+/v2",
            "context": self.context.hex(),
            "params_digest": p.digest().hex(),
            "stage": self.stage,
            "sampled": len(self.node_ids),
            "num_neighbours": p.num_neighbours,
            "threshold": p.threshold,
            "min_survivors": p.min_survivors,
            "clip_range": p.clip_range,
            "quant_bits": p.quant_bits,
            "mod_bits": p.mod_bits,
            "threat_model": {
                "corrupt_fraction": p.corrupt_fraction,
                "dropout_rate": p.dropout_rate,
                "sigma": p.sigma,
                "eta": p.eta,
            },
            "failure_bounds": p.failure_bounds().as_dict(),
            "signed_keys": self.trusted_keys is not None,
            "contributors": [str(u) for u in self.survivors],
            "dropped": {str(u): why for u, why in sorted(self.dropped.items())},
        }

    # ------------------------------------------------------------------ helpers
    def _advance(self, expected: str) -> None:
        if self.stage != expected:
            raise SecAggProtocolError(
                f"server is at stage '{self.stage}', not '{expected}'; call the stages in order"
            )
        self.stage = _ORDER[_ORDER.index(expected) + 1]

    def _drop(self, node: int, reason: str) -> None:
        self.alive.discard(node)
        self.dropped.setdefault(node, reason)

    def _accept(self, replies: Mapping[int, Any], cls: type, stage: str) -> dict[int, Any]:
        """Keep one well-formed reply per live node; everyone else is dropped with a reason."""
        out: dict[int, Any] = {}
        for nid, reply in replies.items():
            if nid not in self.alive:
                self.unexpected.append(nid)
                continue
            try:
                msg = reply if isinstance(reply, cls) else decode(reply, expect=cls)
            except SecAggProtocolError as exc:
                self._drop(nid, f"{stage}: {exc}")
                continue
            if getattr(msg, "node_id", nid) != nid:
                self._drop(nid, f"{stage}: reply claims to come from node {msg.node_id}")
                continue
            out[nid] = msg
        for nid in sorted(self.alive - set(out)):
            self._drop(nid, f"{stage}: no valid reply")
        return out

    def _require(self, count: int, what: str) -> None:
        if count < self.params.min_survivors:
            raise SecAggAbort(
                f"only {count} nodes {what}, below the minimum of {self.params.min_survivors}; "
                "ending this round without an aggregate"
            )

    # ------------------------------------------------------------------ stages
    def setup(self) -> SetupMsg:
        """Stage 0: the public parameters to broadcast to every sampled node."""
        self._advance("setup")
        return self.setup_msg

    def collect_keys(self, replies: Mapping[int, AdvertiseKeysMsg | Mapping]) -> dict[int, KeysMsg]:
        """Stage 1: check advertised keys (and signatures) and send each node its neighbours'."""
        self._advance("keys")
        got = self._accept(replies, AdvertiseKeysMsg, "advertise keys")
        seen: set[bytes] = set()
        probe = X25519PrivateKey.generate()
        for nid in sorted(got):
            msg: AdvertiseKeysMsg = got[nid]
            if self.trusted_keys is not None:
                why = self._signature_problem(nid, msg)
                if why:
                    self._drop(nid, f"advertise keys: {why}")
                    continue
            if msg.c_pk in seen or msg.s_pk in seen or msg.c_pk == msg.s_pk:
                self._drop(nid, "advertise keys: re-used public key")
                continue
            try:
                crypto.agree(probe, msg.c_pk, b"probe", self.context)
                crypto.agree(probe, msg.s_pk, b"probe", self.context)
            except crypto.CryptoFailure:
                self._drop(nid, "advertise keys: unusable X25519 public key")
                continue
            seen |= {msg.c_pk, msg.s_pk}
            self.keys[nid] = (msg.c_pk, msg.s_pk, msg.signature)
        self._require(len(self.alive), "advertised keys")
        out: dict[int, KeysMsg] = {}
        for nid in sorted(self.alive):
            peers = tuple(sorted(self.neighbours[nid] & self.alive))
            out[nid] = KeysMsg(
                self.round_id,
                peers,
                [self.keys[p][0] for p in peers],
                [self.keys[p][1] for p in peers],
                [self.keys[p][2] for p in peers],
            )
        return out

    def _signature_problem(self, nid: int, msg: AdvertiseKeysMsg) -> str:
        """Why `nid`'s advertised keys are not accepted as signed ('' when they are)."""
        assert self.trusted_keys is not None
        trusted = self.trusted_keys.get(nid)
        if trusted is None:
            return "no trusted identity key for this node"
        if not msg.signature:
            return "signature missing"
        message = crypto.advertise_message(self.context, nid, msg.c_pk, msg.s_pk)
        return "" if crypto.verify(trusted, msg.signature, message) else "signature does not verify"

    def collect_shares(
        self, replies: Mapping[int, ShareKeysMsg | Mapping]
    ) -> dict[int, ForwardedSharesMsg]:
        """Stage 2: relay every encrypted bundle to its recipient (the server cannot read them)."""
        self._advance("shares")
        advertised = set(self.alive)
        got = self._accept(replies, ShareKeysMsg, "share keys")
        for nid, msg in got.items():
            if set(msg.recipients) != self.neighbours[nid] & advertised:
                self._drop(nid, "share keys: must send one bundle to each live neighbour")
        self._require(len(self.alive), "shared keys")
        inbox: dict[int, list[tuple[int, bytes]]] = {nid: [] for nid in self.alive}
        for sender in sorted(self.alive):
            msg = got[sender]
            self.commits[sender] = msg.seed_commit
            for rcpt, blob in zip(msg.recipients, msg.ciphertexts, strict=True):
                if rcpt in inbox:
                    inbox[rcpt].append((sender, blob))
        out: dict[int, ForwardedSharesMsg] = {}
        for nid, items in inbox.items():
            self.forwarded[nid] = tuple(s for s, _ in items)
            out[nid] = ForwardedSharesMsg(
                self.round_id, self.forwarded[nid], [b for _, b in items]
            )
        return out

    def collect_masked(
        self, replies: Mapping[int, MaskedInputMsg | Mapping]
    ) -> dict[int, UnmaskRequestMsg]:
        """Stage 3: store masked vectors, settle who is in the sum and what must be revealed.

        A node whose bundle any responder rejected is left out of the sum (its masks are no
        longer consistent); its mask key is reconstructed instead, never its seed.
        """
        self._advance("masked")
        got = self._accept(replies, MaskedInputMsg, "masked input")
        limit = 1 << self.params.mod_bits
        for nid, msg in got.items():
            if msg.masked.size != self.params.vector_length:
                self._drop(nid, "masked input: wrong vector length")
            elif self.params.mod_bits < 64 and int(msg.masked.max()) >= limit:
                self._drop(nid, "masked input: values outside Z_2^mod_bits")
        responders = set(self.alive)
        rejected_by: dict[int, int] = {}
        for nid in sorted(responders):
            msg = got[nid]
            rejected = set(msg.rejected) & set(self.forwarded[nid])
            self.mask_sets[nid] = frozenset(self.forwarded[nid]) - rejected
            self.masked[nid] = msg.masked
            for r in rejected:
                rejected_by.setdefault(r, nid)
        survivors = sorted(responders - set(rejected_by))
        for r, by in rejected_by.items():
            if r in responders:
                self.dropped.setdefault(r, f"masked input: its share bundle was rejected by {by}")
        self._require(len(survivors), "are in the sum")
        surv = set(survivors)
        if not self.graph.connected(surv):
            raise SecAggAbort(
                "the surviving nodes' mask graph is disconnected, so unmasking would expose "
                "partial sums; ending this round (raise num_neighbours)"
            )
        self.survivors = tuple(survivors)
        needed = set().union(*(self.mask_sets[v] for v in survivors)) - surv
        self.reveal_keys_of = tuple(sorted(needed))
        request = UnmaskRequestMsg(self.round_id, self.survivors, self.reveal_keys_of)
        return dict.fromkeys(self.survivors, request)  # a node left out refuses to answer

    def collect_unmask(self, replies: Mapping[int, UnmaskSharesMsg | Mapping]) -> SecAggResult:
        """Stage 4: reconstruct seeds of survivors and keys of dropped nodes; return the sum."""
        self._advance("unmask")
        got = self._accept(replies, UnmaskSharesMsg, "unmask")
        surv, gone = set(self.survivors), set(self.reveal_keys_of)
        seed_shares: dict[int, list[tuple[int, bytes]]] = {u: [] for u in surv}
        key_shares: dict[int, list[tuple[int, bytes]]] = {u: [] for u in gone}
        for nid, msg in sorted(got.items()):
            holds = set(msg.seed_owners) | set(msg.key_owners)
            if (
                not set(msg.seed_owners) <= surv
                or not set(msg.key_owners) <= gone
                or any(nid != u and nid not in self.neighbours[u] for u in holds)
            ):
                self._drop(nid, "unmask: revealed shares it cannot hold or was not asked for")
                continue
            for u, share in zip(msg.seed_owners, msg.seed_shares, strict=True):
                seed_shares[u].append((self._index(u, nid), share))
            for u, share in zip(msg.key_owners, msg.key_shares, strict=True):
                key_shares[u].append((self._index(u, nid), share))
        seeds = {
            u: self._reconstruct(u, s, "self-mask seed", crypto.SEED_BYTES)
            for u, s in seed_shares.items()
        }
        for u, seed in seeds.items():
            if crypto.commit_seed(self.context, u, seed) != self.commits[u]:
                raise SecAggAbort(
                    f"reconstructed seed of node {u} does not match its commitment "
                    "(a holder revealed a bad share); ending this round"
                )
        keys = {
            u: self._reconstruct(u, s, "mask key", crypto.KEY_BYTES) for u, s in key_shares.items()
        }
        for u, sk in keys.items():
            if crypto.x25519_public(sk) != self.keys[u][1]:
                raise SecAggAbort(
                    f"reconstructed mask key of node {u} does not match its public key "
                    "(a holder revealed a bad share); ending this round"
                )
        total = self._unmask_sum(seeds, keys)
        self.masked.clear()  # masked inputs are no longer needed
        p = self.params
        result = total if ring_mode(p) else dequantize_sum(total, len(self.survivors),
                                                            p.clip_range, p.quant_bits)
        return SecAggResult(result, self.survivors, dict(self.dropped))

    def _index(self, owner: int, holder: int) -> int:
        """Shamir x-coordinate of `holder`'s share of `owner`'s secrets."""
        indices = self._share_indices.get(owner)
        if indices is None:
            group = share_group(owner, self.neighbours[owner])
            indices = self._share_indices[owner] = {u: i + 1 for i, u in enumerate(group)}
        return indices[holder]

    def _reconstruct(
        self, owner: int, shares: list[tuple[int, bytes]], what: str, width: int
    ) -> bytes:
        t = self.params.threshold
        if len(shares) < t:
            raise SecAggAbort(
                f"only {len(shares)} of the {t} shares needed for node {owner}'s {what} arrived; "
                "ending this round without an aggregate"
            )
        try:  # the lowest t indices: the same index set for most owners, so Lagrange is cached
            return crypto.combine_secret(sorted(shares)[:t], width)
        except crypto.CryptoFailure:
            raise SecAggAbort(
                f"shares of node {owner}'s {what} are inconsistent (a holder revealed a bad "
                "share); ending this round"
            ) from None

    def _unmask_sum(self, seeds: dict[int, bytes], keys: dict[int, bytes]) -> np.ndarray:
        """Sum of survivors' masked vectors minus their self masks and unmatched pair masks."""
        n = self.params.vector_length
        loaded = {u: X25519PrivateKey.from_private_bytes(sk) for u, sk in keys.items()}
        total = np.zeros(n, dtype=np.uint64)
        for v in self.survivors:
            total += self.masked[v]
            total -= crypto.prg_uint64(crypto.derive_seed_key(seeds[v], self.context), n)
            for u in self.mask_sets[v] & keys.keys():
                key = crypto.agree(loaded[u], self.keys[v][1], b"pair-mask", self.context)
                mask = crypto.prg_uint64(key, n)
                if pair_sign(v, u):
                    total -= mask
                else:
                    total += mask
        total &= mod_mask(self.params.mod_bits)
        return total
