"""Rounds with secure aggregation (SecAgg+) on the Message API: the server learns only sums.

Pipelined, two exchanges a round with fresh keys every round:

    A: train request (model + this round's forwarded shares + next round's setup)
       -> reply: the masked vector + the node's keys for the next round
    B: unmask request (+ next round's keys) -> reply: unmask shares (+ encrypted shares)

The first round (and any round whose preparation aborted) bootstraps with a setup and a share
exchange first. The protocol itself is `privacy.secagg` (no Flower inside); here we only move
its payloads and record the outcome. The masked vector is [weight * update, weight, summaries]:
the server de-quantises the sum, divides by the total weight (FedAvg stays sample-weighted
without any node's count being revealed) and reads the summed evaluation and training loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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
from privacy.secagg.bounds import ThreatModel
from privacy.secagg.wire import flatten_state, unflatten_state
from server.rounds.replies import ReplySorter, RunStopped, error_reason
from server.run import FederatedRun
from server.store.records import DROPPED, OK

Sampler = Callable[[Grid, int], list[int]]
RING_BITS = 48  # Z_2^48 for user-level DP's integer vectors (overflow bounded by the plan)


@dataclass
class Prepared:
    """A round whose keys are exchanged: what its train request must carry."""

    server: SecAggServer
    forwarded: dict[int, Any]  # node -> ForwardedSharesMsg


class SecureRounds:
    """Secure-aggregation rounds; the summary layout is fixed for the run by `summary_names`."""

    def __init__(self, run: FederatedRun, cfg: RunConfig, sorter: ReplySorter,
                 summary_names: list[str], with_eval: bool, sample: Sampler,
                 last_round: int) -> None:
        self.run = run
        self.cfg = cfg
        self.sorter = sorter
        self.names = list(summary_names)
        self.with_eval = with_eval
        self.sample = sample
        self.last_round = last_round
        self.prepared: dict[int, Prepared] = {}
        self._cohorts: dict[int, list[int]] = {}
        self.user_plan: Any = None  # user-level DP (central-dp): the run's Skellam plan
        self._colluding = 0
        self._shares: list[int] = []  # honest noise shares summed per round (accounting)
        self._size = 0
        self._rnd = 0

    @property
    def tail_size(self) -> int:
        if self.cfg.central_dp:  # only the noisy update sum is released under user-level DP
            return 0
        return (2 + len(self.names) if self.with_eval else 0) + (0 if self.cfg.dp else 2)

    def _plan(self, nodes: list[int]) -> Any:
        """User-level DP (distributed, Kairouz et al. 2021): each node's Skellam share is sized
        for the fewest honest contributors a round can have (the secure sum's survivors floor
        minus the nodes assumed to collude with the server); refused if that is none."""
        from privacy.dp.user_level import calibrate_user_level, user_level_config_problem

        n = len(nodes)
        floor = resolve_params(n, self._size, min_nodes=self.cfg.min_nodes, quant_bits=0,
                               mod_bits=RING_BITS).min_survivors
        self._colluding = int(ThreatModel.corrupt_fraction * n)
        honest = floor - self._colluding
        problem = user_level_config_problem(secagg=True, min_contributors=max(honest, 1),
                                            min_survivors=floor,
                                            assumed_colluding=self._colluding)
        if problem or honest < 1:
            raise RunStopped(problem or f"user-level DP: {n} nodes leave no honest share after "
                             f"{self._colluding} assumed colluding; add nodes")
        plan = calibrate_user_level(self.cfg.central_dp_epsilon, self.cfg.dp_delta,
                                    self.cfg.num_server_rounds, honest,
                                    clip=self.cfg.central_dp_clip, dim=self._size,
                                    max_contributors=n, ring_bits=RING_BITS)
        self.run.event("central-dp", f"user-level DP: Skellam shares sized for {honest} honest "
                       f"contributors of {n} ({self._colluding} assumed colluding), clip "
                       f"{self.cfg.central_dp_clip:g}, target epsilon "
                       f"{self.cfg.central_dp_epsilon:g} at delta {self.cfg.dp_delta:g} over "
                       f"{self.cfg.num_server_rounds} rounds",
                       data={"min_contributors": honest, "colluding": self._colluding,
                             "share_variance": plan.share_variance, "scale": plan.scale,
                             "ring_bits": plan.ring_bits})
        return plan

    def cohort(self, grid: Grid, rnd: int) -> list[int]:
        """The round's nodes: fixed when its setup was sent with the previous round."""
        if rnd not in self._cohorts:
            self._cohorts[rnd] = self.sample(grid, rnd)
        return self._cohorts[rnd]

    # --- helpers ------------------------------------------------------------------------------
    def _new_server(self, nodes: list[int], rnd: int) -> SecAggServer:
        o = self.cfg.secagg_options
        ring = {"quant_bits": 0, "mod_bits": RING_BITS} if self.cfg.central_dp else {
            "clip_range": o["clip_range"], "quant_bits": int(o["quant_bits"])}
        length = self._size if self.cfg.central_dp else self._size + 1 + self.tail_size
        params = resolve_params(
            len(nodes), length, min_nodes=self.cfg.min_nodes,
            num_neighbours=o["neighbours"] or None, threshold=o["threshold"] or None, **ring)
        return SecAggServer(sorted(nodes), params, run_id=str(self.run.run_id), round_id=rnd)

    def _send(self, grid: Grid, messages: list[Message]) -> dict[int, Message]:
        replies: dict[int, Message] = {}
        for reply in grid.send_and_receive(messages, timeout=self.cfg.round_timeout):
            replies[reply.metadata.src_node_id] = reply
        return replies

    def _payload(self, rnd: int, nid: int, reply: Message, name: str) -> Any | None:
        """The payload `name` of a good reply; errors and malformed ones count as dropped."""
        if reply.has_error():
            self.run.event("secagg-node-error", f"node {nid}: {error_reason(reply)}", rnd, nid)
            return None
        if not wire.has_payload(reply.content, name):
            return None
        try:
            return wire.record_payload(reply.content, name)
        except SecAggError as err:
            self.run.event("secagg-node-error", f"node {nid}: {err}", rnd, nid)
            return None

    def _abort(self, rnd: int, server: SecAggServer | None, err: Exception) -> None:
        self.run.event("secagg-abort", f"round {rnd}: {err}; model unchanged", rnd,
                       data=server.summary() if server else {})

    def _bootstrap(self, grid: Grid, rnd: int, nodes: list[int]) -> Prepared | None:
        """Setup and share exchanges for a round nobody prepared (the first one)."""
        server: SecAggServer | None = None
        try:
            server = self._new_server(nodes, rnd)
            setup = server.setup()
            replies = self._send(grid, [
                Message(content=wire.payload_record(encode(setup)), dst_node_id=nid,
                        message_type=wire.SECAGG_SETUP) for nid in nodes])
            keys = server.collect_keys({n: p for n, r in replies.items()
                                        if (p := self._payload(rnd, n, r, wire.SECAGG_CFG))})
            replies = self._send(grid, [
                Message(content=wire.payload_record(encode(k)), dst_node_id=nid,
                        message_type=wire.SECAGG_SHARE) for nid, k in keys.items()])
            forwarded = server.collect_shares(
                {n: p for n, r in replies.items()
                 if (p := self._payload(rnd, n, r, wire.SECAGG_CFG))})
        except (SecAggAbort, SecAggError) as err:
            self._abort(rnd, server, err)
            return None
        return Prepared(server, forwarded)

    # --- one round ----------------------------------------------------------------------------
    def train(self, grid: Grid, rnd: int, arrays: ArrayRecord, nodes: list[int],
              config: ConfigRecord, evaluate_only: bool = False) -> ArrayRecord | None:
        self._rnd = rnd
        glob = {k: v.numpy() for k, v in arrays.items()}
        self._size = int(flatten_state(glob).size)
        if self.cfg.central_dp and self.user_plan is None:
            self.user_plan = self._plan(nodes)
        prep = self.prepared.pop(rnd, None) or self._bootstrap(grid, rnd, nodes)
        nxt = self._next_round(grid, rnd, evaluate_only)
        nxt_setup = nxt[1].setup() if nxt else None
        nxt_nodes = set(nxt[0]) if nxt else set()
        config = ConfigRecord({**dict(config), "summary-names": self.names,
                               "summary-eval": self.with_eval and not self.cfg.central_dp,
                               "evaluate-only": evaluate_only,
                               **(self.user_plan.to_config() if self.user_plan else {})})
        # Exchange A: train + masked input; the next round's setup rides along.
        forwarded = prep.forwarded if prep else {}
        messages = []
        for nid in sorted(set(forwarded) | nxt_nodes):
            if nid in forwarded:
                content = wire.payload_record(encode(forwarded[nid]))
                content[wire.ARRAYS], content[wire.CONFIG] = arrays, config
                kind = wire.SECAGG_MASKED
                if nid in nxt_nodes:
                    wire.payload_record(encode(nxt_setup), wire.SECAGG_NEXT, content)
            else:
                content, kind = wire.payload_record(encode(nxt_setup)), wire.SECAGG_SETUP
            messages.append(Message(content=content, dst_node_id=nid, message_type=kind))
        replies = self._send(grid, messages)
        trained = [r for n, r in replies.items() if n in forwarded]
        phase = "evaluate" if evaluate_only else "train"
        good = self.sorter.sort(rnd, trained, phase, record_ok=False)
        masked: dict[int, Any] = {}
        clear: dict[int, dict[str, Any]] = {}
        for nid, msg in good.accepted.items():
            if (payload := self._payload(rnd, nid, msg, wire.SECAGG_CFG)) is not None:
                masked[nid] = payload
                clear[nid] = {k: v for rec in msg.content.metric_records.values()
                              for k, v in rec.items()}
        adverts = {}
        for nid, reply in replies.items():
            name = wire.SECAGG_NEXT if nid in forwarded else wire.SECAGG_CFG
            if nid in nxt_nodes and (p := self._payload(rnd + 1, nid, reply, name)) is not None:
                adverts[nid] = p
        if prep is not None and not evaluate_only:
            self.sorter.require(rnd, len(good.accepted), self.cfg.min_nodes)
        requests: dict[int, Any] = {}
        if prep is not None:
            try:
                requests = prep.server.collect_masked(masked)
            except (SecAggAbort, SecAggError) as err:
                self._abort(rnd, prep.server, err)
                prep = None
        keys: dict[int, Any] = {}
        if nxt is not None:
            try:
                keys = nxt[1].collect_keys(adverts)
            except (SecAggAbort, SecAggError) as err:
                self._abort(rnd + 1, nxt[1], err)
                nxt = None
        # Exchange B: unmask this round; the next round's keys ride along.
        messages = []
        for nid in sorted(set(requests) | set(keys)):
            if nid in requests:
                content, kind = wire.payload_record(encode(requests[nid])), wire.SECAGG_UNMASK
                if nid in keys:
                    wire.payload_record(encode(keys[nid]), wire.SECAGG_NEXT, content)
            else:
                content, kind = wire.payload_record(encode(keys[nid])), wire.SECAGG_SHARE
            messages.append(Message(content=content, dst_node_id=nid, message_type=kind))
        replies = self._send(grid, messages) if messages else {}
        if nxt is not None:
            shares = {}
            for nid, reply in replies.items():
                name = wire.SECAGG_NEXT if nid in requests else wire.SECAGG_CFG
                if nid in keys and (p := self._payload(rnd + 1, nid, reply, name)) is not None:
                    shares[nid] = p
            try:
                self.prepared[rnd + 1] = Prepared(nxt[1], nxt[1].collect_shares(shares))
            except (SecAggAbort, SecAggError) as err:
                self._abort(rnd + 1, nxt[1], err)
        if prep is None:
            return None
        try:
            result = prep.server.collect_unmask(
                {n: p for n, r in replies.items() if n in requests
                 and (p := self._payload(rnd, n, r, wire.SECAGG_CFG)) is not None})
        except (SecAggAbort, SecAggError) as err:
            self._abort(rnd, prep.server, err)
            return None
        return self._finish(rnd, glob, prep, result, masked, clear, phase, evaluate_only)

    def _next_round(self, grid: Grid, rnd: int, evaluate_only: bool
                    ) -> tuple[list[int], SecAggServer] | None:
        """The next round to prepare now: a training round, or the final secure evaluation."""
        final_eval = (self.with_eval and self.cfg.federated_evaluation
                      and not self.cfg.central_dp)
        if evaluate_only or rnd > self.last_round or (rnd == self.last_round and not final_eval):
            return None
        nodes = self.cohort(grid, rnd + 1)
        try:
            return nodes, self._new_server(nodes, rnd + 1)
        except (SecAggAbort, SecAggError) as err:
            self._abort(rnd + 1, None, err)
            return None

    def _finish(self, rnd: int, glob: Mapping[str, np.ndarray], prep: Prepared, result: Any,
                masked: Mapping[int, Any], clear: Mapping[int, dict[str, Any]], phase: str,
                evaluate_only: bool) -> ArrayRecord | None:
        summary = prep.server.summary()
        for nid in result.contributors:
            self.run.node_result(rnd, nid, phase, OK, clear.get(nid, {}))
        for nid, why in result.dropped.items():
            if nid in clear:  # answered, but its input was not in the sum
                self.run.node_result(rnd, nid, phase, DROPPED, {"reason": why})
        if self.user_plan is not None and not evaluate_only:
            return self._finish_user_level(rnd, glob, prep, result)
        total = np.asarray(result.total, dtype=np.float64)
        self._read_tail(rnd, total[self._size + 1:], evaluate_only)
        if evaluate_only:
            return None
        self.sorter.require(rnd, len(result.contributors), self.cfg.min_nodes, "contributor(s)")
        update, total_weight = unpack_weighted(total[: self._size + 1],
                                               self.cfg.secagg_max_weight)
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
            "recovered": sorted(str(n) for n in result.dropped if n in prep.forwarded),
            "threshold": summary["threshold"],
            "total_weight": total_weight,
            "update_norm": norm if math.isfinite(norm) else -1.0,
        }})
        new = unflatten_state(flatten_state(glob) + update, glob)
        return ArrayRecord(array_dict={k: Array(v) for k, v in new.items()})

    def _finish_user_level(self, rnd: int, glob: Mapping[str, np.ndarray], prep: Prepared,
                           result: Any) -> ArrayRecord | None:
        """The mean of the nodes' noisy integer updates, and the epsilon of the noise actually
        summed: honest shares = contributors minus the nodes assumed to collude."""
        from privacy.dp.user_level import CentralDPError, achieved_epsilon, decode_sum

        plan = self.user_plan
        k = len(result.contributors)
        self.sorter.require(rnd, k, self.cfg.min_nodes, "contributor(s)")
        honest = k - self._colluding
        try:
            eps = achieved_epsilon(plan, [*self._shares, honest], self.cfg.dp_delta)
        except CentralDPError as err:  # fewer honest shares than the noise was sized for
            self.run.event("secagg-abort", f"round {rnd}: {err}; model unchanged", rnd)
            return None
        self._shares.append(honest)
        update = decode_sum(np.asarray(result.total, dtype=np.uint64), plan.scale,
                            plan.modulus) / k
        self.run.round_extra(rnd, {
            "secagg": {"contributors": [str(n) for n in result.contributors],
                       "dropped": {str(n): why for n, why in result.dropped.items()},
                       "threshold": prep.server.summary()["threshold"]},
            "central_dp": {"epsilon": eps, "delta": self.cfg.dp_delta, "unit": "user",
                           "honest_shares": honest, "min_contributors": plan.min_contributors,
                           "mechanism": "skellam", "clip": plan.clip, "accountant": "rdp"}})
        new = unflatten_state(flatten_state(glob) + update, glob)
        return ArrayRecord(array_dict={k2: Array(v) for k2, v in new.items()})

    def _read_tail(self, rnd: int, tail: np.ndarray, evaluate_only: bool) -> None:
        """Summed evaluation (of the model the nodes received: after round rnd - 1) and
        training loss."""
        w, bound = self.cfg.secagg_max_weight, self.run.task.loss_bound
        pos = 0
        if self.with_eval:
            k = 2 + len(self.names)
            n, loss, metrics = wire.unpack_summary(tail[pos:pos + k], self.names, w, bound)
            pos += k
            if n >= 0.5:
                self.run.federated(rnd - 1, Sums(n, loss, metrics))
        if not self.cfg.dp and not evaluate_only:
            n, loss, _ = wire.unpack_summary(tail[pos:pos + 2], [], w, bound)
            if n >= 0.5:
                self.run.train_summary(rnd, Sums(n, loss))

    def evaluate(self, grid: Grid, rnd: int, arrays: ArrayRecord, nodes: Iterable[int]) -> None:
        """Final federated evaluation, summed securely (an evaluate-only masked round whose
        setup travelled with the last training round)."""
        if self.with_eval and not self.cfg.central_dp:
            self.train(grid, rnd + 1, arrays, self.cohort(grid, rnd + 1),
                       ConfigRecord({"server-round": rnd + 1}), evaluate_only=True)


__all__ = ["Prepared", "SecureRounds"]
