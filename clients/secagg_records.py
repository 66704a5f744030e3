"""The secure-aggregation wire format between ServerApp and ClientApp (Flower records).

Shared by both sides like the task itself: protocol payloads (from `privacy.secagg`) become a
ConfigRecord of scalars plus an ArrayRecord of arrays, and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from privacy.secagg.wire import join_payload, split_payload

SECAGG_CFG = "secagg"
SECAGG_ARRAYS = "secagg-arrays"


def payload_record(payload: Mapping[str, Any]) -> RecordDict:
    """A protocol payload as a RecordDict (scalars + arrays)."""
    scalars, arrays = split_payload(payload)
    rd = RecordDict({SECAGG_CFG: ConfigRecord(scalars)})
    if arrays:
        rd[SECAGG_ARRAYS] = ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()})
    return rd


def record_payload(content: RecordDict) -> dict[str, Any]:
    """Inverse of `payload_record` (validation happens in the protocol's decode)."""
    scalars = dict(content.config_records.get(SECAGG_CFG, {}))
    arrays_rec = content.array_records.get(SECAGG_ARRAYS)
    arrays = {k: v.numpy() for k, v in arrays_rec.items()} if arrays_rec is not None else {}
    return join_payload(scalars, arrays)
