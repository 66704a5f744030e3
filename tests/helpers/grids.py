"""An in-process Flower Grid for tests: delivers messages to ClientApp handlers directly.

Messages go through Flower's protobuf serialisation both ways, as on the wire, and get message
ids as the SuperLink would give them. Subclasses decide what a node does with a message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid


def wire(msg: Message) -> Message:
    """A message as the other side receives it (protobuf round trip)."""
    return message_from_proto(message_to_proto(msg))


class InProcessGrid(Grid):
    """Nodes `ids` hold partitions 0..n-1 of the run's bundled dataset."""

    def __init__(self, ids: list[int], run_config: Mapping[str, Any]) -> None:
        self.ids = list(ids)
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, state=RecordDict(), run_config=dict(run_config),
                         node_config={"partition-id": i, "num-partitions": len(ids)})
            for i, nid in enumerate(self.ids)
        }
        self._n = 0

    def deliver(self, msg: Message, context: Context) -> Message | None:
        """The node's reply, or None if it is lost."""
        raise NotImplementedError

    def set_run(self, run_id: int) -> None: ...

    @property
    def run(self) -> Any:
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for msg in messages:
            self._n += 1
            msg.metadata.__dict__["_message_id"] = f"m{self._n}"  # the SuperLink assigns ids
            reply = self.deliver(wire(msg), self.contexts[msg.metadata.dst_node_id])
            if reply is not None:
                replies.append(wire(reply))
        return replies
