"""Poisoning: the attack app's malicious nodes, fedguard's strategy against them, scripts/attack.py.

Fast tests drive the real server strategy against the attack app's real ClientApp handlers
through an in-process Grid (real Flower Messages, serialised as on the wire). One slow test runs
scripts/attack.py end to end in the Simulation Engine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.training.node import NodeRuntime
from server.rounds.plain import PlainRounds
from server.rounds.replies import ReplySorter
from server.store import RunStore
from tests.conftest import ROOT
from tests.helpers.grids import InProcessGrid
from tests.helpers.rounds import make_run, node_train

APP_DIR = ROOT / "scripts" / "attack_app"
sys.path.insert(0, str(APP_DIR))
sys.path.insert(0, str(ROOT / "scripts"))
import attack  # noqa: E402  (scripts/attack.py)
import attack_client  # noqa: E402  (scripts/attack_app/attack_client.py)

BASE = {"local-epochs": 1, "batch-size": 32, "lr": 0.1, "attack-fraction": 0.2, "min-nodes": 2,
        "federated-evaluation": False}


@pytest.fixture(autouse=True)
def _identity() -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


class AttackGrid(InProcessGrid):
    """Delivers each train message to the attack app's ClientApp on node i (partition i)."""

    def __init__(self, n: int, run_config: Mapping[str, Any]) -> None:
        super().__init__([1000 + i for i in range(n)], run_config)

    def deliver(self, msg: Message, context: Context) -> Message:
        return attack_client.train(msg, context)


def one_round(tmp_path: Path, aggregation: str, n: int, run_config: Mapping[str, Any],
              **settings: Any) -> tuple[ArrayRecord, ArrayRecord | None, RunStore, AttackGrid]:
    cfg = {**BASE, **run_config, "aggregation": aggregation,
           **{k.replace("_", "-"): v for k, v in settings.items()}}
    run, rc = make_run(tmp_path / aggregation, cfg)
    arrays = ArrayRecord(run.initial_state())
    grid = AttackGrid(n, cfg)
    run.begin_round(1)
    new = PlainRounds(run, rc, ReplySorter(run)).train(grid, 1, arrays, grid.ids,
                                                        ConfigRecord({"server-round": 1}))
    return arrays, new, run.store, grid


def as_vector(state: Mapping[str, Any]) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in state.values()])


def honest_mean(grid: AttackGrid, arrays: ArrayRecord, honest: list[int]) -> np.ndarray:
    """Sample-weighted mean of what the honest nodes send (fedguard's real local_train)."""
    cfg = next(iter(grid.contexts.values())).run_config
    state = arrays.to_torch_state_dict()
    outs = [node_train(cfg, grid.contexts[grid.ids[i]].node_config, state, 1) for i in honest]
    total = sum(o.metrics["num-examples"] for o in outs)
    return sum(as_vector(o.state) * o.metrics["num-examples"] for o in outs) / total


# --- the malicious ClientApp ----------------------------------------------------------------

def test_who_is_malicious() -> None:
    nodes = {"num-partitions": 10}
    cfg = {"attack-kind": "sign-flip", "attack-fraction": 0.2}
    bad = [p for p in range(10) if attack_client.is_malicious(cfg, {**nodes, "partition-id": p})]
    assert bad == [0, 1]
    assert attack.num_attackers(10, 0.2) == 2 and attack.num_attackers(4, 0.2) == 1
    assert not attack_client.is_malicious({**cfg, "attack-kind": "none"},
                                          {**nodes, "partition-id": 0})
    with pytest.raises(ValueError, match="attack-kind"):
        attack_client.is_malicious({**cfg, "attack-kind": "bogus"}, {**nodes, "partition-id": 0})


@pytest.mark.parametrize("kind,scale", [("sign-flip", 4.0), ("scaled", 10.0)])
def test_sign_flip_and_scaled_updates_are_exact(kind: str, scale: float) -> None:
    runtime = NodeRuntime(BASE, {"partition-id": 0, "num-partitions": 5}, 1)
    glob = runtime.task.build_model(runtime.ctx).state_dict()
    honest = runtime.train(glob, 1, False).state
    poisoned = attack_client.poisoned_update(kind, scale, runtime, glob, honest, 1)
    sign = -1.0 if kind == "sign-flip" else 1.0
    for key, g in glob.items():
        want = g + sign * scale * (honest[key] - g)
        torch.testing.assert_close(poisoned[key], want, rtol=1e-5, atol=1e-6)


