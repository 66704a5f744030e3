"""The fast-polling Grid wrapper: replies, timeouts and dead nodes' error replies."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.server.superlink.linkstate.utils import (
    create_message_error_unavailable_res_message,
)
from flwr.supercore.task_identity import TaskIdentity

from server.rounds.grid import SUPERLINK_NODE_ID, FastPollGrid
from tests.helpers.grids import InProcessGrid


class ScriptedGrid(InProcessGrid):
    """Answers node 7 normally; node 9 is dead, so the SuperLink answers for it."""

    def __init__(self) -> None:
        super().__init__([7, 9], {})
        self.sent: dict[str, Message] = {}
        self.pulls = 0

    def deliver(self, msg: Message, context: Context) -> Message | None:
        return None  # replies come from pull_messages below, after a few empty polls

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(super().push_messages(messages))
        self.sent.update(zip(ids, messages, strict=True))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.pulls += 1
        if self.pulls < 3:  # nothing yet: the wrapper must keep polling
            return []
        out = []
        for mid in message_ids:
            ins = self.sent[mid]
            if ins.metadata.dst_node_id == 7:
                out.append(Message(RecordDict(), reply_to=ins))
            else:
                out.append(create_message_error_unavailable_res_message(ins.metadata,
                                                                          "node_unavail"))
        return out

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        raise AssertionError("the wrapper must not call Flower's 3-second poll loop")


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


def _msgs() -> list[Message]:
    return [Message(RecordDict({"c": ConfigRecord({})}), dst_node_id=n, message_type="train")
            for n in (7, 9)]


def test_replies_are_collected_and_a_dead_node_keeps_its_own_id() -> None:
    inner = ScriptedGrid()
    replies = FastPollGrid(inner, poll_interval=0.01).send_and_receive(_msgs(), timeout=5)
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert set(by_node) == {7, 9}  # not {7, 1}: the dead node is named, not the SuperLink
    assert by_node[9].has_error() and not by_node[7].has_error()
    assert SUPERLINK_NODE_ID not in by_node and inner.pulls == 3


def test_timeout_returns_what_arrived() -> None:
    class Silent(ScriptedGrid):
        def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
            return []

    assert FastPollGrid(Silent(), poll_interval=0.01).send_and_receive(_msgs(), timeout=0.2) == []


class EchoGrid(InProcessGrid):
    """Every node answers; records how many messages were out (pushed, not pulled) at most."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(ids, {})
        self.out: set[str] = set()
        self.peak = 0
        self.order: list[str] = []  # message types in push order

    def deliver(self, msg: Message, context: Context) -> Message | None:
        return Message(RecordDict(), reply_to=msg)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(super().push_messages(messages))
        self.order += [m.metadata.message_type for m in messages]
        self.out.update(ids)
        self.peak = max(self.peak, len(self.out))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        got = list(super().pull_messages(message_ids))
        self.out.difference_update(m.metadata.reply_to_message_id for m in got)
        return got


def _train(ids: Iterable[int]) -> list[Message]:
    return [Message(RecordDict({"c": ConfigRecord({})}), dst_node_id=n, message_type="train")
            for n in ids]


def test_a_window_bounds_the_messages_in_flight_and_every_node_still_answers() -> None:
    inner = EchoGrid(list(range(1, 41)))
    replies = FastPollGrid(inner, poll_interval=0.01, window=6).send_and_receive(
        _train(range(1, 41)), timeout=5)
    assert sorted(r.metadata.src_node_id for r in replies) == list(range(1, 41))
    assert inner.peak == 6
    unbounded = EchoGrid(list(range(1, 41)))
    FastPollGrid(unbounded, poll_interval=0.01).send_and_receive(_train(range(1, 41)), timeout=5)
    assert unbounded.peak == 40  # a deployment pushes every message at once


def test_riders_go_after_the_exchange_and_their_replies_wait_for_their_owner() -> None:
    inner = EchoGrid(list(range(1, 11)))
    grid = FastPollGrid(inner, poll_interval=0.01, window=4)
    pushed: list[tuple[str, Message]] = []
    riders = [Message(RecordDict({"c": ConfigRecord({})}), dst_node_id=n, message_type="query")
              for n in (8, 9, 10)]
    grid.ride_along(riders, pushed.extend)
    replies = grid.send_and_receive(_train(range(1, 8)), timeout=5)
    # the exchange returns only its own replies; riders were pushed after its messages
    assert sorted(r.metadata.src_node_id for r in replies) == list(range(1, 8))
    assert inner.order == ["train"] * 7 + ["query"] * 3 and inner.peak <= 4
    assert [m.metadata.dst_node_id for _, m in pushed] == [8, 9, 10]
    got = list(grid.pull_messages([mid for mid, _ in pushed]))
    assert sorted(r.metadata.src_node_id for r in got) == [8, 9, 10]
    assert list(grid.pull_messages([mid for mid, _ in pushed])) == []  # handed over once


def test_riders_left_over_are_pushed_by_flush() -> None:
    inner = EchoGrid([1, 2])
    grid = FastPollGrid(inner, poll_interval=0.01, window=2)
    pushed: list[tuple[str, Message]] = []
    grid.ride_along(_train([2]), pushed.extend)
    assert pushed == []  # nothing goes out until an exchange or a flush
    grid.flush_riders()
    assert len(pushed) == 1 and len(list(grid.pull_messages([pushed[0][0]]))) == 1
