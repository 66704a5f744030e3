"""SecAgg+ end to end: correct sums, dropouts at every stage, aborts, and what the server sees."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.secagg import (
    SecAggAbort,
    SecAggClient,
    SecAggParams,
    SecAggProtocolError,
    SecAggServer,
    UnmaskRequestMsg,
    decode,
    encode,
    pack_weighted,
    quantization_step,
    resolve_params,
    run_local_round,
    unpack_weighted,
)
from privacy.secagg.graph import NeighbourGraph, ring_order

SEED = 20260124


def _ids(n: int, rng: np.random.Generator) -> list[int]:
    """Realistic Flower node ids: random 64-bit values, some above 2**63."""
    ids = {int(x) for x in rng.integers(1, 2**64 - 1, size=n, dtype=np.uint64)}
    ids.add(2**64 - 1)
    return sorted(ids)[:n]


def _vectors(n: int, length: int, dtype: type = np.float64) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(SEED + n + length)
    return {i: rng.normal(0, 1.5, length).astype(dtype) for i in _ids(n, rng)}


def _tol(params: SecAggParams, contributors: int) -> float:
    """Each node's stochastic rounding errs by under one level per entry."""
    return contributors * quantization_step(params.clip_range, params.quant_bits) + 1e-9


def _check(result: Any, vectors: dict[int, np.ndarray], params: SecAggParams) -> None:
    expected = sum(vectors[c].astype(np.float64) for c in result.contributors)
    err = np.abs(result.total - expected).max()
    assert err <= _tol(params, len(result.contributors)), err


@pytest.mark.parametrize(
    ("n", "length", "dtype"),
    [(2, 7, np.float64), (5, 1, np.float32), (9, 300, np.float32), (40, 500, np.float64)],
)
def test_secure_sum_equals_plain_sum(n: int, length: int, dtype: type) -> None:
    vectors = _vectors(n, length, dtype)
    params = resolve_params(n, length)
    result = run_local_round(vectors, params)
    assert result.contributors == tuple(sorted(vectors)) and not result.dropped
    _check(result, vectors, params)


def test_deterministic_rounding_and_small_quant_bits() -> None:
    vectors = _vectors(6, 200)
    params = resolve_params(6, 200, quant_bits=12, stochastic_rounding=False, clip_range=6.0)
    assert params.mod_bits == 15
    result = run_local_round(vectors, params)
    half = quantization_step(6.0, 12) / 2
    expected = sum(vectors.values())
    assert np.abs(result.total - expected).max() <= 6 * half + 1e-9


def test_weighted_fedavg_matches_plain_weighted_average() -> None:
    rng = np.random.default_rng(SEED)
    ids = _ids(7, rng)
    updates = {i: rng.normal(0, 0.05, 123).astype(np.float32) for i in ids}
    weights = {i: float(rng.integers(10, 500)) for i in ids}
    vectors = {i: pack_weighted(updates[i], weights[i], max_weight=1000.0) for i in ids}
    params = resolve_params(7, 124)
    result = run_local_round(vectors, params)
    avg, total_weight = unpack_weighted(result.total, max_weight=1000.0)
    plain = np.average(
        np.stack([updates[i] for i in ids]), axis=0, weights=[weights[i] for i in ids]
    )
    assert total_weight == pytest.approx(sum(weights.values()), rel=1e-6)
    assert np.abs(avg - plain).max() < 1e-5


def test_clipping_bounds_each_entry_and_is_counted() -> None:
    vectors = {11: np.array([100.0, -100.0, 0.5]), 22: np.array([1.0, 1.0, 1.0]), 33: np.zeros(3)}
    params = resolve_params(3, 3, clip_range=2.0)
    result = run_local_round(vectors, params)
    assert np.allclose(result.total, [3.0, -1.0, 1.5], atol=_tol(params, 3))


# ---------------------------------------------------------------- dropouts


@pytest.mark.parametrize("stage", ["advertise", "share_keys", "masked_input", "unmask"])
def test_complete_graph_tolerates_group_size_minus_threshold_dropouts(stage: str) -> None:
    vectors = _vectors(8, 64)
    params = resolve_params(8, 64, num_neighbours=7)
    assert params.complete_graph and params.threshold == 5 and params.min_survivors == 5
    drop = sorted(vectors)[: params.max_dropouts_per_group]  # 3 = k + 1 - t
    result = run_local_round(vectors, params, drop_after={stage: drop})
    if stage == "unmask":  # their masked inputs arrived: still in the sum
        assert result.contributors == tuple(sorted(vectors))
    else:
        assert set(result.contributors) == set(vectors) - set(drop)
        assert set(drop) <= set(result.dropped)
    _check(result, vectors, params)


