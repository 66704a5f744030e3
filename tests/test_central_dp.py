"""User-level distributed DP: Skellam shares in the integer ring (issue 12 items 1, 2, 3, 13)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from privacy.dp.accounting import Release, SkellamRelease, epsilon
from privacy.dp.ledger import PrivacyLedger
from privacy.dp.user_level import (
    CentralDPError,
    UserLevelPlan,
    achieved_epsilon,
    calibrate_user_level,
    clip_update,
    decode_sum,
    encode_user_update,
    global_norm,
    record_level_release,
    reserve_user_level,
    ring_overflow_probability,
    secure_rng,
    to_ring,
    user_level_config_problem,
    user_level_release,
)

DELTA = 1e-5
DIM = 600

_arrays = st.lists(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
        elements=st.floats(-100, 100, width=32),
    ),
    min_size=1,
    max_size=4,
)


@pytest.fixture(scope="module")
def plan() -> UserLevelPlan:
    return calibrate_user_level(8.0, DELTA, 10, 6, clip=1.0, dim=DIM, max_contributors=10)


def _quiet_plan(**kw: object) -> UserLevelPlan:
    """A plan whose shares are (almost surely) zero, to look at the rounding alone."""
    args: dict = {"clip": 1.0, "scale": 50.0, "dim": DIM, "share_variance": 1e-12,
                  "min_contributors": 2, "max_contributors": 4, "ring_bits": 32, **kw}
    return UserLevelPlan(**args)


# -- clipping ------------------------------------------------------------------------------


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


# -- encoding: discrete noise in the ring (item 13) ----------------------------------------


def test_conditional_rounding_keeps_the_sensitivity_bound() -> None:
    """Rounding inflates the norm; conditional rounding caps it at l2_sensitivity always."""
    plan = _quiet_plan()
    rng = np.random.default_rng(3)
    for trial in range(20):
        x = rng.normal(size=DIM)
        x *= (1.0 if trial % 2 else 0.3) / np.linalg.norm(x)  # at and below the clip
        r = encode_user_update([x], plan, rng)
        assert r.dtype == np.int64
        assert float(np.linalg.norm(r)) <= plan.l2_sensitivity
        assert np.all(np.abs(r - plan.scale * x) < 1.0)  # a rounding, nothing else
    assert plan.l2_sensitivity < plan.scale * plan.clip + math.sqrt(DIM)  # Theorem 1 helps
    assert plan.l1_sensitivity == pytest.approx(
        plan.l2_sensitivity * min(math.sqrt(DIM), plan.l2_sensitivity))


def test_rounding_is_unbiased() -> None:
    plan = _quiet_plan(dim=4, scale=1.0, clip=10.0)
    rng = np.random.default_rng(4)
    x = np.array([0.25, -1.5, 2.9, 0.0])
    mean = np.mean([encode_user_update(x, plan, rng) for _ in range(4000)], axis=0)
    np.testing.assert_allclose(mean, x, atol=0.03)


def test_noise_is_skellam_and_shares_sum_to_the_calibrated_variance(
    plan: UserLevelPlan,
) -> None:
    """Each share is Poisson(v/2) - Poisson(v/2); k shares sum to Skellam of variance k v."""
    rng = np.random.default_rng(5)
    zero = np.zeros(DIM)
    shares = np.stack([encode_user_update(zero, plan, rng) for _ in range(60)])
    assert shares.dtype == np.int64
    assert shares.var() == pytest.approx(plan.share_variance, rel=0.03)
    sums = shares.reshape(10, 6, DIM).sum(axis=1)  # 10 rounds of m_min = 6 shares
    assert sums.var() == pytest.approx(6 * plan.share_variance, rel=0.03)
    assert abs(sums.mean()) < 4 * math.sqrt(6 * plan.share_variance / sums.size)


def test_small_shares_follow_the_skellam_law_exactly() -> None:
    plan = _quiet_plan(share_variance=3.0, dim=20_000)
    noise = encode_user_update(np.zeros(20_000), plan, np.random.default_rng(6))
    values, counts = np.unique(noise, return_counts=True)
    expected = stats.skellam.pmf(values, 1.5, 1.5)
    total_variation = 0.5 * np.abs(counts / noise.size - expected).sum()
    assert total_variation < 0.02  # ~0.005 expected from sampling alone


def test_ring_sum_decodes_to_the_exact_integer_sum() -> None:
    rng = np.random.default_rng(7)
    for bits in (16, 40, 64):
        vectors = [rng.integers(-2000, 2000, size=50) for _ in range(5)]
        ring = np.zeros(50, dtype=np.uint64)
        mask = np.uint64((1 << bits) - 1)
        for v in vectors:
            ring = (ring + to_ring(v, bits)) & mask  # what secure aggregation computes
        decoded = decode_sum(ring, 8.0, 1 << bits)
        np.testing.assert_array_equal(decoded, np.sum(vectors, axis=0) / 8.0)


def test_encode_decode_round_trip_recovers_the_clipped_sum(plan: UserLevelPlan) -> None:
    rng = np.random.default_rng(8)
    updates = [rng.normal(size=DIM) * 0.05 for _ in range(8)]
    ring = np.zeros(DIM, dtype=np.uint64)
    for u in updates:
        ring = (ring + to_ring(encode_user_update([u], plan, rng), plan.ring_bits)) & np.uint64(
            plan.modulus - 1)
    error = decode_sum(ring, plan.scale, plan.modulus) - np.sum(
        [clip_update([u], plan.clip)[0][0] for u in updates], axis=0)
    noise_std = math.sqrt(8 * plan.share_variance) / plan.scale
    assert error.std() == pytest.approx(noise_std, rel=0.1)


def test_encoding_refuses_wrong_inputs(plan: UserLevelPlan) -> None:
    with pytest.raises(CentralDPError, match=f"update has 5 coordinates but the plan is for "
                                             f"dim={DIM}"):
        encode_user_update(np.zeros(5), plan)
    with pytest.raises(CentralDPError, match="rng must be a numpy Generator"):
        encode_user_update(np.zeros(DIM), plan, rng=42)  # type: ignore[arg-type]
    with pytest.raises(CentralDPError, match="vector has dtype float64"):
        to_ring(np.zeros(3), 32)
    with pytest.raises(CentralDPError, match="modulus=1000: must be a power of two"):
        decode_sum(np.zeros(3, dtype=np.uint64), 1.0, 1000)


def test_default_rng_is_securely_seeded_per_call(plan: UserLevelPlan) -> None:
    a = encode_user_update(np.zeros(DIM), plan)
    b = encode_user_update(np.zeros(DIM), plan)
    assert not np.array_equal(a, b)
    assert isinstance(secure_rng().bit_generator, np.random.PCG64)


# -- wrap-around ---------------------------------------------------------------------------


def test_overflow_bound_is_an_upper_bound_on_observed_wraps() -> None:
    plan = UserLevelPlan(clip=1.0, scale=10.0, dim=200, share_variance=140.0,
                         min_contributors=2, max_contributors=4, ring_bits=8)
    bound = ring_overflow_probability(plan)
    assert 0.05 < bound < 1.0
    rng = np.random.default_rng(9)
    half = plan.share_variance / 2
    trials, wrapped = 3000, 0
    for _ in range(trials):
        noise = (rng.poisson(half, (4, 200)) - rng.poisson(half, (4, 200))).sum(axis=0)
        worst = 4 * 10 + noise  # every node at its per-coordinate worst case
        wrapped += bool(np.any(np.abs(worst) > plan.modulus // 2 - 1))
    assert wrapped / trials <= bound
    assert wrapped > 0  # the test can see an overflow when there is one


def test_calibration_sizes_the_ring_and_refuses_too_few_bits(plan: UserLevelPlan) -> None:
    assert ring_overflow_probability(plan) <= 1e-9
    wider = calibrate_user_level(8.0, DELTA, 10, 6, clip=1.0, dim=DIM, max_contributors=50)
    assert ring_overflow_probability(wider) <= 1e-9
    with pytest.raises(CentralDPError) as info:
        calibrate_user_level(8.0, DELTA, 10, 6, clip=1.0, dim=DIM, max_contributors=10,
                             ring_bits=8)
    assert str(info.value) == (
        "ring_bits=8 cannot hold sums of 10 contributors of dimension 600 at this noise with "
        "overflow probability <= 1e-09: use more bits (up to 64)"
    )


# -- accounting for the shares actually summed (item 2) ------------------------------------


def test_epsilon_is_for_the_shares_summed_and_rounds_below_m_min_abort(
    plan: UserLevelPlan,
) -> None:
    at_minimum = achieved_epsilon(plan, [6] * 10, DELTA)
    assert 0.99 * 8.0 < at_minimum <= 8.0
    assert achieved_epsilon(plan, [10] * 10, DELTA) < at_minimum  # more shares, more noise
    assert achieved_epsilon(plan, [6] * 5, DELTA) < at_minimum
    with pytest.raises(CentralDPError) as info:
        achieved_epsilon(plan, [6, 6, 5], DELTA)
    assert str(info.value) == (
        "only 5 noise shares were summed, fewer than min_contributors=6: the round must "
        "abort, not be released"
    )


def test_shares_sized_for_the_cohort_overstate_privacy() -> None:
    """Item 2 as found: sized for all 10 sampled nodes, 6 shares give ~10.9, not 8."""
    for_all = calibrate_user_level(8.0, DELTA, 10, 10, clip=1.0, dim=DIM, max_contributors=10)
    assert achieved_epsilon(for_all, [10] * 10, DELTA) <= 8.0
    six = SkellamRelease(6 * for_all.share_variance, for_all.l2_sensitivity,
                         for_all.l1_sensitivity, 10)
    assert epsilon([six], DELTA) > 10.5  # what 6 summed shares really give
    with pytest.raises(CentralDPError, match="the round must abort"):
        achieved_epsilon(for_all, [6] * 10, DELTA)  # so such a round is never released


def test_release_records_the_worst_accepted_round(plan: UserLevelPlan) -> None:
    release = user_level_release(plan)
    assert release == SkellamRelease(6 * plan.share_variance, plan.l2_sensitivity,
                                     plan.l1_sensitivity, 1)
    assert user_level_release(plan, 9).variance == 9 * plan.share_variance


def test_plan_travels_through_a_flat_config(plan: UserLevelPlan) -> None:
    config = plan.to_config()
    assert all(k.startswith("user-dp-") for k in config)
    assert UserLevelPlan.from_config(config) == plan
    del config["user-dp-scale"]
    with pytest.raises(CentralDPError, match="round config lacks user-dp-scale"):
        UserLevelPlan.from_config(config)


def test_plan_refuses_shares_too_large_to_sample_exactly() -> None:
    with pytest.raises(CentralDPError, match="Poisson sampling is not exact that high"):
        _quiet_plan(share_variance=1e12)


# -- configurations that cannot give the guarantee (item 1) --------------------------------


def test_user_level_dp_without_secure_aggregation_is_refused() -> None:
    problem = user_level_config_problem(secagg=False, min_contributors=6, min_survivors=6,
                                        assumed_colluding=0)
    assert problem == (
        "run config central-dp=true needs secagg=true: each node adds only a share of the "
        "noise, so without secure aggregation the server sees every update nearly bare"
    )


def test_colluding_nodes_must_leave_m_min_honest_shares() -> None:
    problem = user_level_config_problem(secagg=True, min_contributors=6, min_survivors=7,
                                        assumed_colluding=2)
    assert problem is not None and problem.endswith("raise min-nodes to at least 8")
    assert user_level_config_problem(secagg=True, min_contributors=6, min_survivors=8,
                                     assumed_colluding=2) is None


# -- the node's ledger (item 3) ------------------------------------------------------------


def test_user_level_rounds_are_reserved_in_the_nodes_ledger(
    plan: UserLevelPlan, tmp_path: Path
) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    args = {"source": "bank/loans", "run_id": "r", "num_records": 5000, "fingerprint": "f"}
    refused = reserve_user_level(ledger, plan, round=1, **args)
    assert not refused.allowed and "no privacy budget for data source 'bank/loans'" in (
        refused.message)
    sgd, user = Release(1.1, 0.02, 50), record_level_release(plan)
    room_for_two = (epsilon([sgd, user, user], 1e-6) + epsilon([sgd, user, user, user], 1e-6)) / 2
    ledger.set_budget("bank/loans", room_for_two, 1e-6)
    (sgd_id,) = ledger.reserve("bank/loans", "r0", 1, [("dp-sgd", sgd)], num_records=5000,
                               fingerprint="f").reservations
    ledger.settle(sgd_id, sgd)
    granted = 0
    for rnd in range(1, 4):
        decision = reserve_user_level(ledger, plan, round=rnd, **args)
        if decision.allowed:
            granted += 1
            ledger.settle(decision.reservations[0], record_level_release(plan))
    assert granted == 2  # user-level spend composes with the record-level spend
    kinds = [e.kind for e in ledger.releases("bank/loans")]
    assert kinds == ["dp-sgd", "user-level", "user-level"]
    assert ledger.spent("bank/loans") == pytest.approx(epsilon([sgd, user, user], 1e-6))


def test_a_record_costs_the_node_more_than_its_user_level_epsilon(plan: UserLevelPlan) -> None:
    """One record can move a node's clipped vector across the clip ball: twice the shift of
    removing the node, so the ledger records a user-level round at doubled sensitivity."""
    node, record = user_level_release(plan), record_level_release(plan)
    assert (record.l2_sensitivity, record.l1_sensitivity) == (
        2 * node.l2_sensitivity, 2 * node.l1_sensitivity)
    assert record.variance == node.variance
    assert epsilon([record], DELTA) > 1.5 * epsilon([node], DELTA)
    rng = np.random.default_rng(10)
    quiet = _quiet_plan()
    x = rng.normal(size=DIM)
    x /= np.linalg.norm(x)
    with_record = encode_user_update([x], quiet, rng)
    without = encode_user_update([-x], quiet, rng)  # a one-record node, record removed
    shift = float(np.linalg.norm(with_record - without))
    assert quiet.l2_sensitivity < shift <= 2 * quiet.l2_sensitivity
