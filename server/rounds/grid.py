"""A Grid that polls for replies every 0.1 s instead of Flower's fixed 3 s.

A deployed ServerApp's `send_and_receive` sleeps 3 s between pulls; a secure-aggregation round
makes several exchanges, so that sleep alone adds seconds per round. This wrapper uses only the
Grid's public `push_messages` / `pull_messages`; everything else is delegated unchanged.

In a simulation it also indexes Flower's in-memory LinkState by destination node (see
`index_in_memory_state`): the Simulation Engine asks the state for every virtual node's next
message ten times a second, and each such call scanned every stored message, so a round over
100 of 50,000 nodes cost 5 million message checks per sweep, on the cores the nodes train on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import WARNING
from typing import Any

from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

SUPERLINK_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID


def _messages_for(state: Any, node_id: int) -> list[str]:
    """Ids of the stored messages to `node_id`, in arrival order, from an index rebuilt only
    when the store changed (its size or its newest message; messages are only ever appended
    or deleted, so the pair changes whenever the set of messages does)."""
    store = state.message_ins_store
    signature = (len(store), next(reversed(store), None))
    cached = getattr(state, "_fedguard_by_node", None)
    if cached is None or cached[0] != signature:
        index: dict[int, list[str]] = {}
        for msg_id, msg in list(store.items()):
            index.setdefault(msg.metadata.dst_node_id, []).append(msg_id)
        cached = (signature, index)
        state._fedguard_by_node = cached
    return cached[1].get(node_id, [])


def _get_message_ins_indexed(self: Any, node_id: int, limit: int | None, *,
                             run_id: int | None = None) -> list[Message]:
    """Flower's `InMemoryLinkState.get_message_ins`, same checks and result, without visiting
    the messages of every other node: the expiry and federation checks run on this node's
    messages only, which is all Flower's version keeps of its scan."""
    from flwr.supercore.date import now

    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    found: list[Message] = []
    with self.lock:
        for msg_id in _messages_for(self, node_id):
            self._check_stored_messages({msg_id})
            msg = self.message_ins_store.get(msg_id)
            if (msg and (run_id is None or msg.metadata.run_id == run_id)
                    and msg.metadata.delivered_at == ""):
                found.append(msg)
            if limit and len(found) == limit:
                break
    delivered_at = now().isoformat()
    for msg in found:
        msg.metadata.delivered_at = delivered_at
    return found


def index_in_memory_state() -> bool:
    """Replace the in-memory LinkState's per-node message lookup by the indexed one (once per
    process). Only for the exact Flower version it was written against; else leave it."""
    try:
        import flwr
        from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    except ImportError:
        return False
    if getattr(InMemoryLinkState, "_fedguard_indexed", False):
        return True
    if flwr.__version__ != "1.41.0":
        log(WARNING, "fedguard: flwr %s: the in-memory state is left unindexed (written for "
            "1.41.0); large simulations will be slower", flwr.__version__)
        return False
    InMemoryLinkState._fedguard_flower_get_message_ins = InMemoryLinkState.get_message_ins
    InMemoryLinkState.get_message_ins = _get_message_ins_indexed
    InMemoryLinkState._fedguard_indexed = True
    return True


class FastPollGrid(Grid):
    """Delegates to `inner`, with a short poll interval in `send_and_receive`. Over Flower's
    in-memory grid (a simulation) it indexes the in-memory state as well."""

    def __init__(self, inner: Grid, poll_interval: float = 0.1) -> None:
        self.inner = inner
        self.poll_interval = poll_interval
        if "InMemory" in type(inner).__name__:
            index_in_memory_state()

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
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then poll; error replies the SuperLink makes for a dead node get that node's id.

        Flower sends "Node Unavailable" from the SuperLink's own id (1), so without this every
        dead node of a round would be recorded as one node "1".
        """
        messages = list(messages)
        ids = list(self.push_messages(messages))
        destination = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=False)}
        replies = self._pull(set(ids), timeout)
        for reply in replies:
            dst = destination.get(reply.metadata.reply_to_message_id)
            if reply.has_error() and reply.metadata.src_node_id == SUPERLINK_NODE_ID and dst:
                reply.metadata.__dict__["_src_node_id"] = dst
        return replies

    def _pull(self, pending: set[str], timeout: float | None) -> list[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        delay = 0.02
        while pending and (deadline is None or time.monotonic() < deadline):
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending:
                time.sleep(delay)
                delay = min(self.poll_interval, delay * 2)
        return replies

    def __getattr__(self, name: str) -> Any:  # anything else the inner grid offers
        return getattr(self.inner, name)