@pytest.mark.parametrize("stage", ["advertise", "share_keys", "masked_input", "unmask"])
def test_one_more_dropout_aborts_below_threshold(stage: str) -> None:
    vectors = _vectors(8, 16)
    params = resolve_params(8, 16, num_neighbours=7)
    drop = sorted(vectors)[: params.max_dropouts_per_group + 1]
    with pytest.raises(SecAggAbort) as info:
        run_local_round(vectors, params, drop_after={stage: drop})
    assert "\n" not in str(info.value)


def test_sparse_graph_neighbourhood_dropouts() -> None:
    """SecAgg+ graph: losing group_size - t of one node's share holders is still fine."""
    n, length = 40, 128
    vectors = _vectors(n, length)
    params = resolve_params(n, length, num_neighbours=10, corrupt_fraction=0.0)
    assert not params.complete_graph and params.threshold == 6
    server = SecAggServer(sorted(vectors), params, run_id="r", round_id=3)
    victim = server.node_ids[0]
    nbrs = sorted(server.neighbours[victim])
    assert len(nbrs) == 10
    drop = nbrs[: params.max_dropouts_per_group]  # 5 holders gone; victim keeps 6 shares
    result = run_local_round(vectors, params, drop_after={"masked_input": drop}, server=server)
    assert victim in result.contributors
    _check(result, vectors, params)


def test_sparse_graph_aborts_when_a_survivors_holders_fall_below_threshold() -> None:
    n = 40
    vectors = _vectors(n, 32)
    params = resolve_params(n, 32, num_neighbours=10, corrupt_fraction=0.0)
    server = SecAggServer(sorted(vectors), params, run_id="r", round_id=4)
    victim = server.node_ids[0]
    drop = sorted(server.neighbours[victim])[: params.max_dropouts_per_group + 1]
    with pytest.raises(SecAggAbort, match="shares needed for node .*self-mask seed"):
        run_local_round(vectors, params, drop_after={"unmask": drop}, server=server)


def test_neighbour_graph_is_regular_symmetric_and_seeded() -> None:
    ids = list(range(100, 160))
    a = NeighbourGraph(ids, 8, b"\x01" * 32).neighbour_map()
    b = NeighbourGraph(ids, 8, b"\x02" * 32).neighbour_map()
    assert all(len(v) == 8 and u not in v for u, v in a.items())
    assert all(u in a[v] for u, vs in a.items() for v in vs)
    assert a != b and a == NeighbourGraph(list(reversed(ids)), 8, b"\x01" * 32).neighbour_map()


def _bfs_connected(nodes: set[int], nbrs: dict[int, frozenset[int]]) -> bool:
    start = next(iter(nodes))
    seen, todo = {start}, [start]
    while todo:
        for v in nbrs[todo.pop()] & nodes:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == nodes


@pytest.mark.parametrize(("n", "k"), [(12, 2), (30, 4), (31, 6), (9, 8)])
def test_ring_gap_connectivity_equals_graph_search(n: int, k: int) -> None:
    """`connected` (two wide gaps on the ring) agrees with a search over the real edges."""
    graph = NeighbourGraph(list(range(n)), k, bytes(range(32)))
    nbrs = graph.neighbour_map()
    rng = np.random.default_rng(SEED + n)
    for _ in range(300):
        subset = {int(u) for u in rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)}
        assert graph.connected(subset) == _bfs_connected(subset, nbrs)


# ---------------------------------------------------------------- what the server holds


def _run_to_masked(
    vectors: dict[int, np.ndarray], params: SecAggParams, round_id: int = 1
) -> tuple[SecAggServer, dict[int, SecAggClient], dict[int, Any]]:
    """Drive a round by hand up to the masked-input replies (in-memory, no dropouts)."""
    server = SecAggServer(sorted(vectors), params, run_id="hand", round_id=round_id)
    clients = {i: SecAggClient(i) for i in vectors}
    setup = server.setup()
    adv = {i: c.setup(setup) for i, c in clients.items()}
    keys = server.collect_keys(adv)
    shares = {i: clients[i].share_keys(keys[i]) for i in clients}
    fwd = server.collect_shares(shares)
    masked = {i: clients[i].masked_input(fwd[i], vectors[i]) for i in clients}
    return server, clients, masked


