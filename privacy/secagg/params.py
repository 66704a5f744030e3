"""Round parameters: safe defaults, validation, and the context digest bound into every key.

The parameters are public. Both sides derive the same `SecAggParams` from the setup message,
and everything cryptographic is bound to `context_digest` so material from another run,
round or parameter set never authenticates.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

from privacy.secagg.bounds import (
    FailureBounds,
    ThreatModel,
    colluders_cannot_cut,
    derive_graph,
    exposure_is_negligible,
    failure_bounds,
    min_survivors_floor,
    smallest_secure_threshold,
)
from privacy.secagg.errors import SecAggConfigError

PROTOCOL_LABEL = b"fedguard/secagg+/v2"
MAX_QUANT_BITS = 48  # float64 must represent every quantisation level exactly
MAX_MOD_BITS = 64  # arithmetic is done in numpy uint64


def ring_mode(params: SecAggParams) -> bool:
    """quant_bits == 0: inputs are already elements of Z_{2^mod_bits} (e.g. a distributed-DP
    encoding with integer noise); they are masked and summed exactly, never quantised."""
    return params.quant_bits == 0


def min_mod_bits(num_nodes: int, quant_bits: int) -> int:
    """Smallest modulus width in which the sum of `num_nodes` quantised values cannot wrap."""
    return quant_bits + max(1, math.ceil(math.log2(num_nodes)))


@dataclass(frozen=True)
class SecAggParams:
    """Resolved, validated parameters of one SecAgg+ round.

    num_neighbours is the degree of the neighbour graph; each node's secrets are Shamir-shared
    over its group = itself + its neighbours (group_size = num_neighbours + 1), with
    `threshold` shares needed to reconstruct. The threat model (corrupt_fraction,
    dropout_rate, sigma, eta) travels with the parameters: both sides check (k, t) and
    min_survivors against it, and it is bound into the round context.
    """

    num_nodes: int
    vector_length: int
    num_neighbours: int
    threshold: int
    min_survivors: int
    clip_range: float
    quant_bits: int
    mod_bits: int
    stochastic_rounding: bool
    corrupt_fraction: float = ThreatModel.corrupt_fraction
    dropout_rate: float = ThreatModel.dropout_rate
    sigma: int = ThreatModel.sigma
    eta: int = ThreatModel.eta

    @property
    def group_size(self) -> int:
        """Share holders per node: the node itself plus its neighbours."""
        return self.num_neighbours + 1

    @property
    def complete_graph(self) -> bool:
        """True when every node neighbours every other node."""
        return self.num_neighbours >= self.num_nodes - 1

    @property
    def max_dropouts_per_group(self) -> int:
        """How many holders of one node's shares may vanish before reconstruction fails."""
        return self.group_size - self.threshold

    @property
    def threat_model(self) -> ThreatModel:
        """The assumptions (k, t) were chosen for."""
        return ThreatModel(self.corrupt_fraction, self.dropout_rate, self.sigma, self.eta)

    def failure_bounds(self) -> FailureBounds:
        """Bounds on exposure, disconnection and abort for these parameters (Bell et al.)."""
        return failure_bounds(self.num_nodes, self.num_neighbours, self.threshold,
                              self.threat_model)

    def validate(self) -> SecAggParams:
        """Reject unsafe or impossible settings with a one-line reason."""
        n = self.num_nodes
        if n < 2:
            raise SecAggConfigError(f"num_nodes={n}: secure aggregation needs at least 2 nodes")
        if self.vector_length < 1:
            raise SecAggConfigError(f"vector_length={self.vector_length}: must be >= 1")
        if not 2 <= self.num_neighbours <= n - 1 and not (n == 2 and self.num_neighbours == 1):
            raise SecAggConfigError(
                f"num_neighbours={self.num_neighbours}: must be between 2 and num_nodes-1={n - 1}"
            )
        if self.num_neighbours < n - 1 and self.num_neighbours % 2:
            raise SecAggConfigError(
                f"num_neighbours={self.num_neighbours}: must be even unless the graph is complete"
            )
        g = self.group_size
        if not g / 2 < self.threshold <= g:
            raise SecAggConfigError(
                f"threshold={self.threshold}: must be above half the share group ({g}) and at "
                f"most {g}; use {g // 2 + 1}"
            )
        model = self.threat_model.validate()
        if not exposure_is_negligible(n, self.num_neighbours, self.threshold, model):
            raise SecAggConfigError(
                f"num_neighbours={self.num_neighbours}, threshold={self.threshold}: P(some node "
                f"has >= t colluding neighbours) = {self.failure_bounds().exposure:.2g} exceeds "
                f"2^-{self.sigma} at corrupt_fraction={self.corrupt_fraction:.3g}; leave both "
                "unset to derive safe ones"
            )
        if not colluders_cannot_cut(n, self.num_neighbours, model):
            raise SecAggConfigError(
                f"num_neighbours={self.num_neighbours}: the colluding nodes alone may cut the "
                f"honest ones apart (P > 2^-{self.sigma}); raise num_neighbours or leave it unset"
            )
        floor = min_survivors_floor(n, self.num_neighbours, self.threshold, model)
        if not floor <= self.min_survivors <= n:
            raise SecAggConfigError(
                f"min_survivors={self.min_survivors}: must be between {floor} and {n} (a "
                f"majority, threshold={self.threshold}, corrupt+2 and few enough dropouts to "
                f"keep honest survivors connected) for {n} nodes"
            )
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise SecAggConfigError(f"clip_range={self.clip_range}: must be a positive number")
        if not 0 <= self.quant_bits <= MAX_QUANT_BITS:
            raise SecAggConfigError(
                f"quant_bits={self.quant_bits}: must be between 1 and {MAX_QUANT_BITS} (or 0 "
                "for vectors already in the ring)"
            )
        need = min_mod_bits(n, self.quant_bits) if self.quant_bits else 8
        if not need <= self.mod_bits <= MAX_MOD_BITS:
            raise SecAggConfigError(
                f"mod_bits={self.mod_bits}: the sum of {n} nodes at quant_bits={self.quant_bits} "
                f"needs {need}..{MAX_MOD_BITS} bits; lower quant_bits or raise mod_bits"
            )
        return self

    def digest(self) -> bytes:
        """Canonical hash of the parameters, so both sides provably use the same ones."""
        packed = struct.pack(
            ">QQQQQdQQ?ddQQ",
            self.num_nodes,
            self.vector_length,
            self.num_neighbours,
            self.threshold,
            self.min_survivors,
            self.clip_range,
            self.quant_bits,
            self.mod_bits,
            self.stochastic_rounding,
            self.corrupt_fraction,
            self.dropout_rate,
            self.sigma,
            self.eta,
        )
        return hashlib.sha256(PROTOCOL_LABEL + b"/params" + packed).digest()


