"""Flower glue for secure aggregation (SecAgg+) on the Message API.

One round = four exchanges with the sampled nodes, driven from the strategy hooks that
`Strategy.start` already calls:

    configure_train:  setup/advertise keys -> share keys -> train messages carrying each node's
                      forwarded shares (the node trains, then returns only its masked update)
    aggregate_train:  collect masked inputs -> unmask (survivors reveal shares) -> the SUM

The protocol itself is `privacy.secagg` (no Flower inside); here we only move its payloads.
The server never holds one node's unmasked update: it de-quantises the sum of
[weight * update, weight] and divides, so FedAvg stays sample-weighted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from clients.secagg_records import payload_record, record_payload
from privacy.secagg import (
    SecAggAbort,
    SecAggError,
    SecAggServer,
    encode,
    resolve_params,
    unpack_weighted,
)
from privacy.secagg.wire import flatten_state, unflatten_state
from server.strategy import REFUSED_KEY, reply_metrics


class SecAggMixin:
    """Secure aggregation on top of FedGuardMixin + FedAvg (place it first in the bases)."""

    run: Any
    min_train_nodes: int

    def __init__(self, *args: Any, secagg: Mapping[str, Any], timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secagg_options = dict(secagg)
        self.timeout = timeout
        self._grid: Grid | None = None
        self._server: SecAggServer | None = None
        self._global: dict[str, np.ndarray] = {}
        self._forwarded: set[int] = set()
        self._rnd = 0

    # --- stage exchanges ---------------------------------------------------------------------
    def _exchange(self, action: str, outbound: Mapping[int, Any]) -> dict[int, Any]:
        """Send one payload per node as `train.<action>`; return payloads of good replies."""
        assert self._grid is not None
        messages = [
            Message(content=payload_record(encode(msg)), dst_node_id=nid,
                    message_type=f"train.{action}")
            for nid, msg in outbound.items()
        ]
        replies: dict[int, Any] = {}
        for reply in self._grid.send_and_receive(messages, timeout=self.timeout):
            nid = reply.metadata.src_node_id
            if reply.has_error():
                self.run.event("secagg-node-error", f"node {nid} in {action}: "
                               f"{(reply.error.reason or '').strip().splitlines()[-1:]}",
                               self._rnd, nid)
                continue
            try:
                replies[nid] = record_payload(reply.content)
            except SecAggError as err:  # malformed transport: the node counts as dropped
                self.run.event("secagg-node-error", f"node {nid}: {err}", self._rnd, nid)
        return replies

    def _abort(self, err: Exception) -> None:
        self.run.event("secagg-abort", f"round {self._rnd}: {err}; model unchanged", self._rnd,
                       data=self._server.summary() if self._server else {})
        self._server = None

    # --- strategy hooks ----------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        plain = list(super().configure_train(server_round, arrays, config, grid))  # samples
        self._rnd = self.run.global_round(server_round)
        self._grid = grid
        self._global = {k: v.numpy() for k, v in arrays.items()}
        node_ids = sorted(m.metadata.dst_node_id for m in plain)
        o = self.secagg_options
        try:
            params = resolve_params(
                len(node_ids),
                int(flatten_state(self._global).size) + 1,
                num_neighbours=o.get("neighbours") or None,
                threshold=o.get("threshold") or None,
                clip_range=o["clip_range"],
                quant_bits=o["quant_bits"],
            )
            self._server = SecAggServer(node_ids, params, run_id=str(self.run.run_id),
                                        round_id=self._rnd)
            setup = self._server.setup()
            keys = self._server.collect_keys(
                self._exchange("secagg_setup", dict.fromkeys(node_ids, setup)))
            forwarded = self._server.collect_shares(self._exchange("secagg_share", keys))
        except (SecAggAbort, SecAggError) as err:
            self._abort(err)
            return []
        self._forwarded = set(forwarded)
        messages = []
        for nid, fwd in forwarded.items():
            content = payload_record(encode(fwd))
            content["arrays"] = arrays
            content["config"] = config
            messages.append(Message(content=content, dst_node_id=nid,
                                    message_type="train.secagg_masked"))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = self.run.global_round(server_round)
        if self._server is None:  # aborted before training
            return None, None
        masked: dict[int, Any] = {}
        metrics_by_node: dict[int, dict[str, Any]] = {}
        for msg in replies:
            nid = msg.metadata.src_node_id
            if msg.has_error():
                reason = (msg.error.reason or "").strip().splitlines()[-1:] or [""]
                self.run.node_result(rnd, nid, "train", "failed", {"error": reason[0][:500]})
                self.run.event("node-failed", f"node {nid} failed in train: {reason[0]}", rnd, nid)
                continue
            metrics = reply_metrics(msg)
            if metrics.get(REFUSED_KEY):
                why = str(msg.content.config_records.get("refusal", {}).get("reason", ""))
                self.run.node_result(rnd, nid, "train", "refused", metrics)
                self.run.event("node-refused", why or f"node {nid} refused", rnd, nid)
                continue
            try:
                masked[nid] = record_payload(msg.content)
            except SecAggError as err:
                self.run.event("secagg-node-error", f"node {nid}: {err}", rnd, nid)
                continue
            metrics_by_node[nid] = metrics
        try:
            requests = self._server.collect_masked(masked)
            result = self._server.collect_unmask(self._exchange("secagg_unmask", requests))
        except (SecAggAbort, SecAggError) as err:
            self._abort(err)
            return None, None
        summary = self._server.summary()
        self._server = None
        update, total_weight = unpack_weighted(result.total, self.secagg_options["max_weight"])
        if not np.isfinite(update).all():
            self.run.event("secagg-sum-rejected", f"round {rnd}: unmasked sum is not finite", rnd)
            return None, None
        norm = float(np.linalg.norm(update))
        bound = getattr(self, "update_norm_bound", 0.0)
        if bound and norm > bound:
            self.run.event("secagg-sum-rejected", f"round {rnd}: aggregate update norm "
                           f"{norm:.3g} exceeds update-norm-bound {bound:g}", rnd)
            return None, None
        new = unflatten_state(flatten_state(self._global) + update, self._global)
        for nid in result.contributors:
            m = metrics_by_node.get(nid, {})
            self.run.node_result(rnd, nid, "train", "ok", m)
        for nid, why in result.dropped.items():
            if nid in metrics_by_node:  # trained, but its input was not in the sum
                self.run.node_result(rnd, nid, "train", "dropped", {"reason": why})
        self.run.round_extra(rnd, {"secagg": {
            "masked": sorted(str(n) for n in masked),
            "contributors": [str(n) for n in result.contributors],
            "dropped": {str(n): why for n, why in result.dropped.items()},
            # dropped after sharing keys: their masks were removed via their shares
            "recovered": sorted(str(n) for n in result.dropped if n in self._forwarded),
            "threshold": summary["threshold"],
            "total_weight": total_weight,
            "update_norm": norm,
        }})
        if len(result.contributors) < self.min_train_nodes:
            self.run.event("round-empty", f"round {rnd}: {len(result.contributors)} "
                           "contributor(s), fewer than min-nodes; model unchanged", rnd)
            return None, None
        agg = MetricRecord({"contributors": float(len(result.contributors)),
                            "update-norm": norm if math.isfinite(norm) else -1.0})
        return ArrayRecord(array_dict={k: Array(v) for k, v in new.items()}), agg