def test_masked_inputs_are_statistically_unrelated_to_updates() -> None:
    length = 4000
    ramp = np.linspace(-7.5, 7.5, length)  # maximally structured input
    vectors = {101: ramp, 202: -ramp, 303: np.sin(ramp), 404: ramp**2 / 8}
    params = resolve_params(4, length, stochastic_rounding=False)
    _, clients, masked = _run_to_masked(vectors, params)
    step = quantization_step(params.clip_range, params.quant_bits)
    for nid, msg in masked.items():
        held = msg.masked.astype(np.float64)
        plain_levels = np.rint((vectors[nid] + params.clip_range) / step)
        assert abs(np.corrcoef(held, vectors[nid])[0, 1]) < 0.08  # ~6 sigma at n=4000
        assert np.all(held != plain_levels)
        # Looks uniform over Z_2^bits: mean and spread of a uniform variable.
        top = float(1 << params.mod_bits)
        assert abs(held.mean() / top - 0.5) < 0.03
        assert abs(held.std() / top - 0.5 / np.sqrt(3)) < 0.03


def test_server_state_before_unmasking_has_no_plain_vector() -> None:
    vectors = _vectors(5, 256)
    params = resolve_params(5, 256)
    server, _, masked = _run_to_masked(vectors, params)
    server.collect_masked(masked)
    total_masked = sum(m.masked.astype(np.float64) for m in masked.values())
    for nid, vec in vectors.items():
        assert abs(np.corrcoef(server.masked[nid].astype(np.float64), vec)[0, 1]) < 0.3
    assert abs(np.corrcoef(total_masked, sum(vectors.values()))[0, 1]) < 0.3


def test_client_refuses_unmask_with_too_few_survivors_or_twice() -> None:
    vectors = _vectors(5, 8)
    params = resolve_params(5, 8)
    _, clients, _ = _run_to_masked(vectors, params)
    ids = sorted(vectors)
    lonely = UnmaskRequestMsg(1, survivors=(ids[0],), dropped=tuple(ids[1:]))
    with pytest.raises(SecAggAbort, match="fewer than"):
        clients[ids[0]].unmask(lonely)
    fine = UnmaskRequestMsg(1, survivors=tuple(ids), dropped=())
    clients[ids[1]].unmask(fine)
    with pytest.raises(SecAggProtocolError, match="stage"):
        clients[ids[1]].unmask(fine)


def test_unmask_reveals_seed_or_key_never_both() -> None:
    vectors = _vectors(6, 8)
    params = resolve_params(6, 8, num_neighbours=5)
    ids = sorted(vectors)
    _, clients, _ = _run_to_masked(vectors, params)
    reply = clients[ids[0]].unmask(UnmaskRequestMsg(1, tuple(ids[:4]), tuple(ids[4:])))
    assert set(reply.seed_owners) == set(ids[:4]) and set(reply.key_owners) == set(ids[4:])
    overlapping = UnmaskRequestMsg(1, tuple(ids[:4]), tuple(ids[3:]))
    with pytest.raises(SecAggProtocolError, match="both"):
        encode(overlapping)
    payload = {
        "secagg.stage": "unmask_request",
        "round_id": 1,
        "survivors": b"".join(i.to_bytes(8, "big") for i in ids[:4]),
        "dropped": b"".join(i.to_bytes(8, "big") for i in ids[3:]),
    }
    with pytest.raises(SecAggProtocolError, match="both"):
        decode(payload)
    with pytest.raises(SecAggProtocolError, match="both"):
        clients[ids[1]].unmask(overlapping)


def test_server_aborts_when_survivors_fall_below_minimum() -> None:
    vectors = _vectors(6, 8)
    params = resolve_params(6, 8)
    server, _, masked = _run_to_masked(vectors, params)
    keep = dict(list(masked.items())[: params.min_survivors - 1])
    with pytest.raises(SecAggAbort, match="below the minimum"):
        server.collect_masked(keep)


# ---------------------------------------------------------------- tampering and replay


def _flip(blob: bytes, pos: int = 20) -> bytes:
    return blob[:pos] + bytes([blob[pos] ^ 1]) + blob[pos + 1 :]