def test_nan_and_label_flip_updates() -> None:
    runtime = NodeRuntime({**BASE, "local-epochs": 5}, {"partition-id": 1, "num-partitions": 5},
                          1)
    glob = runtime.task.build_model(runtime.ctx).state_dict()
    honest = runtime.train(glob, 1, False).state
    nan = attack_client.poisoned_update("nan", 1.0, runtime, glob, honest, 1)
    assert all(torch.isnan(v).all() for v in nan.values() if torch.is_floating_point(v))
    flipped = attack_client.poisoned_update("label-flip", 1.0, runtime, glob, honest, 1)
    # The label-flipped model learned y -> y + 1: it predicts the shifted label on its data.
    x, y = runtime.data.train.tensors
    model = runtime.model(flipped)
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    shifted = (y.numpy() + 1) % 10
    assert (pred == shifted).mean() > 0.5 > (pred == y.numpy()).mean()


@pytest.mark.parametrize("kind", ["sign-flip", "scaled", "label-flip", "nan"])
def test_malicious_reply_looks_like_an_honest_one(kind: str) -> None:
    """Same records and metrics as the real ClientApp's reply; only the weights differ."""
    grid = AttackGrid(5, {**BASE, "attack-kind": kind})
    runtime = NodeRuntime(BASE, grid.contexts[grid.ids[0]].node_config, 1)
    arrays = ArrayRecord(runtime.task.build_model(runtime.ctx).state_dict())
    msgs = [Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
                    dst_node_id=nid, message_type="train") for nid in grid.ids[:2]]
    bad, good = grid.send_and_receive(msgs)
    assert not bad.has_error() and not good.has_error()
    assert set(bad.content.keys()) == set(good.content.keys())
    bad_m, good_m = dict(bad.content["metrics"]), dict(good.content["metrics"])
    assert bad_m.keys() == good_m.keys()
    honest_bad = node_train(BASE, grid.contexts[grid.ids[0]].node_config,
                            arrays.to_torch_state_dict(), 1)
    assert bad_m["num-examples"] == honest_bad.metrics["num-examples"]
    assert bad.content["arrays"].keys() == arrays.keys()
    sent = as_vector({k: v.numpy() for k, v in bad.content["arrays"].items()})
    assert not np.allclose(sent, as_vector(honest_bad.state), equal_nan=True)


