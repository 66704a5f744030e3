"""Run store and checkpoints."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from server.store import RunStore, StoreError
from server.store.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_file
from server.store.records import VerdictRecord


def test_run_round_node_and_event_rows_round_trip(tmp_path) -> None:
    store = RunStore.in_dir(tmp_path)
    store.start_run("r1", {"lr": 0.1}, num_rounds=3, flower_run_id="77")
    store.record_node_result("r1", 1, 42, "train", "ok",
                             {"num-examples": 10, "loss": 0.5, "accuracy": 0.8, "epsilon": 1.5,
                              "clipped": 0.2})
    store.record_round("r1", 1, 0.0, 1, {"server_accuracy": 0.9, "server_loss": 0.3}, "p", "ab")
    store.add_event("r1", "node-refused", "budget", 1, 42)
    run = store.get_run("r1")
    assert run["config"] == {"lr": 0.1} and run["last_round"] == 1 and run["status"] == "running"
    (node,) = store.node_results("r1")
    assert node["node_id"] == "42" and node["epsilon"] == 1.5 and node["num_examples"] == 10
    assert '"clipped": 0.2' in node["metrics"]
    assert store.rounds("r1")[0]["server_accuracy"] == 0.9
    assert store.events("r1", "node-refused")[0]["node_id"] == "42"
    store.finish_run("r1", "completed")
    assert store.latest_run()["status"] == "completed"


def test_store_is_readable_by_another_connection_while_a_write_is_open(tmp_path) -> None:
    writer = RunStore.in_dir(tmp_path)
    writer.start_run("r1", {}, num_rounds=1)
    raw = sqlite3.connect(writer.path)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("INSERT INTO events (run_id, ts, kind, message) VALUES ('r1', 0, 'x', 'pending')")
    reader = RunStore.in_dir(tmp_path, readonly=True)
    assert reader.get_run("r1") is not None  # WAL: the reader is not blocked by the writer
    assert reader.events("r1") == []  # and does not see uncommitted rows
    raw.execute("COMMIT")
    assert len(reader.events("r1")) == 1


def test_resume_drops_partial_rounds_only(tmp_path) -> None:
    store = RunStore.in_dir(tmp_path)
    store.start_run("r", {}, num_rounds=5)
    store.record_node_result("r", 1, 1, "train", "ok", {})
    store.record_round("r", 1, 0.0, 1, {}, "p", "h")
    store.record_node_result("r", 2, 1, "train", "ok", {})  # round 2 never finished
    assert store.resume_run("r", "99") == 1
    assert [n["round"] for n in store.node_results("r")] == [1]
    with pytest.raises(StoreError, match="no such run"):
        store.resume_run("nope", "1")


def test_bad_store_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        RunStore.in_dir(tmp_path / "none", readonly=True)
    bad = tmp_path / "runs.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a fedguard database"):
        RunStore(bad)


def test_checkpoint_is_atomic_and_hash_checked(tmp_path) -> None:
    path = tmp_path / "round-0001.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    sha = save_checkpoint(path, state, 1)
    assert sha == sha256_file(path)
    assert torch.equal(load_checkpoint(path, sha)["w"], state["w"])
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind
    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path, sha)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "nope.pt")


def test_manifests_verdicts_and_artifacts_round_trip(tmp_path) -> None:
    store = RunStore.in_dir(tmp_path)
    store.start_run("r", {}, num_rounds=1)
    store.record_manifest("r", 7, "abc", {"dataset": "x", "licence": "CC-BY-4.0"})
    store.record_verdicts("r", [
        VerdictRecord("P9", "baseline", "7", "fail", "fail", "licence terms", pid="P9",
                      title={"en": "Licence fits purpose"},
                      explain={"en": "Fix the licence.", "zh": "请修正许可。"},
                      evidence={"l": "NC"}, verified="2026-12-01"),
        VerdictRecord("P5", "baseline", "", "pass", "fail"),
    ])
    store.set_artifact("r", "provenance", tmp_path / "p.json", "ff")
    assert store.manifests("r")[0]["manifest"]["licence"] == "CC-BY-4.0"
    v = {(x.rule_id, x.node_id): x for x in store.verdicts("r")}
    assert v[("P9", "7")].evidence == {"l": "NC"}
    # what the UI shows: the explanation and rule id the server wrote (blank before, #10)
    assert v[("P9", "7")].explain["zh"] == "请修正许可。" and v[("P9", "7")].pid == "P9"
    assert v[("P9", "7")].verified == "2026-12-01"
    assert v[("P5", "")].verdict == "pass"
    assert store.artifacts("r")["provenance"]["sha256"] == "ff"
