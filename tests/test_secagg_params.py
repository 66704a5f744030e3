"""Parameters, quantisation and crypto primitives of the SecAgg+ library."""

from __future__ import annotations

import os

import numpy as np
import pytest

from privacy.secagg import SecAggConfigError, SecAggInputError, crypto, resolve_params
from privacy.secagg.params import context_digest
from privacy.secagg.quantize import dequantize_sum, quantization_step, quantize


@pytest.mark.parametrize("n", [2, 3, 10, 32, 33, 100, 1000])
def test_defaults_are_safe(n: int) -> None:
    p = resolve_params(n, 10)
    assert p.threshold > p.group_size / 2
    assert p.min_survivors > n / 2 and p.min_survivors >= p.threshold
    assert p.complete_graph == (n <= 32)
    assert (1 << p.mod_bits) > n * ((1 << p.quant_bits) - 1)  # the sum cannot wrap
    assert p.mod_bits <= 64


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"threshold": 2}, "threshold"),
        ({"threshold": 11}, "threshold"),
        ({"min_survivors": 5}, "min_survivors"),
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
    assert resolve_params(50, 4, num_neighbours=7).num_neighbours == 8
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


def test_shamir_threshold_behaviour() -> None:
    secret = os.urandom(32)
    shares = crypto.split_secret(secret, 3, 5)
    picked = [(i + 1, shares[i]) for i in (0, 2, 4)]
    assert crypto.combine_secret(picked) == secret
    assert crypto.combine_secret(picked[:2]) != secret  # below threshold: garbage


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
