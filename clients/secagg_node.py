"""A node's side of secure aggregation: keep protocol state between messages, mask the update.

In deployment every Flower message runs in a fresh process, so the protocol client lives in the
node's `Context.state` between stages (bytes/ints only; see `privacy.secagg.wire`).
"""

from __future__ import annotations

from collections.abc import Mapping
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
    global_state: Mapping[str, np.ndarray],
    new_state: Mapping[str, np.ndarray],
    num_examples: float,
    max_weight: float,
) -> dict[str, Any]:
    """Mask [weight * (new - global), weight]; only the masked vector leaves the node."""
    update = flatten_state(new_state) - flatten_state(global_state)
    vector = pack_weighted(update, num_examples, max_weight)
    client = _load(context)
    reply = client.masked_input(decode(payload), vector)
    _save(context, client)
    return encode(reply)
