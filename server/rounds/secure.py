"""A round with secure aggregation (SecAgg+) on the Message API: the server learns only sums.

One round = four exchanges with the sampled nodes:

    setup/advertise keys -> share keys -> train, reply with the masked vector -> unmask the SUM

The protocol itself is `privacy.secagg` (no Flower inside); here we only move its payloads and
record the outcome. The masked vector is [weight * update, weight, summaries]: the server
de-quantises the sum, divides by the total weight (FedAvg stays sample-weighted without any
node's count being revealed) and reads the summed evaluation and training loss from the tail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from clients.task import wire
from clients.task.evaluation import Sums
from clients.task.run_config import RunConfig
from privacy.secagg import (
    SecAggAbort,
    SecAggError,
    SecAggServer,
    encode,
    resolve_params,
    unpack_weighted,
)
from privacy.secagg.wire import flatten_state, unflatten_state
from server.rounds.replies import ReplySorter, error_reason
from server.run import FederatedRun
from server.store.records import DROPPED, OK


class SecureRounds:
    """Secure-aggregation rounds; the tail layout is fixed for the run by `summary_names`."""

    def __init__(self, run: FederatedRun, cfg: RunConfig, sorter: ReplySorter,
                 summary_names: list[str], with_eval: bool) -> None:
        self.run = run
        self.cfg = cfg
        self.sorter = sorter
        self.names = list(summary_names)
        self.with_eval = with_eval
        self._rnd = 0

    @property
    def tail_size(self) -> int:
        return (2 + len(self.names) if self.with_eval else 0) + (0 if self.cfg.dp else 2)

    # --- stage exchanges ----------------------------------------------------------------------
    def _exchange(self, grid: Grid, action: str, outbound: Mapping[int, Any]) -> dict[int, Any]:
        """Send one payload per node as `action`; return payloads of good replies."""
        messages = [
            Message(content=wire.payload_record(encode(msg)), dst_node_id=nid,
                    message_type=action)
            for nid, msg in outbound.items()
        ]
        replies: dict[int, Any] = {}
        for reply in grid.send_and_receive(messages, timeout=self.cfg.round_timeout):
            nid = reply.metadata.src_node_id
            if reply.has_error():
                self.run.event("secagg-node-error", f"node {nid} in {action}: "
                               f"{error_reason(reply)}", self._rnd, nid)
                continue
            try:
                replies[nid] = wire.record_payload(reply.content)
            except SecAggError as err:  # malformed transport: the node counts as dropped
                self.run.event("secagg-node-error", f"node {nid}: {err}", self._rnd, nid)
        return replies

    def _abort(self, server: SecAggServer | None, err: Exception) -> None:
        self.run.event("secagg-abort", f"round {self._rnd}: {err}; model unchanged", self._rnd,
                       data=server.summary() if server else {})

    # --- one round ----------------------------------------------------------------------------
    def train(self, grid: Grid, rnd: int, arrays: ArrayRecord, nodes: list[int],
              config: ConfigRecord, evaluate_only: bool = False) -> ArrayRecord | None:
        self._rnd = rnd
        glob = {k: v.numpy() for k, v in arrays.items()}
        size = int(flatten_state(glob).size)
        o = self.cfg.secagg_options
        server: SecAggServer | None = None
        try:
            params = resolve_params(
                len(nodes), size + 1 + self.tail_size,
                num_neighbours=o["neighbours"] or None, threshold=o["threshold"] or None,
                clip_range=o["clip_range"], quant_bits=int(o["quant_bits"]))
            context = f"{self.run.run_id}/evaluate" if evaluate_only else str(self.run.run_id)
            server = SecAggServer(sorted(nodes), params, run_id=context, round_id=rnd)
            keys = server.collect_keys(
                self._exchange(grid, wire.SECAGG_SETUP, dict.fromkeys(nodes, server.setup())))
            forwarded = server.collect_shares(self._exchange(grid, wire.SECAGG_SHARE, keys))
        except (SecAggAbort, SecAggError) as err:
            self._abort(server, err)
            return None
        config = ConfigRecord({**dict(config), "summary-names": self.names,
                               "summary-eval": self.with_eval, "evaluate-only": evaluate_only})
        messages = []
        for nid, fwd in forwarded.items():
            content = wire.payload_record(encode(fwd))
            content[wire.ARRAYS] = arrays
            content[wire.CONFIG] = config
            messages.append(Message(content=content, dst_node_id=nid,
                                    message_type=wire.SECAGG_MASKED))
        replies = grid.send_and_receive(messages, timeout=self.cfg.round_timeout)
        phase = "evaluate" if evaluate_only else "train"
        good = self.sorter.sort(rnd, replies, phase, record_ok=False)
        if not evaluate_only:  # the same stop as the plain path: refusals end a run alike
            self.sorter.require(rnd, len(good.accepted), self.cfg.min_nodes)
        masked: dict[int, Any] = {}
        clear: dict[int, dict[str, Any]] = {}
        for nid, msg in good.accepted.items():
            try:
                masked[nid] = wire.record_payload(msg.content)
            except SecAggError as err:
                self.run.event("secagg-node-error", f"node {nid}: {err}", rnd, nid)
                continue
            clear[nid] = {k: v for rec in msg.content.metric_records.values()
                          for k, v in rec.items()}
        try:
            requests = server.collect_masked(masked)
            result = server.collect_unmask(self._exchange(grid, wire.SECAGG_UNMASK, requests))
        except (SecAggAbort, SecAggError) as err:
            self._abort(server, err)
            return None
        summary = server.summary()
        for nid in result.contributors:
            self.run.node_result(rnd, nid, phase, OK, clear.get(nid, {}))
        for nid, why in result.dropped.items():
            if nid in clear:  # answered, but its input was not in the sum
                self.run.node_result(rnd, nid, phase, DROPPED, {"reason": why})
        total = np.asarray(result.total, dtype=np.float64)
        self._read_tail(rnd, total[size + 1:], evaluate_only)
        if evaluate_only:
            return None
        self.sorter.require(rnd, len(result.contributors), self.cfg.min_nodes, "contributor(s)")
        update, total_weight = unpack_weighted(total[: size + 1], self.cfg.secagg_max_weight)
        if not np.isfinite(update).all():
            self.run.event("secagg-sum-rejected", f"round {rnd}: unmasked sum is not finite", rnd)
            return None
        norm = float(np.linalg.norm(update))
        bound = self.cfg.update_norm_bound
        if bound and norm > bound:
            self.run.event("secagg-sum-rejected", f"round {rnd}: aggregate update norm "
                           f"{norm:.3g} exceeds update-norm-bound {bound:g}", rnd)
            return None
        self.run.round_extra(rnd, {"secagg": {
            "masked": sorted(str(n) for n in masked),
            "contributors": [str(n) for n in result.contributors],
            "dropped": {str(n): why for n, why in result.dropped.items()},
            # dropped after sharing keys: their masks were removed via their shares
            "recovered": sorted(str(n) for n in result.dropped if n in forwarded),
            "threshold": summary["threshold"],
            "total_weight": total_weight,
            "update_norm": norm if math.isfinite(norm) else -1.0,
        }})
        new = unflatten_state(flatten_state(glob) + update, glob)
        return ArrayRecord(array_dict={k: Array(v) for k, v in new.items()})

    def _read_tail(self, rnd: int, tail: np.ndarray, evaluate_only: bool) -> None:
        """Summed evaluation (of the model the nodes received) and training loss."""
        w, bound = self.cfg.secagg_max_weight, self.run.task.loss_bound
        pos = 0
        if self.with_eval:
            k = 2 + len(self.names)
            n, loss, metrics = wire.unpack_summary(tail[pos:pos + k], self.names, w, bound)
            pos += k
            if n >= 0.5:
                self.run.federated(rnd if evaluate_only else rnd - 1,
                                   Sums(n, loss, metrics))
        if not self.cfg.dp and not evaluate_only:
            n, loss, _ = wire.unpack_summary(tail[pos:pos + 2], [], w, bound)
            if n >= 0.5:
                self.run.train_summary(rnd, Sums(n, loss))

    def evaluate(self, grid: Grid, rnd: int, arrays: ArrayRecord, nodes: list[int]) -> None:
        """Final federated evaluation, summed securely (an evaluate-only masked round)."""
        if self.with_eval:
            self.train(grid, rnd, arrays, nodes, ConfigRecord({"server-round": rnd}),
                       evaluate_only=True)
