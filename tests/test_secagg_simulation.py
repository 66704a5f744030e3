"""Secure aggregation and user-level DP through full simulations."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_simulation

pytestmark = pytest.mark.slow

BASE = {"federated_evaluation": False, "min_nodes": 3, "local_epochs": 1}


def _accs(store, run_id):
    return [r["server_accuracy"] for r in store.rounds(run_id)]


def test_secagg_matches_plain_fedavg_without_and_with_dp(tmp_path) -> None:
    # Without DP the runs are deterministic: secure aggregation changes only quantisation.
    _, plain_id, plain = run_simulation(tmp_path / "plain", nodes=3, rounds=3, **BASE)
    _, sec_id, sec = run_simulation(tmp_path / "sec", nodes=3, rounds=3, secagg=True, **BASE)
    assert sec.get_run(sec_id)["status"] == "completed"
    for a, b in zip(_accs(plain, plain_id), _accs(sec, sec_id), strict=True):
        assert abs(a - b) <= 0.01
    facts = json.loads(sec.rounds(sec_id)[-1]["extra"])["secagg"]
    assert len(facts["contributors"]) == 3 and facts["dropped"] == {}

    # With DP-SGD the noise differs between runs, so they agree only within noise.
    dp = {**BASE, "dp": True, "dp_epsilon": 8.0, "lr": 0.05, "batch_size": 32}
    _, a_id, a = run_simulation(tmp_path / "dp", nodes=3, rounds=3, **dp)
    _, b_id, b = run_simulation(tmp_path / "dpsec", nodes=3, rounds=3, secagg=True, **dp)
    assert b.get_run(b_id)["status"] == "completed"
    assert abs(_accs(a, a_id)[-1] - _accs(b, b_id)[-1]) <= 0.15
    assert all(r["epsilon"] is not None for r in b.node_results(b_id, "train"))


def test_user_level_dp_with_secagg_is_accounted_every_round(tmp_path) -> None:
    status, run_id, store = run_simulation(
        tmp_path, nodes=3, rounds=3, secagg=True, central_dp=True, central_dp_epsilon=8.0,
        central_dp_clip=1.0, **BASE)
    assert status == "finished:completed" and store.get_run(run_id)["status"] == "completed"
    eps = [json.loads(r["extra"])["central_dp"]["epsilon"] for r in store.rounds(run_id)]
    assert eps == sorted(eps) and eps[0] > 0 and eps[-1] <= 8.0 + 1e-6
    assert eps[-1] > 7.9  # calibrated to spend the target over the run, not far below
    # Every node clipped its whole update before adding its noise share.
    for row in store.node_results(run_id, "train"):
        assert "user-dp-norm" in json.loads(row["metrics"])
    (ev,) = store.events(run_id, "central-dp")
    assert "noise multiplier" in ev["message"]