def test_tampered_ciphertext_fails_and_sender_is_treated_as_dropped() -> None:
    vectors = _vectors(6, 32)
    params = resolve_params(6, 32, num_neighbours=5)  # complete: every pair swaps bundles
    ids = sorted(vectors)
    victim_rcpt, bad_sender = ids[0], ids[3]

    def tamper(stage: str, node: int, payload: dict[str, Any]) -> dict[str, Any]:
        if stage == "masked_input" and node == victim_rcpt:
            msg = decode(payload)
            cts = [
                _flip(c) if s == bad_sender else c
                for s, c in zip(msg.senders, msg.ciphertexts, strict=True)
            ]
            payload = {**payload, "ciphertexts": cts}
        return payload

    result = run_local_round(vectors, params, tamper=tamper)
    assert bad_sender not in result.contributors
    assert "rejected" in result.dropped[bad_sender]
    assert len(result.contributors) == 5
    _check(result, vectors, params)


def test_replayed_ciphertext_from_another_round_fails_authentication() -> None:
    vectors = _vectors(5, 16)
    params = resolve_params(5, 16)
    ids = sorted(vectors)
    rcpt, sender = ids[1], ids[2]
    captured: dict[str, bytes] = {}

    def record(stage: str, node: int, payload: dict[str, Any]) -> dict[str, Any]:
        if stage == "masked_input" and node == rcpt:
            msg = decode(payload)
            captured["ct"] = msg.ciphertexts[msg.senders.index(sender)]
        return payload

    first = run_local_round(vectors, params, round_id=1, tamper=record)
    assert len(first.contributors) == 5

    def replay(stage: str, node: int, payload: dict[str, Any]) -> dict[str, Any]:
        if stage == "masked_input" and node == rcpt:
            msg = decode(payload)
            cts = list(msg.ciphertexts)
            cts[msg.senders.index(sender)] = captured["ct"]
            payload = {**payload, "ciphertexts": cts}
        return payload

    second = run_local_round(vectors, params, round_id=2, tamper=replay)
    assert sender not in second.contributors and "rejected" in second.dropped[sender]
    _check(second, vectors, params)


def test_ciphertext_moved_to_another_recipient_fails() -> None:
    """Same round, same keys: a bundle for w handed to v does not authenticate."""
    vectors = _vectors(5, 8)
    params = resolve_params(5, 8)
    server = SecAggServer(sorted(vectors), params, run_id="x", round_id=1)
    clients = {i: SecAggClient(i) for i in vectors}
    setup = server.setup()
    keys = server.collect_keys({i: c.setup(setup) for i, c in clients.items()})
    shares = {i: clients[i].share_keys(keys[i]) for i in clients}
    fwd = server.collect_shares(shares)
    a, b, c = sorted(vectors)[:3]
    to_c = shares[a].ciphertexts[shares[a].recipients.index(c)]
    moved = dataclasses.replace(
        fwd[b],
        ciphertexts=[
            to_c if s == a else ct for s, ct in zip(fwd[b].senders, fwd[b].ciphertexts, strict=True)
        ],
    )
    assert clients[b].masked_input(moved, vectors[b]).rejected == (a,)


# ---------------------------------------------------------------- signatures


def _identities(ids: list[int]) -> dict[int, Ed25519PrivateKey]:
    return {i: Ed25519PrivateKey.generate() for i in ids}


def test_signed_keys_round_succeeds() -> None:
    vectors = _vectors(5, 16)
    idk = _identities(sorted(vectors))
    params = resolve_params(5, 16)
    result = run_local_round(vectors, params, identity_keys=idk)
    assert len(result.contributors) == 5
    _check(result, vectors, params)


def test_server_drops_node_whose_signature_does_not_match_known_key() -> None:
    vectors = _vectors(5, 16)
    ids = sorted(vectors)
    idk = _identities(ids)
    params = resolve_params(5, 16)
    server_view = {i: k.public_key() for i, k in idk.items()}
    server_view[ids[2]] = Ed25519PrivateKey.generate().public_key()  # impostor
    server = SecAggServer(ids, params, run_id="s", round_id=1, trusted_keys=server_view)
    result = run_local_round(
        vectors, params, identity_keys=idk, trusted_keys=server_view, server=server
    )
    assert ids[2] not in result.contributors and "signature" in result.dropped[ids[2]]
    _check(result, vectors, params)


