"""User-level DP: clipping bounds each node's contribution; noise has the stated std."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privacy.dp.accounting import RDP_ORDERS, Release, epsilon
from privacy.dp.user_level import (
    CentralDPError,
    calibrate_user_level,
    clip_update,
    global_norm,
    noise_for_sum,
    noise_share,
    secure_rng,
    user_level_epsilon,
)

_arrays = st.lists(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
        elements=st.floats(-100, 100, width=32),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None, database=None)
@given(update=_arrays, clip=st.floats(1e-3, 50.0))
def test_clipping_bounds_the_global_norm_and_keeps_direction(
    update: list[np.ndarray], clip: float
) -> None:
    clipped, before = clip_update(update, clip)
    assert before == pytest.approx(global_norm(update))
    after = global_norm(clipped)
    assert after <= clip
    assert [a.shape for a in clipped] == [a.shape for a in update]
    assert all(a.dtype == np.float32 for a in clipped)
    if before <= clip * (1 - 1e-5):
        for a, b in zip(clipped, update, strict=True):
            np.testing.assert_array_equal(a, b)  # small updates pass untouched
    elif before > 0:
        assert after == pytest.approx(clip, rel=1e-4)  # long ones are scaled, not truncated
        flat_a = np.concatenate([a.ravel() for a in clipped]).astype(np.float64)
        flat_b = np.concatenate([b.ravel() for b in update]).astype(np.float64)
        assert float(flat_a @ flat_b) == pytest.approx(after * before, rel=1e-4)


def test_clipping_does_not_modify_the_input() -> None:
    update = [np.full((3, 3), 10.0, dtype=np.float32)]
    clip_update(update, 1.0)
    assert float(update[0][0, 0]) == 10.0


@pytest.mark.parametrize(
    "update,clip,match",
    [
        ([np.array([1.0, np.nan])], 1.0, r"update\[0\] contains NaN"),
        ([np.array([1, 2])], 1.0, r"update\[0\] has dtype int64"),
        ([], 1.0, "update is empty"),
        ([np.ones(2)], 0.0, "clip_norm=0.0: must be a finite number > 0"),
    ],
)
def test_bad_updates_are_rejected(update: list[np.ndarray], clip: float, match: str) -> None:
    with pytest.raises(CentralDPError, match=match):
        clip_update(update, clip)


def test_noise_for_sum_has_std_sigma_times_clip() -> None:
    sigma, clip = 1.3, 0.7
    noise = noise_for_sum([(400, 250), (1000,)], sigma, clip, np.random.default_rng(7))
    assert [n.shape for n in noise] == [(400, 250), (1000,)]
    flat = np.concatenate([n.ravel() for n in noise]).astype(np.float64)
    # 101k samples: the sample std is within ~0.3% of the truth (1% is > 4 standard errors).
    assert flat.std() == pytest.approx(sigma * clip, rel=0.01)
    assert abs(flat.mean()) < 4 * sigma * clip / np.sqrt(flat.size)


def test_noise_shares_of_all_nodes_add_up_to_the_full_noise() -> None:
    sigma, clip, nodes = 2.0, 1.0, 8
    rng = np.random.default_rng(11)
    shares = [noise_share([(20_000,)], sigma, clip, nodes, rng)[0] for _ in range(nodes)]
    assert shares[0].std() == pytest.approx(sigma * clip / np.sqrt(nodes), rel=0.03)
    assert np.sum(shares, axis=0).std() == pytest.approx(sigma * clip, rel=0.03)
    # With only 4 trusted nodes, each adds enough that 4 shares already give the full std.
    honest = [noise_share([(20_000,)], sigma, clip, nodes, rng, min_honest=4)[0] for _ in range(4)]
    assert np.sum(honest, axis=0).std() == pytest.approx(sigma * clip, rel=0.03)


def test_noise_share_rejects_bad_node_counts() -> None:
    with pytest.raises(CentralDPError, match="num_nodes=0"):
        noise_share([(2,)], 1.0, 1.0, 0)
    with pytest.raises(CentralDPError, match=r"min_honest=9: must be an integer in \[1, "):
        noise_share([(2,)], 1.0, 1.0, 8, min_honest=9)


def test_default_rng_is_securely_seeded_per_call() -> None:
    a = noise_for_sum([(64,)], 1.0, 1.0)[0]
    b = noise_for_sum([(64,)], 1.0, 1.0)[0]
    assert not np.array_equal(a, b)
    assert isinstance(secure_rng().bit_generator, np.random.PCG64)


def test_user_level_epsilon_is_the_accountants_number() -> None:
    assert user_level_epsilon(1.2, 1.0, 20, 1e-5) == epsilon([Release(1.2, 1.0, 20)], 1e-5)
    more_rounds = user_level_epsilon(1.2, 1.0, 40, 1e-5)
    assert more_rounds > user_level_epsilon(1.2, 1.0, 20, 1e-5)


def test_user_level_full_participation_matches_gaussian_rdp_closed_form() -> None:
    """q = 1: RDP of T Gaussian releases is T * alpha / (2 sigma^2); check the conversion."""
    sigma, rounds, delta = 3.0, 25, 1e-5
    orders = np.array(RDP_ORDERS)
    rdp = rounds * orders / (2 * sigma**2)
    # Balle et al. 2020 conversion, as Opacus implements it.
    eps = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    assert user_level_epsilon(sigma, 1.0, rounds, delta) == pytest.approx(eps.min(), rel=1e-9)


def test_calibrate_user_level_meets_target() -> None:
    sigma = calibrate_user_level(4.0, 1e-5, rounds=30)
    assert user_level_epsilon(sigma, 1.0, 30, 1e-5) <= 4.0
    assert user_level_epsilon(sigma * 0.999, 1.0, 30, 1e-5) > 4.0
    with pytest.raises(CentralDPError, match="sample_rate=0.0"):
        user_level_epsilon(1.0, 0.0, 3, 1e-5)
