"""Neighbour graph and Shamir share indices.

SecAgg+ (Bell et al. 2020) replaces the complete graph with a sparse random one so the cost
per node is O(k) instead of O(n). We use a Harary graph (each node linked to the k/2 nearest
positions on either side of a ring) over a ring order that the server randomises with a
public seed: k-connected, deterministic for every party, and checkable by clients.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

MAX_NODE_ID = 2**64 - 1


def pack_ids(node_ids: Sequence[int]) -> bytes:
    """Pack 64-bit Flower node ids as big-endian bytes (ConfigRecord int lists are not safe
    for ids above 2**63)."""
    return b"".join(int(i).to_bytes(8, "big") for i in node_ids)


def unpack_ids(data: bytes) -> tuple[int, ...]:
    """Inverse of `pack_ids`; the caller validates length and uniqueness."""
    return tuple(int.from_bytes(data[i : i + 8], "big") for i in range(0, len(data), 8))


def ring_order(node_ids: Sequence[int], graph_seed: bytes) -> list[int]:
    """Pseudo-random ring order keyed by the public graph seed."""
    return sorted(
        node_ids,
        key=lambda n: hmac.new(graph_seed, int(n).to_bytes(8, "big"), hashlib.sha256).digest(),
    )


def neighbour_map(
    node_ids: Sequence[int], num_neighbours: int, graph_seed: bytes
) -> dict[int, frozenset[int]]:
    """Every node's neighbours; the complete graph when num_neighbours >= n - 1."""
    ids = list(node_ids)
    n = len(ids)
    if num_neighbours >= n - 1:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    ring = ring_order(ids, graph_seed)
    half = num_neighbours // 2
    out: dict[int, frozenset[int]] = {}
    for pos, u in enumerate(ring):
        near = {ring[(pos + d) % n] for d in range(1, half + 1)}
        near |= {ring[(pos - d) % n] for d in range(1, half + 1)}
        out[u] = frozenset(near)
    return out


def share_group(node: int, neighbours: frozenset[int]) -> tuple[int, ...]:
    """Holders of `node`'s shares, sorted; position + 1 is the holder's Shamir index (1..k+1)."""
    return tuple(sorted(neighbours | {node}))


def share_index(node: int, neighbours: frozenset[int], holder: int) -> int:
    """Shamir x-coordinate of `holder`'s share of `node`'s secrets."""
    return share_group(node, neighbours).index(holder) + 1


def is_connected(nodes: set[int] | frozenset[int], neighbours: dict[int, frozenset[int]]) -> bool:
    """True if the subgraph induced on `nodes` is connected.

    The pairwise masks among survivors hide individual inputs only within a connected
    component; on a disconnected survivor graph the server would learn each component's sum.
    """
    if not nodes:
        return False
    start = next(iter(nodes))
    seen = {start}
    todo = [start]
    while todo:
        u = todo.pop()
        for v in neighbours[u]:
            if v in nodes and v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(nodes)
