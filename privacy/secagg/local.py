"""In-process driver that runs a whole round, mirroring how the Flower glue must call us.

Every payload goes through `encode`/`decode` and every client is rebuilt from `to_state()`
between stages, exactly as fresh Flower processes would. Used by tests and the benchmark,
and as the reference for the Message-API glue.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privacy.secagg.client import SecAggClient, TrustedKeys
from privacy.secagg.errors import SecAggAbort, SecAggConfigError, SecAggProtocolError
from privacy.secagg.messages import decode, encode
from privacy.secagg.params import SecAggParams
from privacy.secagg.server import SecAggResult, SecAggServer

STAGES = ("advertise", "share_keys", "masked_input", "unmask")
Tamper = Callable[[str, int, dict[str, Any]], dict[str, Any]]


def run_local_round(
    vectors: Mapping[int, np.ndarray],
    params: SecAggParams,
    *,
    run_id: str = "local",
    round_id: int = 1,
    drop_after: Mapping[str, Collection[int]] | None = None,
    identity_keys: Mapping[int, Ed25519PrivateKey] | None = None,
    trusted_keys: TrustedKeys | None = None,
    tamper: Tamper | None = None,
    server: SecAggServer | None = None,
) -> SecAggResult:
    """Run one round over `vectors` (node id -> vector).

    drop_after maps a stage name in STAGES to the nodes that vanish right after replying to
    it (their reply is lost, as in a real crash after sending). `tamper(stage, node, payload)`
    may rewrite any server-to-node payload in flight. A client that aborts counts as dropped.
    """
    drop_after = drop_after or {}
    unknown = set(drop_after) - set(STAGES)
    if unknown:
        raise SecAggConfigError(f"drop_after stages {sorted(unknown)} unknown; use {STAGES}")
    ids = sorted(vectors)
    public = (
        None if identity_keys is None else {i: k.public_key() for i, k in identity_keys.items()}
    )
    if server is None:
        server = SecAggServer(ids, params, run_id=run_id, round_id=round_id, trusted_keys=public)
    trusted = trusted_keys if trusted_keys is not None else public
    states: dict[int, dict[str, Any]] = {i: SecAggClient(i).to_state() for i in ids}
    gone: set[int] = set()

    def step(stage: str, outbound: Mapping[int, Any], call: str, *extra: Any) -> dict[int, Any]:
        replies: dict[int, Any] = {}
        for nid, msg in outbound.items():
            if nid in gone:
                continue
            payload = encode(msg)
            if tamper is not None:
                payload = tamper(stage, nid, payload)
            key = None if identity_keys is None else identity_keys.get(nid)
            client = SecAggClient.from_state(states[nid], identity_key=key, trusted_keys=trusted)
            try:
                reply = getattr(client, call)(decode(payload), *(x(nid) for x in extra))
            except (SecAggAbort, SecAggProtocolError):
                gone.add(nid)
                continue
            states[nid] = client.to_state()
            replies[nid] = encode(reply)
        for nid in drop_after.get(stage, ()):
            replies.pop(nid, None)
            gone.add(nid)
        return replies

    setup = server.setup()
    replies = step("advertise", dict.fromkeys(ids, setup), "setup")
    replies = step("share_keys", server.collect_keys(replies), "share_keys")
    replies = step(
        "masked_input", server.collect_shares(replies), "masked_input", vectors.__getitem__
    )
    replies = step("unmask", server.collect_masked(replies), "unmask")
    return server.collect_unmask(replies)
