"""A Grid that polls for replies every 0.1 s instead of Flower's fixed 3 s.

A deployed ServerApp's `send_and_receive` sleeps 3 s between pulls; a secure-aggregation round
makes four exchanges, so that sleep alone adds ~12 s per round. This wrapper uses only the
Grid's public `push_messages` / `pull_messages`; everything else is delegated unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

SUPERLINK_NODE_ID = 1  # flwr.common.constant.SUPERLINK_NODE_ID


class FastPollGrid(Grid):
    """Delegates to `inner`, with a short poll interval in `send_and_receive`."""

    def __init__(self, inner: Grid, poll_interval: float = 0.1) -> None:
        self.inner = inner
        self.poll_interval = poll_interval

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
