"""A node's side of secure aggregation: protocol state between messages, one slot per round.

A message may be handled by a fresh process, so each round's protocol client lives in the
node's `Context.state` (bytes/ints only; see `privacy.secagg.wire`), keyed by round: pipelined
rounds overlap, a node unmasking round r while it already advertised its keys for round r+1.
Which stage a payload asks for is read from the payload itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context

from privacy.secagg import (
    ForwardedSharesMsg,
    KeysMsg,
    SecAggClient,
    SecAggProtocolError,
    SetupMsg,
    UnmaskRequestMsg,
    decode,
    encode,
    pack_weighted,
)
from privacy.secagg.wire import flatten_state, join_payload, split_payload

SLOT = "secagg-client/"
KEEP_ROUNDS = 3  # a node that missed rounds keeps no older protocol state than this


def _slot(round_id: int) -> str:
    return f"{SLOT}{round_id}"


def _load(context: Context, round_id: int) -> SecAggClient:
    rec = context.state.config_records.get(_slot(round_id))
    if rec is None:
        raise SecAggProtocolError(f"no secure-aggregation state for round {round_id} on this "
                                  "node (it missed the key exchange); it sits this round out")
    return SecAggClient.from_state(join_payload(dict(rec)))


def _save(context: Context, round_id: int, client: SecAggClient) -> None:
    scalars, _ = split_payload(client.to_state())
    context.state[_slot(round_id)] = ConfigRecord(scalars)
    for key in [k for k in context.state.config_records if k.startswith(SLOT)]:
        if int(key[len(SLOT):]) < round_id - KEEP_ROUNDS:
            context.state.config_records.pop(key, None)


def round_of(payload: Mapping[str, Any]) -> int:
    return int(decode(payload).round_id)


def handle(context: Context, payload: Mapping[str, Any],
           vector: np.ndarray | None = None) -> dict[str, Any]:
    """Answer one protocol payload (setup, keys, forwarded shares + `vector`, or an unmask
    request) with the next one, keeping the round's state in its slot."""
    msg = decode(payload)
    rnd = int(msg.round_id)
    if isinstance(msg, SetupMsg):
        client = SecAggClient(int(context.node_id))
        reply = client.setup(msg)
    elif isinstance(msg, KeysMsg):
        client = _load(context, rnd)
        reply = client.share_keys(msg)
    elif isinstance(msg, ForwardedSharesMsg):
        if vector is None:
            raise SecAggProtocolError("forwarded shares arrive with the train request only")
        client = _load(context, rnd)
        reply = client.masked_input(msg, vector)
    elif isinstance(msg, UnmaskRequestMsg):
        client = _load(context, rnd)
        reply = client.unmask(msg)
        context.state.config_records.pop(_slot(rnd), None)  # the round is over
        return encode(reply)
    else:
        raise SecAggProtocolError(f"a node does not answer {type(msg).__name__}")
    _save(context, rnd, client)
    return encode(reply)


def weighted_vector(update: np.ndarray, weight: float, max_weight: float,
                    tail: Sequence[float] = ()) -> np.ndarray:
    """[weight * update, weight, tail...]; `tail` holds summaries already scaled into [0, 1]
    (see `clients.task.wire.pack_summary`). Only its masked form leaves the node."""
    vector = pack_weighted(update, weight, max_weight)
    if len(tail):
        vector = np.concatenate([vector, np.asarray(tail, dtype=np.float64)])
    return vector


def state_delta(new: Mapping[str, Any], old: Mapping[str, Any]) -> np.ndarray:
    """new - old as one float vector, in the global model's key order."""
    return flatten_state({k: np.asarray(new[k]) for k in old}) - flatten_state(
        {k: np.asarray(v) for k, v in old.items()})


__all__ = ["KeysMsg", "handle", "round_of", "state_delta", "weighted_vector"]
