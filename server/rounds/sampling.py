"""Which nodes take part in a round: a seeded sample of the connected nodes, admitted lazily.

Only sampled nodes are put to the admission gate (the query and the policy packs), so a round
over 100 of 50,000 nodes asks 100 of them, not 50,000; a sampled node the gate excludes is
replaced by the next one in the round's order, and a node never trains before it was admitted.
The order is seeded by the run's seed and the round (each node's rank depends only on the seed,
the round and its own id), so a resumed run samples as the original would have. Waiting for
nodes is bounded: a round that cannot gather `min-nodes` eligible nodes within the timeout stops
the run with a reason instead of waiting for ever.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable

from flwr.serverapp import Grid

from server.rounds.replies import RunStopped


def sampling_order(nodes: Iterable[int], seed: int, rnd: int) -> list[int]:
    """`nodes` in round `rnd`'s seeded random order; removing a node never reorders the rest."""
    def rank(nid: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{rnd}:{nid}".encode(), digest_size=8).digest()

    return sorted(nodes, key=rank)


def round_size(connected: int, fraction: float, min_nodes: int) -> int:
    """How many nodes a round samples from `connected`."""
    return min(connected, max(min_nodes, math.ceil(fraction * connected)))


def first_choices(grid: Grid, fraction: float, min_nodes: int, seed: int, rnd: int
                  ) -> list[int]:
    """The nodes round `rnd` asks first (its sample if the gate admits them all): what to
    prefetch admission answers for."""
    connected = list(grid.get_node_ids())
    return sampling_order(connected, seed, rnd)[:round_size(len(connected), fraction,
                                                             min_nodes)]


def admit_in_order(order: list[int], size: int, admit: Callable[[list[int]], set[int]]
                   ) -> list[int]:
    """The first `size` nodes of `order` the gate allows, asking it only about as many nodes as
    are still missing at each step (one admission exchange per step)."""
    chosen: list[int] = []
    pos = 0
    while len(chosen) < size and pos < len(order):
        batch = order[pos:pos + size - len(chosen)]
        pos += len(batch)
        allowed = admit(batch)
        chosen += [n for n in batch if n in allowed]
    return chosen


def sample_nodes(
    grid: Grid,
    admit: Callable[[list[int]], set[int]],
    rnd: int,
    fraction: float,
    min_nodes: int,
    seed: int,
    timeout: float,
    log: Callable[[str], None] = lambda _m: None,
) -> list[int]:
    """Sample `fraction` (at least `min_nodes`) of the connected nodes, admitting only the
    sampled ones (`admit(ids)` checks the nodes it has not seen and returns the allowed ones
    among `ids`); a node the gate excluded is passed over for the next one."""
    deadline = time.monotonic() + timeout
    next_log = 0.0
    while True:
        connected = list(grid.get_node_ids())
        size = round_size(len(connected), fraction, min_nodes)
        chosen = admit_in_order(sampling_order(connected, seed, rnd), size, admit)
        if len(chosen) >= min_nodes:
            return sorted(chosen)
        now = time.monotonic()
        if now >= deadline:
            raise RunStopped(f"round {rnd}: only {len(chosen)} eligible node(s) of "
                             f"{len(connected)} connected after {timeout:.0f} s; "
                             f"min-nodes={min_nodes}")
        if now >= next_log:
            log(f"round {rnd}: waiting for nodes: {len(chosen)} eligible of {len(connected)} "
                f"connected, min-nodes={min_nodes}")
            next_log = now + 10.0
        time.sleep(0.2)
