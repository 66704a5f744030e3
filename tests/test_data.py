"""Bundled datasets, partitioners, node data files and the bundled tasks' own settings."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from clients.task import ConfigError, DataError, RunConfig, TaskContext, TaskError, load_task
from clients.tasks.datasets import load_digits, train_test_split
from clients.tasks.files import read_numeric_file
from clients.tasks.partition import partition_dirichlet, partition_iid

DIGITS_TASK = "clients.tasks.digits:task"
load_node_file = read_numeric_file
DIGITS = {"num_features": 64, "num_classes": 10}
BREAST = {"num_features": 30, "num_classes": 2}


def _node_xy(ctx: TaskContext) -> np.ndarray:
    data = load_task(DIGITS_TASK, ctx).node_data(ctx).train
    return np.stack([data[i][0].numpy() for i in range(len(data))])


def test_iid_partitions_cover_everything_once_with_equal_sizes() -> None:
    parts = partition_iid(1000, 7, seed=1)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(1000))


def test_partitioners_are_deterministic_for_a_seed() -> None:
    labels = load_digits().y
    a = partition_dirichlet(labels, 10, 0.5, seed=3)
    b = partition_dirichlet(labels, 10, 0.5, seed=3)
    c = partition_dirichlet(labels, 10, 0.5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert all(
        np.array_equal(x, y)
        for x, y in zip(partition_iid(100, 3, 9), partition_iid(100, 3, 9), strict=True)
    )


def test_dirichlet_is_label_skewed_and_disjoint() -> None:
    labels = load_digits().y
    parts = partition_dirichlet(labels, 10, 0.1, seed=0)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(labels) == len(set(allidx.tolist()))
    # With alpha=0.1 a node's most common class dominates; IID parts are near-uniform.
    skew = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    iid = [np.bincount(labels[p], minlength=10).max() / len(p)
           for p in partition_iid(len(labels), 10, 0)]
    assert np.mean(skew) > 0.5
    assert np.mean(iid) < 0.25
    # Larger alpha means less skew.
    mild = partition_dirichlet(labels, 10, 100.0, seed=0)
    assert np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in mild]) < 0.25


def test_dirichlet_rejects_bad_alpha_and_too_many_nodes() -> None:
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match="dirichlet-alpha"):
        partition_dirichlet(labels, 2, 0.0, seed=0)
    with pytest.raises(DataError, match="fewer nodes"):
        partition_iid(3, 5, seed=0)


def test_server_split_is_fixed_stratified_and_disjoint_from_nodes() -> None:
    ctx = TaskContext({}, {}, 42)
    task = load_task(DIGITS_TASK, ctx)
    test = task.evaluation_set(ctx)
    test_x = test.tensors[0].numpy()
    assert np.array_equal(test_x, task.evaluation_set(ctx).tensors[0].numpy())
    full = load_digits()
    assert abs(len(test) / len(full) - 0.2) < 0.01
    assert set(np.unique(test.tensors[1].numpy())) == set(range(10))
    node_rows = np.concatenate([
        _node_xy(TaskContext({}, {"partition-id": i, "num-partitions": 4}, 42)) for i in range(4)
    ])
    assert len(node_rows) + len(test) == len(full)
    test_keys = {r.tobytes() for r in test_x}
    overlap = sum(r.tobytes() in test_keys for r in node_rows)
    # digits has a few exact duplicate images; a leak would show hundreds.
    assert overlap < 10
    _, test2 = train_test_split(full, 0.2, seed=43)
    assert not np.array_equal(test.tensors[1].numpy(), test2.y)


def _csv(tmp_path, text: str):
    p = tmp_path / "node.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_node_csv_loads(tmp_path) -> None:
    spec = BREAST
    header = ",".join([f"f{i}" for i in range(30)] + ["label"])
    rows = [",".join(["0.5"] * 30 + [str(i % 2)]) for i in range(5)]
    data = load_node_file(_csv(tmp_path, "\n".join([header, *rows])), **spec)
    assert data.x.shape == (5, 30) and data.x.dtype == np.float32
    assert data.y.tolist() == [0, 1, 0, 1, 0]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "empty file"),
        ("a,b,label\n", "no rows"),
        ("a,b,c\n1,2,3\n", "no 'label' column"),
        ("a,b,label\n1,2,0\n", "needs 64"),
        ("," .join([f"f{i}" for i in range(64)] + ["label"]) + "\n"
         + ",".join(["x"] + ["1"] * 63 + ["0"]) + "\n", "non-numeric value 'x'"),
        ("," .join([f"f{i}" for i in range(64)] + ["label"]) + "\n"
         + ",".join(["1"] * 64 + ["10"]) + "\n", "label 10 is outside 0..9"),
        ("," .join([f"f{i}" for i in range(64)] + ["label"]) + "\n"
         + ",".join(["nan"] * 64 + ["1"]) + "\n", "NaN"),
        ("," .join([f"f{i}" for i in range(64)] + ["label"]) + "\n1,2\n", "line 2 has 2 values"),
    ],
)
def test_node_csv_errors_are_one_line_and_name_the_fix(tmp_path, content, needle) -> None:
    with pytest.raises(DataError) as info:
        load_node_file(_csv(tmp_path, content), **DIGITS)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg and "data-path" in msg


def test_node_file_missing_and_wrong_type(tmp_path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_node_file(tmp_path / "nope.csv", **DIGITS)
    (tmp_path / "x.parquet").write_bytes(b"x")
    with pytest.raises(DataError, match="use a .csv or .npz"):
        load_node_file(tmp_path / "x.parquet", **DIGITS)


def test_node_npz(tmp_path) -> None:
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 1, 8, 8)), y=np.array([0, 1, 2, 9]))
    assert load_node_file(good, **DIGITS).x.shape == (4, 64)
    missing = tmp_path / "missing.npz"
    np.savez(missing, features=np.zeros((4, 64)))
    with pytest.raises(DataError, match="needs arrays 'x' and 'y'"):
        load_node_file(missing, **DIGITS)
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, x=np.zeros((4, 64)), y=np.zeros(3))
    with pytest.raises(DataError, match="one label per row"):
        load_node_file(mismatch, **DIGITS)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable NPZ"):
        load_node_file(garbage, **DIGITS)


def test_bundled_task_settings_errors_name_key_and_fix() -> None:
    def node(**cfg: object) -> None:
        ctx = TaskContext(cfg, {"partition-id": 0, "num-partitions": 2}, 42)
        load_task(cfg.get("task", DIGITS_TASK), ctx).node_data(ctx)  # type: ignore[arg-type]

    with pytest.raises(TaskError, match="model='cnn' needs images"):
        ctx = TaskContext({"model": "cnn"}, {}, 42)
        load_task("clients.tasks.breast_cancer:task", ctx).build_model(ctx)
    with pytest.raises(TaskError, match="model='rnn'"):
        node(model="rnn")
    with pytest.raises(TaskError, match="partition='zipf'"):
        node(partition="zipf")
    with pytest.raises(TaskError, match="dirichlet-alpha"):
        node(**{"dirichlet-alpha": "lots"})
    with pytest.raises(DataError, match="partition-id=5"):
        ctx = TaskContext({}, {"partition-id": 5, "num-partitions": 2}, 42)
        load_task(DIGITS_TASK, ctx).node_data(ctx)


def test_run_config_errors_name_key_and_fix() -> None:
    with pytest.raises(ConfigError, match="lr="):
        RunConfig.parse({"lr": "fast"})
    with pytest.raises(ConfigError, match="aggregation='mean'"):
        RunConfig.parse({"aggregation": "mean"})
    with pytest.raises(ConfigError, match="min-nodes=0: must be >= 1"):
        RunConfig.parse({"min-nodes": 0})
    assert RunConfig.parse({"lr": 1}).lr == 1.0
    assert partial(RunConfig.parse, {"dp-accountant": "RDP"})().dp_accountant == "rdp"


@pytest.mark.parametrize("task", [DIGITS_TASK, "clients.tasks.breast_cancer:task"])
def test_the_linear_model_is_one_layer_and_trains_under_dp(task: str) -> None:
    from clients.task.checks import check_private_model

    ctx = TaskContext({"model": "linear"}, {"partition-id": 0, "num-partitions": 2}, 42)
    t = load_task(task, ctx)
    model = t.build_model(ctx)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1  # softmax regression: a tenth of the MLP's weights on digits
    mlp = load_task(task, TaskContext({}, {}, 42)).build_model(TaskContext({}, {}, 42))
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in mlp.parameters()) / 5
    check_private_model(model)  # Opacus can privatise it
    x, y = t.node_data(ctx).train[:8]
    assert model(x).shape == (8, linears[0].out_features)
    assert int(y.max()) < linears[0].out_features