def resolve_params(
    num_nodes: int,
    vector_length: int,
    *,
    min_nodes: int = 0,
    num_neighbours: int | None = None,
    threshold: int | None = None,
    corrupt_fraction: float = ThreatModel.corrupt_fraction,
    dropout_rate: float = ThreatModel.dropout_rate,
    sigma: int = ThreatModel.sigma,
    eta: int = ThreatModel.eta,
    clip_range: float = 8.0,
    quant_bits: int = 32,
    mod_bits: int | None = None,
    stochastic_rounding: bool = True,
) -> SecAggParams:
    """Derive (k, t) from the threat model, fill safe defaults and validate.

    num_neighbours and threshold default to `derive_graph` (Bell et al.'s conditions); a
    given num_neighbours gets the smallest secure threshold, and an odd one below n-1 is
    rounded up to the next even number (Harary graph). min_nodes is the caller's floor on
    the nodes in an unmasked sum (the run's min-nodes); the library raises it to a majority,
    t, corrupt+2 and what keeps honest survivors connected. mod_bits defaults to just wide
    enough not to overflow.
    """
    if num_nodes < 2:
        raise SecAggConfigError(f"num_nodes={num_nodes}: secure aggregation needs at least 2 nodes")
    if not 0 <= min_nodes <= num_nodes:
        raise SecAggConfigError(
            f"min_nodes={min_nodes}: only {num_nodes} nodes were sampled; sample at least "
            "min-nodes or lower it"
        )
    model = ThreatModel(
        float(corrupt_fraction), float(dropout_rate), int(sigma), int(eta)
    ).validate()
    if num_neighbours is None:
        k, t = derive_graph(num_nodes, model)
    else:
        k = int(num_neighbours)
        if k >= num_nodes - 1:
            k = num_nodes - 1
        elif k % 2:
            k = min(k + 1, num_nodes - 1)
        t = smallest_secure_threshold(num_nodes, k, model)
    if threshold is not None:
        t = int(threshold)
    survivors = max(int(min_nodes), min_survivors_floor(num_nodes, k, t, model))
    if quant_bits == 0 and mod_bits is None:
        raise SecAggConfigError("quant_bits=0 (ring inputs) needs mod_bits: the ring's size")
    mb = min_mod_bits(num_nodes, quant_bits) if mod_bits is None else int(mod_bits)
    return SecAggParams(
        num_nodes=num_nodes,
        vector_length=int(vector_length),
        num_neighbours=k,
        threshold=t,
        min_survivors=min(survivors, num_nodes),
        clip_range=float(clip_range),
        quant_bits=int(quant_bits),
        mod_bits=mb,
        stochastic_rounding=bool(stochastic_rounding),
        corrupt_fraction=model.corrupt_fraction,
        dropout_rate=model.dropout_rate,
        sigma=model.sigma,
        eta=model.eta,
    ).validate()


def context_digest(
    run_id: str, round_id: int, node_ids_packed: bytes, graph_seed: bytes, params: SecAggParams
) -> bytes:
    """Bind run, round, cohort, graph and parameters into one 32-byte context.

    It enters every KDF info string, every AEAD associated data and every signature, which is
    what makes ciphertexts replayed from another round or run fail authentication.
    """
    h = hashlib.sha256(PROTOCOL_LABEL + b"/context")
    run = run_id.encode("utf-8")
    for part in (run, round_id.to_bytes(8, "big"), node_ids_packed, graph_seed, params.digest()):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()