def test_client_aborts_on_forged_neighbour_signature() -> None:
    vectors = _vectors(4, 4)
    ids = sorted(vectors)
    idk = _identities(ids)
    public = {i: k.public_key() for i, k in idk.items()}
    params = resolve_params(4, 4)
    server = SecAggServer(ids, params, run_id="s", round_id=1, trusted_keys=public)
    clients = {i: SecAggClient(i, identity_key=idk[i], trusted_keys=public) for i in ids}
    setup = server.setup()
    keys = server.collect_keys({i: c.setup(setup) for i, c in clients.items()})
    msg = keys[ids[0]]
    forged = dataclasses.replace(msg, signatures=[bytes(64)] + msg.signatures[1:])
    with pytest.raises(SecAggAbort, match="signature"):
        clients[ids[0]].share_keys(forged)
    stripped = dataclasses.replace(msg, signatures=[b""] + msg.signatures[1:])
    with pytest.raises(SecAggAbort, match="missing"):
        SecAggClient.from_state(
            clients[ids[1]].to_state(), identity_key=idk[ids[1]], trusted_keys=public
        ).share_keys(dataclasses.replace(keys[ids[1]], signatures=stripped.signatures))


# ---------------------------------------------------------------- state and ordering


def test_client_state_is_flat_and_round_trips_mid_round() -> None:
    vectors = _vectors(4, 8)
    params = resolve_params(4, 8)
    _, clients, _ = _run_to_masked(vectors, params)
    client = next(iter(clients.values()))
    state = client.to_state()
    assert all(type(v) in (bytes, int, str) for v in state.values())
    again = SecAggClient.from_state(state)
    assert again.to_state() == state and again.stage == "masked"


def test_stages_out_of_order_are_protocol_errors() -> None:
    vectors = _vectors(3, 4)
    server = SecAggServer(sorted(vectors), resolve_params(3, 4), run_id="o", round_id=1)
    with pytest.raises(SecAggProtocolError, match="stage"):
        server.collect_keys({})
    client = SecAggClient(sorted(vectors)[0])
    with pytest.raises(SecAggProtocolError, match="stage"):
        client.unmask(UnmaskRequestMsg(1, (), ()))


def test_malformed_reply_drops_only_its_sender() -> None:
    vectors = _vectors(6, 8)
    params = resolve_params(6, 8, num_neighbours=5)
    ids = sorted(vectors)
    server = SecAggServer(ids, params, run_id="m", round_id=1)
    clients = {i: SecAggClient(i) for i in ids}
    setup = server.setup()
    replies: dict[int, Any] = {i: encode(c.setup(setup)) for i, c in clients.items()}
    replies[ids[0]] = {**replies[ids[0]], "c_pk": b"short"}
    replies[ids[1]] = {**replies[ids[1]], "node_id": ids[2]}
    server.collect_keys(replies)
    assert set(server.dropped) == {ids[0], ids[1]}
    assert "c_pk" in server.dropped[ids[0]] and "claims" in server.dropped[ids[1]]


def _weak_ring(n: int, length: int) -> SecAggParams:
    """k=4 with sigma=1: so weak that min_survivors lets a chosen cut through (test only)."""
    params = resolve_params(n, length, num_neighbours=4, corrupt_fraction=0.0, sigma=1)
    assert params.min_survivors <= n - 4
    return params


def test_disconnected_survivor_graph_aborts_before_any_secret_is_revealed() -> None:
    """Two runs of k/2 = 2 dropped ring neighbours cut the graph; each half's sum would leak."""
    vectors = _vectors(40, 8)
    params = _weak_ring(40, 8)
    server = SecAggServer(sorted(vectors), params, run_id="ring", round_id=1)
    ring = ring_order(server.node_ids, server.setup_msg.graph_seed)
    cut = [ring[0], ring[1], ring[20], ring[21]]  # every survivor keeps 3 of its 5 holders
    with pytest.raises(SecAggAbort, match="disconnected"):
        run_local_round(vectors, params, drop_after={"share_keys": cut}, server=server)
    assert server.survivors == ()  # no unmask request was ever produced


def test_client_refuses_unmask_for_disconnected_survivors() -> None:
    vectors = _vectors(40, 4)
    params = _weak_ring(40, 4)
    server, clients, _ = _run_to_masked(vectors, params)
    ring = ring_order(server.node_ids, server.setup_msg.graph_seed)
    survivors = tuple(sorted(ring[2:20] + ring[22:]))
    request = UnmaskRequestMsg(1, survivors, (ring[0], ring[1], ring[20], ring[21]))
    with pytest.raises(SecAggAbort, match="not connected"):
        clients[ring[2]].unmask(request)


