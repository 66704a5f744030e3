"""Parameters, quantisation and crypto primitives of the SecAgg+ library."""

from __future__ import annotations

import itertools
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import SecAggConfigError, SecAggInputError, crypto, resolve_params, shamir
from privacy.secagg.bounds import ThreatModel, derive_graph, failure_bounds
from privacy.secagg.graph import NeighbourGraph
from privacy.secagg.params import context_digest
from privacy.secagg.quantize import dequantize_sum, quantization_step, quantize


@pytest.mark.parametrize("n", [2, 3, 10, 32, 33, 100, 1000])
def test_defaults_are_safe(n: int) -> None:
    p = resolve_params(n, 10)
    assert p.threshold > p.group_size / 2
    assert p.min_survivors > n / 2 and p.min_survivors >= p.threshold
    assert p.min_survivors >= p.threat_model.corrupt(n) + 2
    assert p.failure_bounds().secure
    assert (1 << p.mod_bits) > n * ((1 << p.quant_bits) - 1)  # the sum cannot wrap
    assert p.mod_bits <= 64


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"threshold": 2}, "threshold"),
        ({"threshold": 11}, "threshold"),
        ({"corrupt_fraction": 0.5}, "corrupt_fraction"),
        ({"dropout_rate": -0.1}, "dropout_rate"),
        ({"sigma": 0}, "sigma"),
        ({"quant_bits": 60}, "quant_bits"),
        ({"mod_bits": 20}, "mod_bits"),
        ({"clip_range": 0.0}, "clip_range"),
        ({"clip_range": float("nan")}, "clip_range"),
    ],
)
def test_unsafe_or_impossible_settings_are_rejected(kwargs: dict, needle: str) -> None:
    with pytest.raises(SecAggConfigError, match=needle) as info:
        resolve_params(10, 4, **kwargs)
    assert "\n" not in str(info.value)


def test_single_node_and_empty_vector_are_rejected() -> None:
    with pytest.raises(SecAggConfigError, match="at least 2"):
        resolve_params(1, 4)
    with pytest.raises(SecAggConfigError, match="vector_length"):
        resolve_params(4, 0)


def test_odd_degree_rounds_up_to_even_harary_graph() -> None:
    assert resolve_params(50, 4, num_neighbours=7, corrupt_fraction=0.0).num_neighbours == 8
    assert resolve_params(9, 4, num_neighbours=7).num_neighbours == 8  # complete


def test_quantize_roundtrip_error_is_within_one_step() -> None:
    x = np.linspace(-3.0, 3.0, 1001)
    q, clipped = quantize(x, 4.0, 16, stochastic=True)
    assert clipped == 0 and q.dtype == np.uint64
    back = dequantize_sum(q, 1, 4.0, 16)
    assert np.abs(back - x).max() <= quantization_step(4.0, 16)


def test_stochastic_rounding_is_unbiased() -> None:
    x = np.full(20000, 0.3 * quantization_step(1.0, 4))  # between two levels
    back = dequantize_sum(quantize(x, 1.0, 4, stochastic=True)[0], 1, 1.0, 4)
    assert abs(back.mean() - x[0]) < 0.02 * quantization_step(1.0, 4)  # rint would be 0.2 off


def test_quantize_rejects_nan() -> None:
    with pytest.raises(SecAggInputError, match="NaN"):
        quantize(np.array([0.0, np.nan]), 1.0, 8, stochastic=False)


