"""Secure aggregation and user-level DP through the whole app: the real driver and the real
ClientApp over an in-process Grid (Flower's engines are covered by test_simulation and the
real-node tests)."""

from __future__ import annotations

import json

from tests.helpers.grids import drive

BASE = {"federated-evaluation": False, "min-nodes": 3, "local-epochs": 1,
        "num-server-rounds": 3}


def _accs(store, run_id):
    return [r["server_accuracy"] for r in store.rounds(run_id)]


def test_secagg_matches_plain_fedavg_without_and_with_dp(tmp_path) -> None:
    # Without DP the runs are deterministic: secure aggregation changes only quantisation.
    _, plain = drive(tmp_path / "plain", 3, BASE)
    status, sec = drive(tmp_path / "sec", 3, {**BASE, "secagg": True})
    assert status == "completed"
    for a, b in zip(_accs(plain, "1"), _accs(sec, "1"), strict=True):
        assert abs(a - b) <= 0.01
    facts = json.loads(sec.rounds("1")[-1]["extra"])["secagg"]
    assert len(facts["contributors"]) == 3 and facts["dropped"] == {}
    # Nothing data-dependent left a node in clear under secagg (issue 12.4): no counts,
    # losses or train times in the stored node metrics; FedAvg still weighted (masked).
    for row in sec.node_results("1", "train"):
        assert row["num_examples"] is None and row["loss"] is None
        assert row["train_time_s"] is None
    # The summed training loss still reached the store (from inside the secure sum).
    assert all(r["train_loss"] is not None for r in sec.rounds("1"))

    # With DP-SGD too (its noise is secret, so only the accounting is checked exactly): every
    # node reports the epsilon its own ledger recorded, and only that, in clear.
    dp = {**BASE, "dp": True, "dp-epsilon": 8.0, "batch-size": 32, "num-server-rounds": 2,
          "secagg": True}
    status, b = drive(tmp_path / "dpsec", 3, dp)
    assert status == "completed"
    rows = b.node_results("1", "train")
    assert len(rows) == 6 and all(0 < r["epsilon"] <= 8.0 + 1e-6 for r in rows)
    assert all(set(json.loads(r["metrics"])) <= {"dp-epsilon-budget", "dp-delta"} for r in rows)


def test_user_level_dp_records_the_noise_actually_summed(tmp_path) -> None:
    """Issue 12.2/12.3/12.13: Skellam shares in the integer ring sized for the fewest honest
    contributors; epsilon recorded for the shares really summed; each node's ledger reserves
    and settles the round before its vector leaves it."""
    status, store = drive(tmp_path, 4, {**BASE, "secagg": True, "central-dp": True,
                                        "central-dp-epsilon": 8.0, "central-dp-clip": 1.0,
                                        "node-privacy-budget": 1000.0, "min-nodes": 3})
    assert status == "completed", store.get_run("1")["error"]
    facts = [json.loads(r["extra"])["central_dp"] for r in store.rounds("1")]
    eps = [f["epsilon"] for f in facts]
    assert eps == sorted(eps) and eps[0] > 0 and eps[-1] <= 8.0 + 1e-6
    assert all(f["mechanism"] == "skellam" and f["unit"] == "user" for f in facts)
    # 4 contributors, 1 assumed colluding: 3 honest shares, more than the minimum planned
    assert all(f["honest_shares"] == 3 >= f["min_contributors"] for f in facts)
    # no user-dp-norm or clipped flags in clear (they describe the data)
    for row in store.node_results("1", "train"):
        assert not {"user-dp-norm", "user-dp-clipped"} & set(json.loads(row["metrics"]))
    (ev,) = store.events("1", "central-dp")
    assert "Skellam shares sized for" in ev["message"]
    from privacy.dp.ledger import PrivacyLedger

    kinds = {e.kind for path in sorted((tmp_path / "nodes").glob("*/privacy-ledger.sqlite"))
             for e in PrivacyLedger(path, create=False).releases()}
    assert kinds == {"user-level"}
