"""Fuzzed payloads and state: malformed input raises SecAggProtocolError, never anything else."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privacy.secagg import (
    STAGE_KEY,
    AdvertiseKeysMsg,
    ForwardedSharesMsg,
    KeysMsg,
    MaskedInputMsg,
    SecAggClient,
    SecAggError,
    SecAggProtocolError,
    SecAggServer,
    ShareKeysMsg,
    UnmaskRequestMsg,
    UnmaskSharesMsg,
    decode,
    encode,
    resolve_params,
)
from privacy.secagg.crypto import SHARE_BYTES
from privacy.secagg.messages import CIPHERTEXT_BYTES

IDS = (7, 2**63 + 5, 2**64 - 1)


def _valid_messages() -> list[Any]:
    server = SecAggServer(IDS, resolve_params(3, 5), run_id="fuzz", round_id=9)
    k = bytes(range(32))
    return [
        server.setup(),
        AdvertiseKeysMsg(7, k, k[::-1], bytes(64)),
        KeysMsg(9, (7, 2**64 - 1), [k, k], [k, k], [b"", bytes(64)]),
        ShareKeysMsg(7, (2**64 - 1,), [bytes(CIPHERTEXT_BYTES)], bytes(32)),
        ForwardedSharesMsg(9, (2**63 + 5,), [bytes(CIPHERTEXT_BYTES)]),
        MaskedInputMsg(7, np.arange(5, dtype=np.uint64), (2**64 - 1,)),
        UnmaskRequestMsg(9, (7, 2**63 + 5), (2**64 - 1,)),
        UnmaskSharesMsg(7, (7,), [bytes(SHARE_BYTES)], (2**64 - 1,), [bytes(SHARE_BYTES)]),
    ]


VALID = _valid_messages()


def _same(a: Any, b: Any) -> bool:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            if not np.array_equal(x, y) or x.dtype != y.dtype:
                return False
        elif x != y:
            return False
    return type(a) is type(b)


@pytest.mark.parametrize("msg", VALID, ids=lambda m: m.STAGE)
def test_valid_messages_round_trip_through_flower_types(msg: Any) -> None:
    payload = encode(msg)
    allowed = (int, float, str, bytes, bool, list, np.ndarray)
    assert all(isinstance(v, allowed) for v in payload.values())
    for v in payload.values():
        if isinstance(v, list):
            assert len({type(x) for x in v}) <= 1  # homogeneous, as ConfigRecord requires
    assert _same(decode(payload), msg)


def test_setup_with_unsafe_threshold_is_refused() -> None:
    payload = encode(VALID[0]) | {"threshold": 1}
    with pytest.raises(SecAggProtocolError, match="threshold"):
        decode(payload)


def test_wrong_expected_stage_is_refused() -> None:
    with pytest.raises(SecAggProtocolError, match="expected"):
        decode(encode(VALID[1]), expect=KeysMsg)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=100),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.builds(
        lambda n, dt: np.zeros(n, dtype=dt),
        st.integers(0, 6),
        st.sampled_from([np.uint64, np.int64, np.float32, np.uint8]),
    ),
    st.builds(lambda: np.zeros((2, 2), dtype=np.uint64)),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
)


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.data())
def test_fuzzed_payloads_raise_only_protocol_errors(data: st.DataObject) -> None:
    base = encode(data.draw(st.sampled_from(VALID)))
    action = data.draw(st.sampled_from(["replace", "delete", "add", "stage", "random"]))
    payload: Any = dict(base)
    key = data.draw(st.sampled_from(sorted(base)))
    if action == "replace":
        payload[key] = data.draw(values)
    elif action == "delete":
        del payload[key]
    elif action == "add":
        payload[data.draw(st.one_of(st.text(max_size=8), st.integers()))] = data.draw(values)
    elif action == "stage":
        payload[STAGE_KEY] = data.draw(st.one_of(st.sampled_from([m.STAGE for m in VALID]), values))
    else:
        payload = data.draw(st.one_of(values, st.dictionaries(st.text(max_size=10), values)))
    try:
        msg = decode(payload)
    except SecAggProtocolError as exc:
        assert "\n" not in str(exc)
        return
    assert _same(decode(encode(msg)), msg)  # anything accepted must be a valid message


@settings(max_examples=150, deadline=None, database=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 40))
def test_fuzzed_bytes_fields_never_crash(blob: bytes, cut: int) -> None:
    for msg in VALID:
        base = encode(msg)
        for key, value in base.items():
            if isinstance(value, bytes):
                for bad in (blob, value[:cut], value + blob):
                    with contextlib.suppress(SecAggProtocolError):
                        decode({**base, key: bad})


def _midround_state() -> dict[str, Any]:
    params = resolve_params(3, 4)
    server = SecAggServer(IDS, params, run_id="st", round_id=1)
    clients = {i: SecAggClient(i) for i in IDS}
    setup = server.setup()
    keys = server.collect_keys({i: c.setup(setup) for i, c in clients.items()})
    shares = {i: clients[i].share_keys(keys[i]) for i in IDS}
    fwd = server.collect_shares(shares)
    clients[7].masked_input(fwd[7], np.ones(4))
    return clients[7].to_state()


STATE = _midround_state()


@settings(max_examples=200, deadline=None, database=None)
@given(st.data())
def test_corrupt_client_state_raises_only_protocol_errors(data: st.DataObject) -> None:
    state = dict(STATE)
    key = data.draw(st.sampled_from(sorted(state)))
    if data.draw(st.booleans()):
        del state[key]
    else:
        state[key] = data.draw(values)
    try:
        client = SecAggClient.from_state(state)
    except SecAggProtocolError as exc:
        assert "\n" not in str(exc)
        return
    assert all(type(v) in (bytes, int, str) for v in client.to_state().values())


def _client_at(stage: str) -> tuple[SecAggClient, Any]:
    """A client of IDS[0] advanced to `stage`, plus the server (for its public data)."""
    server = SecAggServer(IDS, resolve_params(3, 4), run_id="h", round_id=2)
    clients = {i: SecAggClient(i) for i in IDS}
    setup = server.setup()
    keys = server.collect_keys({i: c.setup(setup) for i, c in clients.items()})
    if stage == "shared":
        shares = {i: clients[i].share_keys(keys[i]) for i in IDS}
        server.collect_shares(shares)
    return clients[IDS[0]], server


node_ids = st.sampled_from([*IDS, 12345])


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            node_ids, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32)
        ),
        max_size=4,
        unique_by=lambda t: t[0],
    ),
    st.sampled_from([b"", bytes(64)]),
)
def test_hostile_keys_message_raises_only_secagg_errors(entries: list, sig: bytes) -> None:
    client, _ = _client_at("advertised")
    msg = KeysMsg(
        2,
        tuple(e[0] for e in entries),
        [e[1] for e in entries],
        [e[2] for e in entries],
        [sig] * len(entries),
    )
    with contextlib.suppress(SecAggError):
        reply = client.share_keys(msg)
        assert set(reply.recipients) <= set(IDS[1:])


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(node_ids, st.binary(min_size=CIPHERTEXT_BYTES, max_size=CIPHERTEXT_BYTES)),
        max_size=4,
        unique_by=lambda t: t[0],
    )
)
def test_garbage_bundles_are_rejected_not_crashing(entries: list) -> None:
    client, _ = _client_at("shared")
    msg = ForwardedSharesMsg(2, tuple(e[0] for e in entries), [e[1] for e in entries])
    with contextlib.suppress(SecAggError):
        reply = client.masked_input(msg, np.zeros(4))
        assert set(reply.rejected) == {e[0] for e in entries}  # random bytes never authenticate


def _through_flower(payload: dict[str, Any]) -> dict[str, Any]:
    """Carry a payload as Flower would: ConfigRecord + ArrayRecord, serialised to protobuf."""
    from flwr.common import Array, ArrayRecord, ConfigRecord, RecordDict, serde

    arrays = {k: Array(v) for k, v in payload.items() if isinstance(v, np.ndarray)}
    config = {k: v for k, v in payload.items() if not isinstance(v, np.ndarray)}
    record = RecordDict({"cfg": ConfigRecord(config), "arr": ArrayRecord(arrays)})
    back = serde.recorddict_from_proto(serde.recorddict_to_proto(record))
    out = dict(back["cfg"])
    out.update({k: a.numpy() for k, a in back["arr"].items()})
    return out


@pytest.mark.parametrize("msg", VALID, ids=lambda m: m.STAGE)
def test_payloads_survive_flower_record_serialisation(msg: Any) -> None:
    assert _same(decode(_through_flower(encode(msg))), msg)


def test_client_state_survives_a_flower_config_record() -> None:
    restored = _through_flower(dict(STATE))
    assert restored == STATE
    assert SecAggClient.from_state(restored).to_state() == STATE