def test_bad_vectors_are_refused_with_a_clear_error() -> None:
    from privacy.secagg import SecAggInputError

    vectors = _vectors(3, 4)
    params = resolve_params(3, 4)
    server = SecAggServer(sorted(vectors), params, run_id="v", round_id=1)
    clients = {i: SecAggClient(i) for i in vectors}
    setup = server.setup()
    keys = server.collect_keys({i: c.setup(setup) for i, c in clients.items()})
    fwd = server.collect_shares({i: clients[i].share_keys(keys[i]) for i in clients})
    nid = sorted(vectors)[0]
    with pytest.raises(SecAggInputError, match="4 real numbers"):
        clients[nid].masked_input(fwd[nid], np.zeros(5))
    with pytest.raises(SecAggInputError, match="NaN"):
        clients[nid].masked_input(fwd[nid], np.array([0.0, np.inf, 0.0, 0.0]))
    with pytest.raises(SecAggInputError, match="weight"):
        pack_weighted(np.zeros(3), weight=0.0, max_weight=10.0)


def test_client_refuses_unmask_that_counts_a_node_it_rejected_as_survivor() -> None:
    vectors = _vectors(5, 4)
    params = resolve_params(5, 4)
    ids = sorted(vectors)
    server = SecAggServer(ids, params, run_id="rj", round_id=1)
    clients = {i: SecAggClient(i) for i in ids}
    setup = server.setup()
    keys = server.collect_keys({i: c.setup(setup) for i, c in clients.items()})
    fwd = server.collect_shares({i: clients[i].share_keys(keys[i]) for i in ids})
    me, bad = ids[0], ids[1]
    cts = [
        _flip(c) if s == bad else c
        for s, c in zip(fwd[me].senders, fwd[me].ciphertexts, strict=True)
    ]
    reply = clients[me].masked_input(dataclasses.replace(fwd[me], ciphertexts=cts), vectors[me])
    assert reply.rejected == (bad,)
    restored = SecAggClient.from_state(clients[me].to_state())
    with pytest.raises(SecAggAbort, match="rejected"):
        restored.unmask(UnmaskRequestMsg(1, tuple(ids), ()))


@pytest.mark.slow
def test_default_sparse_graph_at_scale_with_scattered_dropouts() -> None:
    """64 nodes use the SecAgg+ graph by default; drop a few nodes after every stage."""
    n, length = 64, 2000
    vectors = _vectors(n, length, np.float32)
    params = resolve_params(n, length)
    assert not params.complete_graph
    ids = sorted(vectors)
    rng = np.random.default_rng(SEED)
    picked = [int(x) for x in rng.choice(ids, size=8, replace=False)]
    drops = {
        "advertise": picked[0:2],
        "share_keys": picked[2:4],
        "masked_input": picked[4:6],
        "unmask": picked[6:8],
    }
    result = run_local_round(vectors, params, drop_after=drops)
    assert set(result.contributors) == set(ids) - set(picked[:6])
    _check(result, vectors, params)


def test_server_summary_is_json_ready_and_secret_free() -> None:
    import json

    vectors = _vectors(6, 8)
    params = resolve_params(6, 8)
    server = SecAggServer(sorted(vectors), params, run_id="audit", round_id=7)
    dropped = sorted(vectors)[0]
    run_local_round(vectors, params, drop_after={"share_keys": [dropped]}, server=server)
    summary = json.loads(json.dumps(server.summary()))
    assert summary["stage"] == "done" and summary["sampled"] == 6
    assert len(summary["contributors"]) == 5 and str(dropped) in summary["dropped"]
    assert summary["context"] == server.context.hex()


# ---------------------------------------------------------------- minimum survivors (issue 12.8)


@pytest.mark.parametrize("stage", ["advertise", "share_keys", "masked_input"])
def test_three_nodes_never_unmask_the_sum_of_two(stage: str) -> None:
    """With 3 nodes one dropout would leave a pair, each of whom learns the other's input."""
    vectors = _vectors(3, 8)
    params = resolve_params(3, 8)
    assert params.min_survivors == 3
    with pytest.raises(SecAggAbort, match="below the minimum"):
        run_local_round(vectors, params, drop_after={stage: [sorted(vectors)[0]]})


