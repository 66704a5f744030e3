"""Smoke tests of scripts/bench_secagg.py's helpers and the legacy app's wiring (no timing)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load("bench_secagg", ROOT / "scripts" / "bench_secagg.py")


def test_round_gaps_skip_round_one():
    # reference, end of round 1, 2, 3
    assert bench.round_gaps([0.0, 10.0, 12.0, 15.0]) == [2.0, 3.0]
    assert bench.round_gaps([0.0, 10.0]) == []
    assert bench.round_gaps([]) == []


@pytest.mark.parametrize(("nodes", "k", "t"), [(10, 6, 4), (50, 22, 17), (100, 40, 31)])
def test_share_params_match_fedguard_defaults(nodes, k, t):
    """k and t derived from the default threat model (1/3 corrupt, 10% dropout; Bell et al.)."""
    sp = bench.share_params(nodes)
    assert (sp.neighbours, sp.threshold) == (k, t)
    assert sp.num_shares == k + 1  # Flower counts the node itself


@pytest.mark.parametrize("nodes", [10, 50, 100])
def test_legacy_graph_equals_fedguard_group(nodes):
    """Flower's workflow builds neighbours as offsets -s//2..s//2: group of num_shares nodes."""
    sp = bench.share_params(nodes)
    half = sp.num_shares >> 1
    group = {(0 + off) % nodes for off in range(-half, half + 1)}
    assert len(group) == sp.num_shares
    assert sp.num_shares % 2 == 1 or sp.num_shares == nodes  # no silent bump by Flower


@pytest.mark.parametrize("secagg", [False, True])
def test_fedguard_run_config_is_declared_and_parses(tmp_path, secagg):
    """Flower drops undeclared keys silently; the launcher refuses them, so must the bench."""
    from clients.task.run_config import RunConfig
    from server.deploy.superlink import check_declared

    cfg = bench.fedguard_config(tmp_path, 10, 3, secagg, bench.share_params(10), 1)
    check_declared(ROOT, cfg)
    parsed = RunConfig.parse(cfg)
    assert parsed.secagg is secagg and not parsed.federated_evaluation
    assert parsed.policy_packs == "none"


def test_parse_sizes():
    assert bench.parse_sizes("10, 50,100") == [10, 50, 100]
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_sizes("2")


def test_summary_and_ratio():
    s = bench.summarize([1.0, 3.0, 2.0])
    assert s["median"] == 2.0 and s["n"] == 3.0
    assert bench.summarize([]) is None
    assert bench.ratio(3.0, 2.0) == 1.5
    assert bench.ratio(None, 2.0) is None and bench.ratio(1.0, None) is None


def test_legacy_app_config_and_components():
    app_dir = ROOT / "scripts" / "legacy_secagg_app"
    cfg = tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert cfg["components"] == {"serverapp": "legacy_app:server",
                                 "clientapp": "legacy_app:client"}
    for key in ("num-server-rounds", "timing-file", "min-nodes", "num-shares",
                "reconstruction-threshold", "local-epochs"):
        assert key in cfg["config"]
    legacy = _load("legacy_app", app_dir / "legacy_app.py")
    from flwr.client import ClientApp
    from flwr.server import ServerApp

    assert isinstance(legacy.client, ClientApp) and isinstance(legacy.server, ServerApp)


def test_legacy_client_trains_like_fedguard():
    """The legacy NumPyClient runs fedguard's local training on a fedguard partition."""
    from flwr.app import Context, RecordDict

    from clients.task import TaskContext, load_task

    legacy = sys.modules.get("legacy_app") or _load(
        "legacy_app", ROOT / "scripts" / "legacy_secagg_app" / "legacy_app.py")
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 10},
                  state=RecordDict(), run_config={"local-epochs": 1})
    client = legacy.LegacyClient(ctx)
    task_ctx = TaskContext({}, {}, 42)
    model = load_task("clients.tasks.digits:task", task_ctx).build_model(task_ctx)
    params = [v.numpy() for v in model.state_dict().values()]
    arrays, n, metrics = client.fit(params, {"server-round": 1})
    assert n > 0 and metrics["num-examples"] == n
    assert [a.shape for a in arrays] == [p.shape for p in params]


def test_report_and_reload(tmp_path):
    runs = [
        bench.RunResult("plain", 10, "finished:completed", 30.0, [1.0, 1.2], 4, None, 4),
        bench.RunResult("ours", 10, "finished:completed", 31.0, [1.3, 1.5], 4, None, 4),
        bench.RunResult("legacy", 10, "timeout after 5s (running)", 5.0, [], 1, 9.0, 4),
    ]
    summary = bench.report(runs, [10], list(bench.APPS), 4)
    r = summary["sizes"]["10"]["ratios"]
    assert r["ours/plain"] == pytest.approx(1.4 / 1.1)
    assert r["legacy/plain"] is None and r["ours/legacy"] is None
    out = tmp_path / "bench.json"
    out.write_text(bench.json.dumps(summary))
    again = bench.load_results([out])
    assert sorted((x.app, x.gaps) for x in again) == sorted((x.app, x.gaps) for x in runs)
