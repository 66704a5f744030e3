"""A Grid that polls for replies every 0.1 s instead of Flower's fixed 3 s, keeps a bounded
number of messages in flight in a simulation, and lets messages ride along with an exchange.

A deployed ServerApp's `send_and_receive` sleeps 3 s between pulls; a secure-aggregation round
makes four exchanges, so that sleep alone adds ~12 s per round. In Flower's Simulation Engine
every 0.1 s poll scans each virtual node against every undelivered or unanswered message
(O(nodes x messages) under the ServerApp's GIL), so pushing a round's 100 messages at once to
1,000 nodes starves the workers; a window of a few messages per worker keeps them busy at a
fraction of the cost. Riders (the next round's admission queries) go out after an exchange's
own messages and do not hold it up. This wrapper uses only the Grid's public `push_messages` /
`pull_messages`; everything else is delegated unchanged.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

SUPERLINK_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID
#: A simulation keeps (messages in flight) x (virtual nodes) under this: the cost of one vce
#: poll. At 1,000 nodes that is 16 messages (scripts/bench_scale.py, DP client-rounds/s: 8 in
#: flight -> 32, 16 -> 34, all 100 at once -> 26); at 100 nodes every message goes at once.
SIMULATION_SCAN_BUDGET = 16_000
MIN_WINDOW = 8


def simulation_window(nodes: int) -> int:
    """Messages in flight for a simulation of `nodes` virtual nodes."""
    return max(MIN_WINDOW, SIMULATION_SCAN_BUDGET // max(nodes, 1))
OnPush = Callable[[list[tuple[str, Message]]], None]


class FastPollGrid(Grid):
    """Delegates to `inner`, with a short poll interval in `send_and_receive`."""

    def __init__(self, inner: Grid, poll_interval: float = 0.1, window: int = 0,
                 scan_budget: int = 0) -> None:
        self.inner = inner
        self.poll_interval = poll_interval
        self.window = window  # 0: push every message at once
        self.scan_budget = scan_budget  # > 0: the window follows the node count (simulation)
        self._riders: deque[tuple[Message, OnPush]] = deque()
        self._rider_ids: set[str] = set()
        self._stash: dict[str, Message] = {}  # riders' replies pulled early, by request id

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.inner.get_node_ids())

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = list(message_ids)
        rest = [i for i in ids if i not in self._stash]
        out = [self._stash.pop(i) for i in ids if i in self._stash]
        if rest:
            got = list(self.inner.pull_messages(rest))
            self._rider_ids.difference_update(m.metadata.reply_to_message_id for m in got)
            out.extend(got)
        return out

    def ride_along(self, messages: Iterable[Message], on_push: OnPush) -> None:
        """Send `messages` with the next exchange, after its own, without waiting for them:
        `on_push` gets their (message id, message) pairs once pushed; pull their replies with
        `pull_messages` as usual."""
        self._riders.extend((m, on_push) for m in messages)

    def flush_riders(self) -> None:
        """Push every rider still waiting (before someone waits for its reply)."""
        self._push_riders(len(self._riders))

    def _push_riders(self, n: int) -> int:
        batch = [self._riders.popleft() for _ in range(min(n, len(self._riders)))]
        if not batch:
            return 0
        ids = list(self.inner.push_messages([m for m, _ in batch]))
        self._rider_ids.update(ids)
        by_callback: dict[int, tuple[OnPush, list[tuple[str, Message]]]] = {}
        for mid, (msg, cb) in zip(ids, batch, strict=False):
            by_callback.setdefault(id(cb), (cb, []))[1].append((mid, msg))
        for cb, pairs in by_callback.values():
            cb(pairs)
        return len(batch)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then poll; error replies the SuperLink makes for a dead node get that node's id.

        Flower sends "Node Unavailable" from the SuperLink's own id (1), so without this every
        dead node of a round would be recorded as one node "1".
        """
        queue = deque(messages)
        if self.scan_budget:
            self.window = simulation_window(len(list(self.inner.get_node_ids())))
        deadline = None if timeout is None else time.monotonic() + timeout
        destination: dict[str, int] = {}
        pending: set[str] = set()
        replies: list[Message] = []

        def room() -> int:
            busy = len(pending) + len(self._rider_ids)
            return max(self.window - busy, 0) if self.window else len(queue) + len(self._riders)

        def push() -> None:
            batch = [queue.popleft() for _ in range(min(room(), len(queue)))]
            if batch:
                ids = list(self.push_messages(batch))
                destination.update(
                    (mid, m.metadata.dst_node_id) for mid, m in zip(ids, batch, strict=False))
                pending.update(ids)
            if not queue:
                self._push_riders(room())

        push()
        delay = 0.02
        while pending and (deadline is None or time.monotonic() < deadline):
            got = list(self.inner.pull_messages(pending | self._rider_ids))
            for m in got:
                rid = m.metadata.reply_to_message_id
                if rid in self._rider_ids:
                    self._rider_ids.discard(rid)
                    self._stash[rid] = m
                else:
                    pending.discard(rid)
                    replies.append(m)
            push()
            if got:
                delay = 0.02
            elif pending:
                time.sleep(delay)
                delay = min(self.poll_interval, delay * 2)
        for reply in replies:
            dst = destination.get(reply.metadata.reply_to_message_id)
            if reply.has_error() and reply.metadata.src_node_id == SUPERLINK_NODE_ID and dst:
                reply.metadata.__dict__["_src_node_id"] = dst
        return replies

    def __getattr__(self, name: str) -> Any:  # anything else the inner grid offers
        return getattr(self.inner, name)