def test_callers_min_nodes_is_enforced_by_server_and_clients() -> None:
    vectors = _vectors(10, 8)
    params = resolve_params(10, 8, min_nodes=9)
    assert params.min_survivors == 9 and resolve_params(10, 8).min_survivors < 9
    assert resolve_params(10, 8, min_nodes=2).min_survivors > 10 / 2  # never below a majority
    ids = sorted(vectors)
    with pytest.raises(SecAggAbort, match="below the minimum of 9"):
        run_local_round(vectors, params, drop_after={"masked_input": ids[:2]})
    _, clients, _ = _run_to_masked(vectors, params)
    with pytest.raises(SecAggAbort, match="fewer than 9"):  # a server that skips the check
        clients[ids[5]].unmask(UnmaskRequestMsg(1, tuple(ids[2:]), tuple(ids[:2])))


def test_min_nodes_above_the_cohort_is_a_config_error() -> None:
    from privacy.secagg import SecAggConfigError

    with pytest.raises(SecAggConfigError, match="min_nodes=11") as info:
        resolve_params(10, 8, min_nodes=11)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- own shares (issue 12.10)


def test_client_listed_as_dropped_refuses_to_reveal_shares_of_its_own_key() -> None:
    vectors = _vectors(6, 8)
    params = resolve_params(6, 8, num_neighbours=5)
    ids = sorted(vectors)
    _, clients, _ = _run_to_masked(vectors, params)
    me = ids[0]
    as_dropped = UnmaskRequestMsg(1, tuple(ids[1:]), (me,))
    with pytest.raises(SecAggAbort, match=f"does not list node {me} as a survivor"):
        clients[me].unmask(as_dropped)
    absent = UnmaskRequestMsg(1, tuple(ids[1:]), ())
    with pytest.raises(SecAggAbort, match="survivor"):
        SecAggClient.from_state(clients[me].to_state()).unmask(absent)
    assert clients[me].stage == "masked"  # nothing was revealed, the state did not advance


# ---------------------------------------------------------------- signed keys (issue 12.10)


def test_server_drops_nodes_missing_from_the_trust_anchor_or_unsigned() -> None:
    vectors = _vectors(8, 16)
    ids = sorted(vectors)
    idk = _identities(ids)
    params = resolve_params(8, 16, num_neighbours=7)
    anchor = {i: k.public_key() for i, k in idk.items() if i != ids[0]}  # ids[0] unknown
    server = SecAggServer(ids, params, run_id="anchor", round_id=1, trusted_keys=anchor)
    clients = {i: SecAggClient(i, identity_key=idk[i], trusted_keys=anchor) for i in ids}
    setup = server.setup()
    adverts = {i: c.setup(setup) for i, c in clients.items()}
    adverts[ids[1]] = dataclasses.replace(adverts[ids[1]], signature=b"")
    keys = server.collect_keys(adverts)
    assert "no trusted identity key" in server.dropped[ids[0]]
    assert "signature missing" in server.dropped[ids[1]]
    assert set(keys) == set(ids[2:])


def test_identity_keys_as_raw_bytes_and_signatures_bound_to_the_round() -> None:
    vectors = _vectors(5, 16)
    ids = sorted(vectors)
    idk = _identities(ids)
    raw_public = {i: k.public_key().public_bytes_raw() for i, k in idk.items()}
    params = resolve_params(5, 16, num_neighbours=4)
    captured: dict[int, Any] = {}
    for round_id in (1, 2):
        server = SecAggServer(ids, params, run_id="raw", round_id=round_id, trusted_keys=raw_public)
        clients = {
            i: SecAggClient(i, identity_key=k.private_bytes_raw(), trusted_keys=raw_public)
            for i, k in idk.items()
        }
        setup = server.setup()
        adverts = {i: c.setup(setup) for i, c in clients.items()}
        if round_id == 1:
            captured = adverts
        else:  # replay round 1's signed advertisement of ids[0] in round 2
            adverts[ids[0]] = captured[ids[0]]
        server.collect_keys(adverts)
    assert list(server.dropped) == [ids[0]]
    assert "does not verify" in server.dropped[ids[0]]


# ---------------------------------------------------------------- pipelined rounds


