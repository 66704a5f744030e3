"""Smoke tests of scripts/bench_scale.py's pieces and its scale app (no timings asserted)."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

from clients.task import RunConfig, TaskContext, TaskError
from server.deploy.superlink import check_declared
from server.store import RunStore

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bs = _load("bench_scale", ROOT / "scripts" / "bench_scale.py")
scale_task = _load("scale_task", ROOT / "scripts" / "scale_app" / "scale_task.py")


@pytest.mark.parametrize(("nodes", "dp"), [(1000, True), (50_000, False)])
def test_run_config_is_declared_by_the_scale_app_and_samples_100(tmp_path, nodes, dp) -> None:
    cfg = bs.run_config(nodes, 4, dp, tmp_path)
    check_declared(bs.APP, cfg)  # Flower would drop an undeclared key silently
    parsed = RunConfig.parse(cfg)
    assert parsed.dp is dp and parsed.num_server_rounds == 4
    assert round(parsed.fraction_train * nodes) == bs.SAMPLED == parsed.min_nodes


def test_every_virtual_node_has_its_own_fixed_data_whatever_the_node_count() -> None:
    def data(pid: int, parts: int) -> torch.Tensor:
        ctx = TaskContext({}, {"partition-id": pid, "num-partitions": parts}, 42)
        return scale_task.task.node_data(ctx).train.tensors[0]

    assert data(49_999, 50_000).shape == (32, 64)
    assert torch.equal(data(7, 50_000), data(7, 10))  # the same node in every process
    assert not torch.equal(data(7, 50_000), data(8, 50_000))
    with pytest.raises(TaskError, match="simulations only"):
        scale_task.task.node_data(TaskContext({}, {}, 42))


def test_tree_rss_counts_this_process_and_its_children() -> None:
    alone = bs.tree_rss(os.getpid())
    assert alone > 10_000_000  # this interpreter with torch loaded
    child = __import__("subprocess").Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        deadline = time.monotonic() + 5
        while bs.tree_rss(os.getpid()) <= alone and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bs.tree_rss(os.getpid()) > alone
        with bs.PeakRSS(os.getpid(), every=0.01) as peak:
            time.sleep(0.05)
        assert peak.peak > alone
    finally:
        child.kill()
        child.wait()


def test_measure_reads_round_one_the_later_rounds_and_ok_trains(tmp_path) -> None:
    store = RunStore.in_dir(tmp_path)
    store.start_run("r", {}, 3)
    started = store.get_run("r")["started_at"]
    store.add_event("r", "manifest-received", "node 0", 0, 0, {})
    with store._tx() as db:
        db.execute("UPDATE events SET ts=? WHERE run_id='r'", (started + 5.0,))
    for rnd, ended in ((1, started + 8.0), (2, started + 10.0), (3, started + 13.0)):
        for node in range(4):
            store.record_node_result("r", rnd, node, "train", "ok" if node else "refused", {})
        store.record_round("r", rnd, ended - 1, 3, {}, f"ckpt-{rnd}", "0" * 64, {})
        with store._tx() as db:  # the writer stamps ended_at itself; fix it for the test
            db.execute("UPDATE rounds SET ended_at=? WHERE run_id='r' AND round=?", (ended, rnd))
    round1, startup, gaps, trained, error = bs.measure(store, "r")
    assert round1 == pytest.approx(8.0) and gaps == pytest.approx([2.0, 3.0])
    assert startup == pytest.approx(5.0)
    assert trained == 6 and error == ""  # 3 ok a round, rounds 2 and 3
    res = bs.ScaleResult(1000, True, "finished:completed", round1, startup, gaps, trained,
                         2 * 10**9, 30)
    assert res.client_rounds_per_s == pytest.approx(6 / 5)


def test_report_puts_each_dp_run_next_to_its_plain_run() -> None:
    plain = bs.ScaleResult(1000, False, "finished:completed", 6.0, 3.0, [1.0, 1.0], 200, 2e9, 40)
    dp = bs.ScaleResult(1000, True, "finished:completed", 8.0, 3.0, [2.0, 2.0], 200, 2.2e9, 50)
    big = bs.ScaleResult(50_000, False, "timeout after 900s (running)", None, None, [], 0,
                         3.5e9, 900)
    table = bs.report([plain, dp, big])
    assert table.row_count == 3
    ratio = [c for c in table.columns if c.header == "DP / no DP"][0]
    assert list(ratio._cells) == ["-", "0.50x", "-"]
    lines = bs.goals([plain, dp, big])
    assert lines[0].startswith("1,000 nodes, DP: 50.0 client-rounds/s (goal >= 40)")
    assert lines[1] == "50,000 nodes: peak RSS 3.50 GB (goal < 3)"


def test_parse_sizes() -> None:
    assert bs.parse_sizes("1000, 10000") == [1000, 10_000]
    with pytest.raises(bs.argparse.ArgumentTypeError):
        bs.parse_sizes("50")


def test_a_store_being_created_is_not_an_ended_run(tmp_path) -> None:
    assert bs._ended(tmp_path, "r") is False  # no store yet
    (tmp_path / "runs.sqlite").write_bytes(b"")  # the ServerApp has only just opened it
    assert bs._ended(tmp_path, "r") is False
    (tmp_path / "runs.sqlite").unlink()
    store = RunStore.in_dir(tmp_path)
    store.start_run("r", {}, 1)
    assert bs._ended(tmp_path, "r") is False
    store.finish_run("r", "completed")
    assert bs._ended(tmp_path, "r") is True
