"""Choosing the neighbour count k and Shamir threshold t from a threat model (SecAgg+).

Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS 2020,
IACR ePrint 2020/704), Section 3: the semi-honest SecAgg+ protocol is secure and correct when
the neighbour graph avoids three bad events, each with small probability:

- E1 (security): some honest node has at least t corrupt neighbours. t colluding share holders
  can rebuild both of that node's secrets (self-mask seed and mask key), so the server learns
  its input. Bound by 2^-sigma.
- E2 (security): the honest surviving nodes are disconnected in the graph; the server would
  learn the sum of each piece. Bound by 2^-sigma.
- E3 (correctness): some node keeps fewer than t surviving share holders; its masks cannot be
  removed and the round aborts. Bound by 2^-eta.

Our graph is a Harary graph (ring, k/2 nearest on each side) over a ring order drawn from a
random public seed, so each node's neighbour set is a uniformly random k-subset of the other
n - 1 nodes. With at most C = floor(gamma * n) corrupt and D = ceil(delta * n) dropped nodes,
fixed before the seed is drawn, the number of corrupt (or dropped) neighbours of one node is
hypergeometric, computed here exactly with integers; a union bound over the n nodes gives E1
and E3. E2: removing R = C + D ring positions disconnects the Harary graph only if two runs of
at least k/2 consecutive positions are removed, so P(E2) <= (n^2 / 2) * P(2 * (k/2) given
positions all removed). The complete graph (k = n - 1) is used when no sparse graph meets the
bounds; there every count is exact and E2 cannot happen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from privacy.secagg.errors import SecAggConfigError


@dataclass(frozen=True)
class ThreatModel:
    """Assumptions the (k, t) choice is proved against; all are public and bound into a round.

    corrupt_fraction: share of the sampled nodes that may collude with the server (gamma).
    dropout_rate: share of the sampled nodes that may drop out during a round (delta).
    sigma: security parameter, P(E1) and P(E2) at most 2^-sigma (Bell et al. use 40).
    eta: correctness parameter, P(E3) at most 2^-eta (Bell et al. use 30).
    """

    corrupt_fraction: float = 1 / 3
    dropout_rate: float = 0.1
    sigma: int = 40
    eta: int = 30

    def validate(self) -> ThreatModel:
        """Reject assumptions the protocol cannot be proved under, with a one-line reason."""
        g, d = self.corrupt_fraction, self.dropout_rate
        if not (math.isfinite(g) and 0 <= g < 0.5):
            raise SecAggConfigError(
                f"corrupt_fraction={g}: must be in [0, 0.5); with half the nodes colluding no "
                "threshold protects anyone"
            )
        if not (math.isfinite(d) and 0 <= d < 0.5):
            raise SecAggConfigError(f"dropout_rate={d}: must be in [0, 0.5)")
        if not (1 <= self.sigma <= 256 and 1 <= self.eta <= 256):
            raise SecAggConfigError(
                f"sigma={self.sigma}, eta={self.eta}: both must be between 1 and 256 (bits)"
            )
        return self

    def corrupt(self, n: int) -> int:
        """Most corrupt nodes assumed among n sampled."""
        return math.floor(self.corrupt_fraction * n)

    def dropped(self, n: int) -> int:
        """Dropouts a round must survive among n sampled (rounded up: at least one if any)."""
        return math.ceil(self.dropout_rate * n)


@dataclass(frozen=True)
class FailureBounds:
    """Upper bounds on the three bad events for one (n, k, t) under one threat model."""

    exposure: float  # E1: some honest node has >= t corrupt neighbours
    disconnection: float  # E2: the honest survivors' graph falls apart
    shortfall: float  # E3: some node has < t surviving share holders (the round aborts)
    secure: bool  # exposure and disconnection <= 2^-sigma (exactly, not in floating point)
    correct: bool  # shortfall <= 2^-eta

    def as_dict(self) -> dict[str, float | bool]:
        """JSON-ready view for the audit log."""
        return {
            "p_exposure": self.exposure,
            "p_disconnection": self.disconnection,
            "p_abort": self.shortfall,
            "secure": self.secure,
            "correct": self.correct,
        }


def _tail(population: int, marked: int, draws: int, at_least: int) -> Fraction:
    """P(X >= at_least) for X ~ Hypergeometric(population, marked, draws), exactly."""
    lo = max(at_least, 0, draws - (population - marked))
    hi = min(marked, draws)
    if lo > hi:
        return Fraction(0)
    hits = sum(math.comb(marked, x) * math.comb(population - marked, draws - x)
               for x in range(lo, hi + 1))
    return Fraction(hits, math.comb(population, draws))


def _cap(p: Fraction) -> Fraction:
    return min(p, Fraction(1))


def _exposure(n: int, k: int, t: int, corrupt: int) -> Fraction:
    return _cap(n * _tail(n - 1, corrupt, k, t))


@lru_cache(maxsize=1024)
def _exact_bounds(
    n: int, k: int, t: int, corrupt: int, dropped: int
) -> tuple[Fraction, Fraction, Fraction]:
    exposure = _exposure(n, k, t, corrupt)
    # A node that answers holds one share itself and needs t - 1 more from its k neighbours,
    # among which up to `dropped` are gone; a node that dropped after sharing (its mask key is
    # needed) or during unmasking (its seed is) needs t from its neighbours, of which up to
    # `dropped - 1` are gone. The worse case bounds each node.
    shortfall = _tail(n - 1, dropped, k, k - t + 2)
    if dropped:
        shortfall = max(shortfall, _tail(n - 1, dropped - 1, k, k - t + 1))
    shortfall = _cap(n * shortfall)
    return exposure, _disconnection(n, k, corrupt + dropped), shortfall


@lru_cache(maxsize=4096)
def _disconnection(n: int, k: int, removed: int) -> Fraction:
    """P(E2) bound when `removed` random ring positions (corrupt or dropped) are taken out."""
    run = k // 2
    if k >= n - 1 or removed < 2 * run:  # complete graph, or too few removed to cut twice
        return Fraction(0)
    pairs = n * n // 2  # at least the number of pairs of disjoint windows of `run` positions
    return _cap(Fraction(pairs * math.comb(n - 2 * run, removed - 2 * run), math.comb(n, removed)))


def failure_bounds(n: int, k: int, t: int, model: ThreatModel) -> FailureBounds:
    """Bounds on E1-E3 for n nodes, degree k (n - 1: complete graph) and threshold t.

    `shortfall` is the chance that a round losing D = ceil(delta * n) nodes aborts: some node
    lacks t surviving share holders, or the survivors fall below `min_survivors_floor`.
    """
    model.validate()
    k = min(k, n - 1)
    e1, e2, e3 = _exact_bounds(n, k, t, model.corrupt(n), model.dropped(n))
    if n - model.dropped(n) < min_survivors_floor(n, k, t, model):
        e3 = Fraction(1)
    sec, cor = Fraction(1, 2**model.sigma), Fraction(1, 2**model.eta)
    return FailureBounds(
        float(e1), float(e2), float(e3), secure=e1 <= sec and e2 <= sec, correct=e3 <= cor
    )


def exposure_is_negligible(n: int, k: int, t: int, model: ThreatModel) -> bool:
    """True when P(E1) <= 2^-sigma, compared exactly."""
    return _exposure(n, min(k, n - 1), t, model.corrupt(n)) <= Fraction(1, 2**model.sigma)


def colluders_cannot_cut(n: int, k: int, model: ThreatModel) -> bool:
    """True when the colluding nodes alone disconnect the honest ones with P <= 2^-sigma."""
    return _disconnection(n, min(k, n - 1), model.corrupt(n)) <= Fraction(1, 2**model.sigma)


def _smallest_secure(n: int, k: int, model: ThreatModel) -> int | None:
    k = min(k, n - 1)
    return next(
        (t for t in range(min_threshold(k), k + 2) if exposure_is_negligible(n, k, t, model)),
        None,
    )


def smallest_secure_threshold(n: int, k: int, model: ThreatModel) -> int:
    """Smallest t above half the group with P(E1) <= 2^-sigma for degree k."""
    t = _smallest_secure(n, k, model.validate())
    if t is None:
        raise SecAggConfigError(
            f"num_neighbours={k}: no threshold keeps P(some node has >= t colluding "
            f"neighbours) below 2^-{model.sigma} at corrupt_fraction={model.corrupt_fraction:.3g}"
            "; raise num_neighbours or leave it unset"
        )
    return t


def min_threshold(k: int) -> int:
    """Smallest threshold above half the share group (the node and its k neighbours)."""
    return (k + 1) // 2 + 1


@lru_cache(maxsize=256)
def derive_graph(n: int, model: ThreatModel = ThreatModel()) -> tuple[int, int]:
    """Smallest even k and its smallest secure t meeting E1-E3; else the complete graph.

    For each k the threshold is the smallest secure one (E1 falls as t rises, E3 grows);
    the first k whose E2 and E3 also hold wins. When no sparse graph does, the complete
    graph with its smallest secure threshold is used even if it cannot meet E3 (small
    cohorts): `failure_bounds` then reports the abort probability honestly.
    """
    model.validate()
    if n < 2:
        raise SecAggConfigError(f"num_nodes={n}: secure aggregation needs at least 2 nodes")
    for k in range(2, n - 1, 2):
        t = _smallest_secure(n, k, model)
        if t is not None:
            b = failure_bounds(n, k, t, model)
            if b.secure and b.correct:
                return k, t
    return n - 1, smallest_secure_threshold(n, n - 1, model)


def max_dropouts(n: int, k: int, model: ThreatModel) -> int:
    """Most non-survivors a round may have while P(E2) stays <= 2^-sigma.

    E2 is bounded for the dropouts that actually happened, not only for the assumed rate,
    so a round that loses more nodes than planned is unmasked only while its honest
    survivors are still connected with overwhelming probability.
    """
    corrupt, sec = model.corrupt(n), Fraction(1, 2**model.sigma)
    if k >= n - 1:
        return n
    lo, hi = 0, n - corrupt  # E2 grows with the dropouts; 0 when even none is too many
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _disconnection(n, k, corrupt + mid) <= sec:
            lo = mid
        else:
            hi = mid - 1
    return lo


def min_survivors_floor(n: int, k: int, t: int, model: ThreatModel) -> int:
    """Fewest survivors a round may unmask: a majority of the sampled nodes, t (to rebuild
    anything), two more than the corrupt nodes (every honest input is summed with another
    honest one) and few enough dropouts for E2 (`max_dropouts`)."""
    return max(n // 2 + 1, t, model.corrupt(n) + 2, n - max_dropouts(n, k, model))