def test_prg_is_deterministic_per_key_and_uniform() -> None:
    key = os.urandom(32)
    a, b = crypto.prg_uint64(key, 50000), crypto.prg_uint64(key, 50000)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, crypto.prg_uint64(os.urandom(32), 50000))
    bits = np.unpackbits(a.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.005


def test_aead_binds_context_and_direction() -> None:
    key = os.urandom(32)
    ctx1, ctx2 = os.urandom(32), os.urandom(32)
    blob = crypto.seal(key, b"share", crypto.associated_data(ctx1, 1, 2))
    assert crypto.open_sealed(key, blob, crypto.associated_data(ctx1, 1, 2)) == b"share"
    for aad in (crypto.associated_data(ctx2, 1, 2), crypto.associated_data(ctx1, 2, 1)):
        with pytest.raises(crypto.CryptoFailure):
            crypto.open_sealed(key, blob, aad)


def test_pairwise_keys_agree_and_depend_on_context() -> None:
    a_sk, a_pk = crypto.new_x25519()
    b_sk, b_pk = crypto.new_x25519()
    ctx = os.urandom(32)
    assert crypto.agree(a_sk, b_pk, b"pair-mask", ctx) == crypto.agree(
        b_sk, a_pk, b"pair-mask", ctx
    )
    assert crypto.agree(a_sk, b_pk, b"pair-mask", ctx) != crypto.agree(
        a_sk, b_pk, b"share-enc", ctx
    )
    with pytest.raises(crypto.CryptoFailure):
        crypto.agree(a_sk, bytes(32), b"pair-mask", ctx)  # low-order point


def test_context_changes_with_every_bound_field() -> None:
    p = resolve_params(3, 4)
    base = context_digest("run", 1, b"ids", b"seed", p)
    assert (
        len(
            {
                base,
                context_digest("run2", 1, b"ids", b"seed", p),
                context_digest("run", 2, b"ids", b"seed", p),
                context_digest("run", 1, b"idz", b"seed", p),
                context_digest("run", 1, b"ids", b"seeD", p),
                context_digest("run", 1, b"ids", b"seed", resolve_params(3, 5)),
            }
        )
        == 6
    )


# ---------------------------------------------------------------- (k, t) from the threat model


def _independent_bounds(n: int, k: int, t: int, model: ThreatModel) -> tuple[float, float]:
    """E1 and E3 recomputed with scipy's hypergeometric law (not our integer code)."""
    from scipy.stats import hypergeom

    c, d = model.corrupt(n), model.dropped(n)
    exposure = n * hypergeom.sf(t - 1, n - 1, c, k)  # P(>= t corrupt among k neighbours)
    answering = hypergeom.sf(k - t + 1, n - 1, d, k)  # > k+1-t of its neighbours dropped
    silent = hypergeom.sf(k - t, n - 1, max(d - 1, 0), k)  # > k-t dropped
    return exposure, n * max(answering, silent)


@pytest.mark.parametrize("n", [10, 30, 100, 300, 1000])
def test_derived_graph_meets_bell_et_al_bounds(n: int) -> None:
    model = ThreatModel()  # a third colluding, 10% dropout, sigma=40, eta=30
    p = resolve_params(n, 4)
    k, t = p.num_neighbours, p.threshold
    exposure, shortfall = _independent_bounds(n, k, t, model)
    assert exposure <= 2.0**-40 and shortfall <= 2.0**-30
    b = p.failure_bounds()
    assert b.secure and b.correct and b.disconnection <= 2.0**-40
    assert b.exposure == pytest.approx(exposure, rel=1e-6, abs=1e-300)
    if not p.complete_graph:  # minimal: one step sparser is insecure or would abort
        assert k - 2 < 2 or not _meets(n, k - 2, model)
    assert k < n - 1 or n <= 5  # the sparse graph from 6 nodes on


def _meets(n: int, k: int, model: ThreatModel) -> bool:
    for t in range(k // 2 + 1, k + 2):
        b = failure_bounds(n, k, t, model)
        if b.secure and b.correct:
            return True
    return False


def test_old_default_graph_is_refused_with_the_exposure_probability() -> None:
    """The former default at n=100 (k=28, t=15) left P(exposure) near 0.79 (issue 12.9)."""
    b = failure_bounds(100, 28, 15, ThreatModel())
    assert 0.7 < b.exposure < 0.85 and not b.secure
    with pytest.raises(SecAggConfigError, match="colluding neighbours") as info:
        resolve_params(100, 4, num_neighbours=28, threshold=15)
    assert "\n" not in str(info.value)
    assert resolve_params(100, 4, num_neighbours=28).threshold > 15  # secure t for that k


def test_small_cohorts_fall_back_to_the_complete_graph() -> None:
    for n in (2, 3, 4, 5):
        assert resolve_params(n, 4).complete_graph
    p = resolve_params(3, 4)  # two nodes must never form a sum: any dropout aborts
    assert p.min_survivors == 3 and p.failure_bounds().shortfall == 1.0


def test_higher_dropout_or_collusion_needs_a_denser_graph() -> None:
    base = derive_graph(100, ThreatModel())
    assert derive_graph(100, ThreatModel(dropout_rate=0.3))[0] > base[0]
    assert derive_graph(100, ThreatModel(corrupt_fraction=0.1))[0] < base[0]
    p = resolve_params(100, 4, dropout_rate=0.3)
    assert p.min_survivors <= 70 and p.failure_bounds().correct  # 30% dropout is survivable


def test_disconnection_bound_covers_the_real_graph() -> None:
    """Monte Carlo on a weak graph: the E2 bound is above the observed disconnection rate."""
    n, k, removed = 40, 4, 14
    graph = NeighbourGraph(list(range(n)), k, bytes(32))
    rng = np.random.default_rng(7)
    trials = 4000
    cut = sum(
        not graph.connected(set(range(n)) - {int(x) for x in rng.choice(n, removed, False)})
        for _ in range(trials)
    )
    bound = failure_bounds(n, k, 3, ThreatModel(corrupt_fraction=0.0, dropout_rate=0.35))
    assert removed == ThreatModel(dropout_rate=0.35).dropped(n)
    assert cut > 0 and cut / trials <= bound.disconnection


def test_threat_model_is_bound_into_the_round_context() -> None:
    a = resolve_params(10, 4)
    b = resolve_params(10, 4, dropout_rate=0.1001)
    assert (a.num_neighbours, a.threshold) == (b.num_neighbours, b.threshold)
    assert context_digest("r", 1, b"ids", b"s", a) != context_digest("r", 1, b"ids", b"s", b)


# ---------------------------------------------------------------- prime-field Shamir


def test_field_is_a_prime_above_every_secret() -> None:
    from Crypto.Util.number import isPrime

    assert shamir.PRIME > 2**256 and isPrime(shamir.PRIME, false_positive_prob=1e-30)
    assert shamir.PRIME.bit_length() <= shamir.SHARE_BYTES * 8


@settings(max_examples=40, deadline=None, database=None)
@given(
    st.sampled_from([16, 32]),
    st.integers(1, 6),
    st.integers(0, 4),
    st.randoms(use_true_random=False),
)
def test_any_t_shares_reconstruct_like_pycryptodome(
    width: int, t: int, extra: int, rnd: random.Random
) -> None:
    from Crypto.Protocol.SecretSharing import Shamir

    count = t + extra
    secret = rnd.randbytes(width)
    ours = shamir.split([secret], t, count, randbelow=rnd.randrange)
    theirs = [
        Shamir.split(t, count, secret[i : i + 16], ssss=False) for i in range(0, width, 16)
    ]
    for subset in itertools.combinations(range(count), t):
        got = shamir.combine([(i + 1, ours[i][0]) for i in subset], width)
        ref = b"".join(
            Shamir.combine([theirs[h][i] for i in subset], ssss=False) for h in range(len(theirs))
        )
        assert got == ref == secret


def test_fewer_than_t_shares_are_uniform_whatever_the_secret() -> None:
    """t-1 shares of 0 and of 2^256-1 look alike: uniform low bytes, no link to the secret."""
    from scipy.stats import chi2_contingency, chisquare

    rnd = random.Random(20261201)
    t, draws = 3, 3000
    byte_counts = {}
    for secret in (bytes(32), b"\xff" * 32):
        rows = [shamir.split([secret], t, 5, randbelow=rnd.randrange) for _ in range(draws)]
        low = np.array([[row[x][0][-1] for x in range(t - 1)] for row in rows])
        byte_counts[secret] = np.bincount(low.ravel(), minlength=256)
        assert chisquare(byte_counts[secret]).pvalue > 1e-6
        tops = np.array([int.from_bytes(row[0][0]) / shamir.PRIME for row in rows])
        assert abs(tops.mean() - 0.5) < 5 * np.sqrt(1 / 12 / draws)
    table = np.stack(list(byte_counts.values()))  # same distribution for both secrets
    assert chi2_contingency(table).pvalue > 1e-6
    # Algebraically: t-1 shares fit every secret, so below the threshold combine misses it.
    shares = shamir.split([b"\x01" * 32], t, 5)
    assert shamir.combine([(1, shares[0][0]), (2, shares[1][0])], 33) != (b"\x00" + b"\x01" * 32)


def test_tampered_shares_are_caught() -> None:
    secret = os.urandom(32)
    shares = shamir.split([secret, secret[:16]], 3, 4)
    picked = [(i + 1, shares[i][0]) for i in (0, 1, 3)]
    assert crypto.combine_secret(picked, 32) == secret
    assert crypto.combine_secret([(i + 1, shares[i][1]) for i in (0, 1, 2)], 16) == secret[:16]
    bad = [(1, bytes(33))] + picked[1:]
    with pytest.raises(crypto.CryptoFailure):
        crypto.combine_secret(bad, 16)  # wrong share: the result no longer fits 16 bytes
    with pytest.raises(crypto.CryptoFailure):
        crypto.combine_secret([(1, b"\xff" * 33)] + picked[1:], 32)  # not a field element


def test_clients_refuse_a_setup_with_weak_graph_or_floor() -> None:
    """validate() runs on every client too: a server cannot announce unsafe (k, t, floor)."""
    import dataclasses

    p = resolve_params(100, 4)
    for change, needle in (
        ({"threshold": p.threshold - 1}, "colluding neighbours"),
        ({"num_neighbours": 4, "threshold": 5}, "cut the honest ones apart"),
        ({"min_survivors": p.min_survivors - 1}, "min_survivors"),
        ({"corrupt_fraction": 0.5}, "corrupt_fraction"),
    ):
        with pytest.raises(SecAggConfigError, match=needle):
            dataclasses.replace(p, **change).validate()
