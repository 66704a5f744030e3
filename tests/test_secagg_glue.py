"""Secure aggregation through the real Flower glue, with an in-process Grid that can drop nodes.

The server strategy and the real ClientApp handlers exchange real Flower Messages (serialised to
protobuf and back, as on the wire); the Grid below delivers them and loses chosen nodes after
chosen stages, which real processes cannot do on cue.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message
from flwr.supercore.task_identity import TaskIdentity

import clients.client_app as client_app
from server.rounds.replies import RunStopped
from tests.helpers.grids import InProcessGrid
from tests.helpers.rounds import initial_arrays, make_run, node_train, secure_round

N = 4
NODE_IDS = [2**64 - 5 + i for i in range(N)]  # above int64: exercises the wire encoding
RUN_CONFIG = {"local-epochs": 1, "batch-size": 32, "lr": 0.05, "secagg-max-weight": 10000.0,
              "secagg": True, "min-nodes": 2, "federated-evaluation": False}
HANDLERS = {
    "train.secagg_setup": client_app.secagg_setup,
    "train.secagg_share": client_app.secagg_share,
    "train.secagg_masked": client_app.secagg_masked,
    "train.secagg_unmask": client_app.secagg_unmask,
}


class LossyGrid(InProcessGrid):
    """Delivers each message to the node's real ClientApp handler; loses some nodes."""

    def __init__(self, drop_after: dict[str, set[int]] | None = None) -> None:
        super().__init__(NODE_IDS, RUN_CONFIG)
        self.drop_after = drop_after or {}
        self.gone: set[int] = set()

    def deliver(self, msg: Message, context: Context) -> Message | None:
        nid = context.node_id
        if nid in self.gone:
            return None
        action = msg.metadata.message_type
        reply = HANDLERS[action](msg, context)
        if nid in self.drop_after.get(action, set()):
            self.gone.add(nid)  # crashed right after answering: the reply is lost
            return None
        return reply


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield


def _round(tmp_path, grid: LossyGrid):
    run, cfg = make_run(tmp_path, RUN_CONFIG)
    arrays = initial_arrays(run)
    try:
        new = secure_round(run, cfg, grid, arrays)
    except RunStopped:
        new = None
    return RUN_CONFIG, arrays, new, run.store


def _plain_average(task, arrays, nodes, rnd=1):
    """What plain sample-weighted FedAvg over `nodes` would produce."""
    state = arrays.to_torch_state_dict()
    outs = [node_train(task, {"partition-id": NODE_IDS.index(n), "num-partitions": N}, state,
                       rnd) for n in nodes]
    total = sum(o.metrics["num-examples"] for o in outs)
    return {k: sum(o.state[k].numpy().astype(np.float64) * o.metrics["num-examples"]
                   for o in outs) / total for k in state}


def _close(new: ArrayRecord, expected: dict) -> float:
    got = {k: v.numpy() for k, v in new.items()}
    return max(float(np.abs(got[k] - expected[k]).max()) for k in expected)


def test_secure_sum_equals_plain_weighted_fedavg(tmp_path) -> None:
    task, arrays, new, store = _round(tmp_path, LossyGrid())
    assert new is not None
    assert _close(new, _plain_average(task, arrays, NODE_IDS)) < 1e-5
    trained = store.node_results("r", "train")
    assert {r["node_id"] for r in trained} == {str(n) for n in NODE_IDS}
    assert all(r["num_examples"] is None for r in trained)  # counts stay masked


@pytest.mark.parametrize("stage", ["train.secagg_setup", "train.secagg_share",
                                   "train.secagg_masked", "train.secagg_unmask"])
def test_one_dropout_after_any_stage_still_gives_the_survivors_sum(tmp_path, stage) -> None:
    lost = NODE_IDS[1]
    task, arrays, new, _ = _round(tmp_path, LossyGrid({stage: {lost}}))
    assert new is not None
    # A node lost after sending its masked input is still in the sum; earlier, it is not.
    in_sum = NODE_IDS if stage == "train.secagg_unmask" else [n for n in NODE_IDS if n != lost]
    assert _close(new, _plain_average(task, arrays, in_sum)) < 1e-5


def test_too_few_survivors_ends_the_round_cleanly(tmp_path) -> None:
    grid = LossyGrid({"train.secagg_share": {NODE_IDS[0], NODE_IDS[1]}})
    _, _, new, store = _round(tmp_path, grid)
    assert new is None  # the model stays as it was
    (abort,) = store.events("r", "secagg-abort")
    assert "model unchanged" in abort["message"] and "\n" not in abort["message"]


def test_server_never_holds_a_single_unmasked_update(tmp_path) -> None:
    """The masked vectors the server receives look nothing like any node's update."""
    seen: list[np.ndarray] = []
    grid = LossyGrid()
    real = grid.send_and_receive

    def spy(messages, *, timeout=None):
        replies = real(messages, timeout=timeout)
        for r in replies:
            rec = r.content.array_records.get("secagg-arrays")
            if rec is not None:
                seen.extend(np.asarray(v.numpy(), dtype=np.float64) for v in rec.values())
        return replies

    grid.send_and_receive = spy  # type: ignore[method-assign]
    task, arrays, new, _ = _round(tmp_path, grid)
    assert new is not None and len(seen) == N
    state = arrays.to_torch_state_dict()
    for vec, nid in zip(seen, NODE_IDS, strict=True):
        out = node_train(task, {"partition-id": NODE_IDS.index(nid), "num-partitions": N},
                         state, 1)
        plain = np.concatenate([(out.state[k].numpy() - state[k].numpy()).ravel()
                                for k in state])
        masked = vec[: plain.size]
        assert abs(np.corrcoef(masked, plain)[0, 1]) < 0.1
        assert np.all(masked != plain)


def test_pipelined_rounds_need_two_exchanges_each_and_stay_exact(tmp_path) -> None:
    """After the bootstrap, a round is one train exchange (carrying the next round's setup) and
    one unmask exchange (carrying its keys); every round's secure sum is still plain FedAvg."""
    from flwr.app import ConfigRecord

    from server.rounds.replies import ReplySorter
    from server.rounds.secure import SecureRounds

    grid = LossyGrid()
    exchanges: list[int] = []
    real = grid.send_and_receive

    def count(messages, *, timeout=None):
        exchanges.append(1)
        return real(messages, timeout=timeout)

    grid.send_and_receive = count  # type: ignore[method-assign]
    run, cfg = make_run(tmp_path, {**RUN_CONFIG, "num-server-rounds": 3})
    rounds = SecureRounds(run, cfg, ReplySorter(run), [], False,
                          lambda g, _r: sorted(g.get_node_ids()), last_round=3)
    arrays = initial_arrays(run)
    per_round = []
    for rnd in (1, 2, 3):
        before = len(exchanges)
        run.begin_round(rnd)
        expected = _plain_average(RUN_CONFIG, arrays, NODE_IDS, rnd)
        new = rounds.train(grid, rnd, arrays, rounds.cohort(grid, rnd),
                           ConfigRecord({"server-round": rnd}))
        assert new is not None and _close(new, expected) < 1e-5
        per_round.append(len(exchanges) - before)
        arrays = new
    assert per_round == [4, 2, 2]
    # each node's protocol state is per round and none is left once the run is over
    for context in grid.contexts.values():
        assert not [k for k in context.state.config_records if k.startswith("secagg-client/")]