def test_two_overlapping_rounds_share_a_node_and_both_sums_are_right() -> None:
    """Round r+1's setup travels with round r's unmask request: nodes hold two states at once.

    Each node keeps its states by round id in one flat store (as a Flower Context would), and
    every message is routed to the state of the round it names.
    """
    everyone = _vectors(10, 32)
    ids = sorted(everyone)
    cohorts = {1: ids[:8], 2: ids[2:]}
    servers = {
        r: SecAggServer(c, resolve_params(len(c), 32), run_id="pipe", round_id=r)
        for r, c in cohorts.items()
    }
    store: dict[int, dict[str, dict[str, Any]]] = {i: {} for i in ids}  # node -> round -> state

    def deliver(nid: int, payload: dict[str, Any], call: str, *extra: Any) -> dict[str, Any]:
        msg = decode(payload)
        slot = f"secagg/{msg.round_id}"
        client = (
            SecAggClient(nid) if call == "setup" else SecAggClient.from_state(store[nid][slot])
        )
        reply = getattr(client, call)(msg, *extra)
        state = client.to_state()
        assert all(type(v) in (bytes, int, str) for v in state.values())
        if call == "unmask":
            del store[nid][slot]
        else:
            store[nid][slot] = state
        return encode(reply)

    def stage(outbound: dict[int, Any], call: str, vec: bool = False) -> dict[int, Any]:
        return {
            n: deliver(n, encode(m), call, *([everyone[n]] if vec else []))
            for n, m in outbound.items()
        }

    s1, s2 = servers[1], servers[2]
    keys1 = s1.collect_keys(stage(dict.fromkeys(cohorts[1], s1.setup()), "setup"))
    fwd1 = s1.collect_shares(stage(keys1, "share_keys"))
    req1 = s1.collect_masked(stage(fwd1, "masked_input", vec=True))
    # One exchange carries round 1's unmask request and round 2's setup.
    setup2 = s2.setup()
    unmask1: dict[int, Any] = {}
    advert2: dict[int, Any] = {}
    for nid in ids:
        if nid in req1:
            unmask1[nid] = deliver(nid, encode(req1[nid]), "unmask")
        if nid in cohorts[2]:
            advert2[nid] = deliver(nid, encode(setup2), "setup")
        if nid in req1 and nid in cohorts[2]:
            assert "secagg/2" in store[nid] and "secagg/1" not in store[nid]
    keys2 = s2.collect_keys(advert2)
    result1 = s1.collect_unmask(unmask1)
    # A round-1 message reaching round 2's state is refused, not misapplied.
    stray = dataclasses.replace(keys2[ids[3]], round_id=1)
    with pytest.raises(SecAggProtocolError, match="round 1 reached"):
        SecAggClient.from_state(store[ids[3]]["secagg/2"]).share_keys(stray)
    fwd2 = s2.collect_shares(stage(keys2, "share_keys"))
    req2 = s2.collect_masked(stage(fwd2, "masked_input", vec=True))
    result2 = s2.collect_unmask(stage(req2, "unmask"))
    for result, cohort in ((result1, cohorts[1]), (result2, cohorts[2])):
        params = resolve_params(len(cohort), 32)
        assert result.contributors == tuple(cohort)
        _check(result, everyone, params)
    assert all(not states for states in store.values())


def test_ring_mode_sums_integer_vectors_exactly_even_after_a_dropout() -> None:
    """quant_bits=0: vectors already in Z_2^b (distributed DP's integer noise) are masked and
    summed exactly, with no clipping or quantisation; a dropped node's masks still cancel."""
    from privacy.dp.user_level import decode_sum, to_ring
    from privacy.secagg import SecAggConfigError, SecAggInputError

    rng = np.random.default_rng(7)
    ints = {i: rng.integers(-(2**30), 2**30, size=40) for i in range(10, 18)}
    params = resolve_params(len(ints), 40, quant_bits=0, mod_bits=48)
    lost = 11
    result = run_local_round({i: to_ring(v, 48) for i, v in ints.items()}, params,
                             drop_after={"share_keys": {lost}})
    expected = sum(v for i, v in ints.items() if i != lost)
    assert lost not in result.contributors
    assert result.total.dtype == np.uint64
    assert np.array_equal(decode_sum(result.total, 1.0, 2**48), expected.astype(np.float64))
    with pytest.raises(SecAggConfigError, match="needs mod_bits"):
        resolve_params(8, 40, quant_bits=0)
    with pytest.raises(SecAggInputError, match="uint64"):
        run_local_round({i: v.astype(np.float64) for i, v in ints.items()}, params)
