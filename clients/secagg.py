"""A node's side of secure aggregation: keep protocol state between messages, mask the update.

In deployment a message may run in a fresh process, so the protocol client lives in the node's
`Context.state` between stages (bytes/ints only; see `privacy.secagg.wire`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context

from privacy.secagg import SecAggClient, decode, encode, pack_weighted
from privacy.secagg.wire import flatten_state, join_payload, split_payload

STATE_KEY = "secagg-client"


def _load(context: Context) -> SecAggClient:
    rec = context.state.config_records.get(STATE_KEY)
    if rec is None:
        return SecAggClient(int(context.node_id))
    return SecAggClient.from_state(join_payload(dict(rec)))


def _save(context: Context, client: SecAggClient) -> None:
    scalars, _ = split_payload(client.to_state())
    context.state[STATE_KEY] = ConfigRecord(scalars)


def handle_stage(context: Context, stage: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Answer `setup`, `share_keys` or `unmask` with the next payload."""
    client = SecAggClient(int(context.node_id)) if stage == "setup" else _load(context)
    reply = getattr(client, stage)(decode(payload))
    if stage == "unmask":
        context.state.config_records.pop(STATE_KEY, None)  # the round is over
    else:
        _save(context, client)
    return encode(reply)


def masked_update(
    context: Context,
    payload: Mapping[str, Any],
    update: np.ndarray,
    weight: float,
    max_weight: float,
    tail: Sequence[float] = (),
) -> dict[str, Any]:
    """Mask [weight * update, weight, tail...]; only the masked vector leaves the node.

    `tail` holds summaries already scaled into [0, 1] (see `clients.task.wire.pack_summary`).
    """
    vector = pack_weighted(update, weight, max_weight)
    if len(tail):
        vector = np.concatenate([vector, np.asarray(tail, dtype=np.float64)])
    client = _load(context)
    reply = client.masked_input(decode(payload), vector)
    _save(context, client)
    return encode(reply)


def state_delta(new: Mapping[str, Any], old: Mapping[str, Any]) -> np.ndarray:
    """new - old as one float vector, in the global model's key order."""
    return flatten_state({k: np.asarray(new[k]) for k in old}) - flatten_state(
        {k: np.asarray(v) for k, v in old.items()})