def test_app_declares_every_run_config_key_it_is_given() -> None:
    project = tomllib.loads((APP_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    flwr = project["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "server.server_app:app",
                                  "clientapp": "attack_client:app"}
    declared = set(flwr["config"])
    args = attack.parse_args([])
    for agg in attack.AGGREGATORS:
        for cond in attack.CONDITIONS:
            cfg = attack.run_config(args, agg, cond, Path("/unused"))
            assert set(cfg) <= declared, set(cfg) - declared
            assert cfg["attack-kind"] in attack_client.ATTACKS


def test_run_configs_fit_each_aggregator() -> None:
    args = attack.parse_args([])
    for cond in attack.CONDITIONS:
        valid = 10 - (2 if cond == "nan" else 0)
        bulyan = attack.run_config(args, "bulyan", cond, Path("/unused"))
        f = bulyan["aggregation-malicious"]
        assert f >= 1 and valid >= 4 * f + 3  # Flower's Bulyan skips aggregation otherwise
        for agg in ("krum", "multikrum"):
            assert attack.run_config(args, agg, cond, Path("/unused"))["aggregation-malicious"] == 2
        # min-nodes leaves room for every attacker's update to be rejected.
        assert attack.run_config(args, "median", cond, Path("/unused"))["min-nodes"] == 8
    quick = attack.parse_args(["--quick"])
    assert quick.rounds == 3 and quick.aggregators == ["fedavg", "median"]
    with pytest.raises(SystemExit):
        attack.parse_args(["--aggregators", "fedavg,bogus"])


# --- fedguard's strategy against the malicious nodes ----------------------------------------

@pytest.mark.parametrize("aggregation", ["fedavg", "median", "krum"])
def test_nan_updates_are_rejected_and_recorded(tmp_path: Path, aggregation: str) -> None:
    # Krum needs 2f + 3 = 5 usable updates after the attacker's is rejected.
    n, need = (6, 5) if aggregation == "krum" else (5, 2)
    arrays, new, store, grid = one_round(tmp_path, aggregation, n,
                                         {"attack-kind": "nan", "attack-fraction": 1 / n},
                                         aggregation_malicious=1, min_nodes=need)
    assert new is not None
    assert np.isfinite(as_vector({k: v.numpy() for k, v in new.items()})).all()
    rows = {r["node_id"]: r for r in store.node_results("r", "train")}
    attacker = str(grid.ids[0])
    assert rows[attacker]["status"] == "rejected"
    assert "NaN" in json.loads(rows[attacker]["metrics"])["reason"]
    assert all(r["status"] == "ok" for nid, r in rows.items() if nid != attacker)
    events = store.events("r", "update-rejected")
    assert len(events) == 1 and events[0]["node_id"] == attacker


def test_median_bounds_a_sign_flip_attacker_fedavg_does_not(tmp_path: Path) -> None:
    cfg = {"attack-kind": "sign-flip", "attack-scale": 10.0}
    out, shift = {}, {}
    for agg in ("fedavg", "median"):
        clean_arrays, clean, _, _ = one_round(tmp_path / "clean", agg, 5,
                                              {"attack-kind": "none"})
        arrays, new, _, grid = one_round(tmp_path / "attack", agg, 5, cfg)
        out[agg] = as_vector({k: v.numpy() for k, v in new.items()})
        shift[agg] = np.linalg.norm(out[agg] - as_vector({k: v.numpy()
                                                          for k, v in clean.items()}))
    state = arrays.to_torch_state_dict()
    honest = np.stack([as_vector(node_train({**BASE, **cfg}, grid.contexts[nid].node_config,
                                            state, 1).state) for nid in grid.ids[1:]])
    lo, hi = honest.min(axis=0) - 1e-6, honest.max(axis=0) + 1e-6
    outside = {agg: float(((v < lo) | (v > hi)).mean()) for agg, v in out.items()}
    # One of five nodes sends -10x its update. Every coordinate of the median stays within
    # what honest nodes sent; FedAvg's leaves that range on many coordinates and moves the
    # model well over twice as far as the median does.
    assert outside["median"] == 0.0
    assert outside["fedavg"] > 0.2
    assert shift["median"] < shift["fedavg"] / 2


def test_one_node_with_an_extra_metric_key_cannot_fail_the_round(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = attack_client.fedguard.train

    def extra_key(msg: Message, context: Context) -> Message:
        reply = real(msg, context)
        if context.node_config["partition-id"] == 0:
            reply.content["metrics"]["hello"] = 1.0
        return reply

    monkeypatch.setattr(attack_client.fedguard, "train", extra_key)
    _, new, store, _ = one_round(tmp_path, "fedavg", 4, {"attack-kind": "none"})
    assert new is not None
    assert len(store.node_results("r", "train")) == 4


# --- scripts/attack.py ----------------------------------------------------------------------

def test_verdicts_report_what_was_measured() -> None:
    args = argparse.Namespace(conditions=["clean", "sign-flip", "nan"], nodes=10, fraction=0.2,
                              rounds=10, aggregators=["fedavg", "median", "krum"])
    acc = {("fedavg", "clean"): 0.95, ("fedavg", "sign-flip"): 0.10, ("median", "clean"): 0.96,
           ("median", "sign-flip"): 0.93, ("krum", "clean"): 0.70, ("krum", "sign-flip"): 0.60}
    cells = {k: attack.Cell(*k, status="completed", accuracy=v) for k, v in acc.items()}
    cells[("fedavg", "sign-flip")].status = "stopped"  # diverged: its last round still counts
    for agg in args.aggregators:
        cells[(agg, "nan")] = attack.Cell(agg, "nan", status="completed", accuracy=0.9,
                                          rejected=20)
    lines = attack.verdicts(args, cells)
    assert "within 5 points of clean: median; NOT within: krum; fedavg degrades by 85.0" \
        in lines[0]
    assert "all NaN updates rejected" in lines[1]
    cells[("krum", "nan")].rejected = 19
    assert "MISMATCH" in attack.verdicts(args, cells)[1]


@pytest.mark.slow
def test_attack_script_end_to_end(tmp_path: Path) -> None:
    """The script as a user runs it, on one real simulation run: the NaN attacker's updates are
    rejected every round. (Sign-flip and scaled attackers through the same aggregation code:
    the in-process tests above.)"""
    out = tmp_path / "cells.json"
    proc = subprocess.run(
        [sys.executable, "scripts/attack.py", "--nodes", "4", "--rounds", "2", "--fraction",
         "0.25", "--aggregators", "median", "--conditions", "nan",
         "--data-dir", str(tmp_path / "d"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=500,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    cells = {c["condition"]: c for c in json.loads(out.read_text())}
    assert all(c["status"] == "completed" and len(c["accuracies"]) == 2 for c in cells.values())
    assert cells["nan"]["rejected"] == 2  # 1 attacker x 2 rounds, each an update-rejected event
    assert cells["nan"]["num_nodes"] == [3, 3]
    assert set(cells) == {"nan"}
    assert "all NaN updates rejected by validation" in proc.stdout
    store = RunStore.in_dir(tmp_path / "d" / "store", readonly=True)
    rows = store.node_results(cells["nan"]["run_id"], "train")
    assert sorted(r["status"] for r in rows) == ["ok"] * 6 + ["rejected"] * 2
