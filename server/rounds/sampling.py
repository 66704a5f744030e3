"""Which nodes take part in a round: eligible ones (admitted by the gate), sampled by fraction.

Sampling is seeded by the run's seed and the round, so a resumed run samples as the original
would have. Waiting for nodes is bounded: a round that cannot gather `min-nodes` eligible nodes
within the timeout stops the run with a reason instead of waiting for ever.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from flwr.serverapp import Grid

from server.rounds.replies import RunStopped


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
    """Admit new nodes, then sample `fraction` (at least `min_nodes`) of the eligible ones."""
    deadline = time.monotonic() + timeout
    next_log = 0.0
    while True:
        connected = sorted(grid.get_node_ids())
        eligible = sorted(admit(connected))
        if len(eligible) >= min_nodes:
            break
        now = time.monotonic()
        if now >= deadline:
            raise RunStopped(f"round {rnd}: only {len(eligible)} eligible node(s) of "
                             f"{len(connected)} connected after {timeout:.0f} s; "
                             f"min-nodes={min_nodes}")
        if now >= next_log:
            log(f"round {rnd}: waiting for nodes: {len(eligible)} eligible of {len(connected)} "
                f"connected, min-nodes={min_nodes}")
            next_log = now + 10.0
        time.sleep(0.2)
    size = max(min_nodes, math.ceil(fraction * len(eligible)))
    return sorted(random.Random(f"{seed}:{rnd}").sample(eligible, min(size, len(eligible))))
