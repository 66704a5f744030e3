"""Neighbour graph and Shamir share indices.

SecAgg+ (Bell et al. 2020) replaces the complete graph with a sparse random one so the cost
per node is O(k) instead of O(n). We use a Harary graph (each node linked to the k/2 nearest
positions on either side of a ring) over a ring order drawn from a public seed: k-connected,
deterministic for every party, and checkable by clients. The ring order is a uniformly random
permutation, so each node's neighbours are a uniformly random k-subset of the others (what
`privacy.secagg.bounds` assumes).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MAX_NODE_ID = 2**64 - 1


def pack_ids(node_ids: Iterable[int]) -> bytes:
    """Pack 64-bit Flower node ids as big-endian bytes (ConfigRecord int lists are not safe
    for ids above 2**63)."""
    return np.fromiter(node_ids, dtype=">u8").tobytes()


def unpack_ids(data: bytes) -> tuple[int, ...]:
    """Inverse of `pack_ids`; the caller validates length and uniqueness."""
    return tuple(np.frombuffer(data, dtype=">u8").tolist())


def ring_order(node_ids: Sequence[int], graph_seed: bytes) -> list[int]:
    """Pseudo-random ring order keyed by the public graph seed (any input order).

    Each node, in ascending id order, gets a 64-bit sort key from an AES-CTR keystream under
    the 32-byte seed; sorting by key is a uniformly random permutation (ties have
    probability below n^2 / 2^65 and are broken by id).
    """
    ids = sorted(int(i) for i in node_ids)
    enc = Cipher(algorithms.AES(graph_seed), modes.CTR(bytes(16))).encryptor()
    keys = np.frombuffer(enc.update(bytes(8 * len(ids))), dtype=">u8")
    return [ids[i] for i in np.argsort(keys, kind="stable")]


class NeighbourGraph:
    """The round's graph: every party builds the same one from (node ids, k, seed)."""

    def __init__(self, node_ids: Sequence[int], num_neighbours: int, graph_seed: bytes) -> None:
        self.ring = ring_order(node_ids, graph_seed)
        self.position = {u: p for p, u in enumerate(self.ring)}
        self.complete = num_neighbours >= len(self.ring) - 1
        self.half = num_neighbours // 2

    def neighbours(self, node: int) -> frozenset[int]:
        """The node's neighbours (everyone else in the complete graph)."""
        if self.complete:
            return frozenset(self.ring) - {node}
        n, pos = len(self.ring), self.position[node]
        near = {self.ring[(pos + d) % n] for d in range(1, self.half + 1)}
        near |= {self.ring[(pos - d) % n] for d in range(1, self.half + 1)}
        return frozenset(near)

    def neighbour_map(self) -> dict[int, frozenset[int]]:
        """Every node's neighbours."""
        return {u: self.neighbours(u) for u in self.ring}

    def connected(self, nodes: Collection[int]) -> bool:
        """True if the subgraph induced on `nodes` (all known) is connected.

        The pairwise masks among survivors hide individual inputs only within a connected
        component; on a disconnected survivor graph the server would learn each component's
        sum. On the ring, consecutive chosen positions are adjacent iff they are at most k/2
        apart, and the chosen set falls apart iff two such gaps are wider than that.
        """
        if not nodes or not set(nodes) <= self.position.keys():
            return False
        if self.complete:
            return True
        pos = sorted(self.position[u] for u in nodes)
        gaps = np.diff(np.asarray(pos + [pos[0] + len(self.ring)]))
        return int(np.count_nonzero(gaps > self.half)) <= 1


def share_group(node: int, neighbours: frozenset[int]) -> tuple[int, ...]:
    """Holders of `node`'s shares, sorted; position + 1 is the holder's Shamir index (1..k+1)."""
    return tuple(sorted(neighbours | {node}))
