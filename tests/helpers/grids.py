"""An in-process Flower Grid for tests: delivers messages to ClientApp handlers directly.

It is a complete Grid: `push_messages` delivers each message (through Flower's protobuf
serialisation, as on the wire) and queues the reply; `pull_messages` hands replies back by the id
of the message they answer. Subclasses decide what a node does with a message.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run


def wire(msg: Message) -> Message:
    """A message as the other side receives it (protobuf round trip)."""
    return message_from_proto(message_to_proto(msg))


class InProcessGrid(Grid):
    """Nodes `ids` hold partitions 0..n-1 of the run's bundled dataset."""

    def __init__(self, ids: list[int], run_config: Mapping[str, Any], run_id: int = 1) -> None:
        self.ids = list(ids)
        self.contexts = {
            nid: Context(run_id=run_id, node_id=nid, state=RecordDict(),
                         run_config=dict(run_config),
                         node_config={"partition-id": i, "num-partitions": len(ids)})
            for i, nid in enumerate(self.ids)
        }
        self._run = Run.create_empty(1)
        self._replies: dict[str, Message] = {}
        self._n = 0

    @abstractmethod
    def deliver(self, msg: Message, context: Context) -> Message | None:
        """The node's reply, or None if it is lost."""

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            self._n += 1
            mid = f"m{self._n}"
            msg.metadata.__dict__["_message_id"] = mid  # the SuperLink assigns ids
            ids.append(mid)
            reply = self.deliver(wire(msg), self.contexts[msg.metadata.dst_node_id])
            if reply is not None:
                self._replies[mid] = wire(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


class AppGrid(InProcessGrid):
    """Every message goes to fedguard's real ClientApp (`clients.client_app.app`), as Flower
    would deliver it: the whole app in process, with the real server driver on top
    (`server.driver.drive_run`). Nodes hold partitions 0..n-1; `lost` nodes never answer."""

    def __init__(self, n: int, run_config: Mapping[str, Any], first_id: int = 100,
                 run_id: int = 1) -> None:
        super().__init__([first_id + i for i in range(n)], run_config, run_id)
        self.lost: set[int] = set()

    def deliver(self, msg: Message, context: Context) -> Message | None:
        from clients.client_app import app

        if context.node_id in self.lost:
            return None
        return app(message=msg, context=context)


def drive(tmp_path: Any, n: int, run_config: Mapping[str, Any], mode: str = "simulation",
          run_id: int = 1, node_config: Mapping[str, Any] | None = None) -> tuple[str, Any]:
    """One whole run in process: (final status, its run store). `node_config` entries are
    added to every node's (a value may use {i} for the node's index)."""
    from flwr.supercore.task_identity import TaskIdentity

    from server.driver import drive_run
    from server.store import RunStore

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 1
    cfg = {**dict(run_config), "data-dir": str(tmp_path)}
    grid = AppGrid(n, cfg, run_id=run_id)
    for i, context in enumerate(grid.contexts.values()):
        context.node_config.update({k: v.format(i=i) if isinstance(v, str) else v
                                    for k, v in (node_config or {}).items()})
    status = drive_run(grid, cfg, run_id, mode)
    return status, RunStore.in_dir(tmp_path)
