"""The no-code tabular task: its schema (file or run-config strings), each node's check of its own
CSV or Parquet file, declared-range scaling, and classification vs regression."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from clients.task import DataError, TaskContext, TaskError, TensorSchema
from clients.task.evaluation import evaluate
from clients.tasks.tabular import Feature, Label, TabularSchema, task

SCHEMA_TOML = """
[label]
name = "outcome"
classes = ["low", "mid", "high"]

[[feature]]
name = "age"
range = [0, 120]

[[feature]]
name = "bmi"
range = [10, 60]

[[feature]]
name = "sex"
categories = ["f", "m"]
"""
HEADER = "age,bmi,sex,outcome"
ROWS = ["60,35,f,low", "30,10,m,high", "120,60,f,mid"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def csv_file(tmp_path: Path, lines: list[str], name: str = "node.csv") -> Path:
    return write(tmp_path / name, "\n".join(lines) + "\n")


@pytest.fixture
def schema(tmp_path: Path) -> TabularSchema:
    return TabularSchema.from_file(write(tmp_path / "schema.toml", SCHEMA_TOML))


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


# --- the schema ------------------------------------------------------------------------------
def test_schema_from_file(schema: TabularSchema) -> None:
    assert schema.features == (Feature("age", 0, 120), Feature("bmi", 10, 60),
                               Feature("sex", categories=("f", "m")))
    assert schema.label == Label("outcome", classes=("low", "mid", "high"))
    assert (schema.kind, schema.width, schema.outputs) == ("classification", 4, 3)
    assert schema.tensor_schema == TensorSchema((4,), num_classes=3)


def test_schema_from_run_config_strings_equals_the_file(schema: TabularSchema) -> None:
    assert TabularSchema.from_strings("age:0..120, bmi:10..60, sex:f|m",
                                      "outcome:low|mid|high") == schema


def test_regression_schema_from_strings_and_file(tmp_path: Path) -> None:
    reg = TabularSchema.from_strings("age:0..120,bmi:10..60", "progression:0..400")
    assert reg.label == Label("progression", lo=0.0, hi=400.0)
    assert (reg.kind, reg.outputs) == ("regression", 1)
    assert reg.tensor_schema == TensorSchema((2,), target_shape=())
    text = '[label]\nname = "progression"\nrange = [0, 400]\n[[feature]]\nname = "age"\n' \
           'range = [0, 120]\n[[feature]]\nname = "bmi"\nrange = [10, 60]\n'
    assert TabularSchema.from_file(write(tmp_path / "r.toml", text)) == reg


LABEL = '[label]\nname = "y"\nclasses = ["a", "b"]\n'
FEAT = '[[feature]]\nname = "x"\nrange = [0, 1]\n'


@pytest.mark.parametrize(("text", "expected"), [
    ("x = 1\n", "[label] needs name = \"column\" and classes = [...] or range = [low, high]"),
    ('[label]\nclasses = ["a", "b"]\n' + FEAT, "[label] needs name = \"column\""),
    (LABEL, "add [[feature]] entries with name and range or categories"),
    ('[label]\nname = "y"\n' + FEAT, "[label] needs classes = [...] (classification) or range "
     "= [low, high] (regression)"),
    (LABEL + '[[feature]]\nname = "x"\n', "feature 1 (x): give range = [low, high] or "
     "categories = [...]; ranges are declared so no node's statistics are needed"),
    (LABEL + '[[feature]]\nrange = [0, 1]\n', "feature 1: needs name = \"column\""),
    (LABEL + '[[feature]]\nname = "x"\nrange = [5, 1]\n', "feature 1.range: range must be "
     "[low, high] with low < high, e.g. [0, 120]"),
    (LABEL + '[[feature]]\nname = "x"\nrange = [0]\n', "range must be [low, high] with low < "
     "high"),
    (LABEL + '[[feature]]\nname = "x"\nrange = ["a", "b"]\n', "range must be [low, high]"),
    (LABEL + '[[feature]]\nname = "x"\nrange = [0, inf]\n', "range must be [low, high]"),
    ('[label]\nname = "y"\nrange = [1, 1]\n' + FEAT, "[label].range: range must be [low, "
     "high] with low < high"),
    ('[label]\nname = "y"\nclasses = ["a"]\n' + FEAT, "[label].classes: give at least two "
     "values, e.g. [\"f\", \"m\"]"),
    ('[label]\nname = "y"\nclasses = ["a", "a"]\n' + FEAT, "values must be distinct, got "
     "['a', 'a']"),
    (LABEL + '[[feature]]\nname = "s"\ncategories = [true, false]\n', "feature 1.categories: "
     "give at least two values"),
    (LABEL + FEAT + FEAT, "tabular schema: column 'x' is declared twice"),
    (LABEL + '[[feature]]\nname = "y"\nrange = [0, 1]\n', "column 'y' is declared twice"),
    ("[label\n", "not valid TOML"),
])
def test_bad_schema_file_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(TaskError) as exc:
        TabularSchema.from_file(write(tmp_path / "schema.toml", text))
    assert expected in one_line(exc.value)


def test_missing_schema_file_and_no_schema_at_all(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as exc:
        TabularSchema.from_file(tmp_path / "nope.toml")
    assert one_line(exc.value).endswith("nope.toml: file not found; set tabular-schema to the "
                                        "schema file in the app directory")
    with pytest.raises(TaskError) as exc:
        task(TaskContext({}, {}, 42, tmp_path))
    assert one_line(exc.value) == (
        "the tabular task needs a schema: set tabular-schema = \"schema.toml\" (in the app) or "
        "tabular-features and tabular-label in the run config")
    with pytest.raises(TaskError) as exc:
        TabularSchema((), Label("y", classes=("a", "b")))
    assert one_line(exc.value) == "tabular schema: declare at least one feature"


@pytest.mark.parametrize(("features", "label", "expected"), [
    ("age", "y:a|b", "run config tabular-features='age': use name:low..high or name:a|b|c"),
    ("age:0..120", "y", "run config tabular-label='y': use name:low..high or name:a|b|c"),
    ("age:young..old", "y:a|b", "run config tabular-features='age:young..old': range bounds "
     "must be numbers"),
    ("age:0..120", "y:a", "run config tabular schema [label].classes: give at least two "
     "values"),
])
def test_bad_schema_strings_are_one_line(features: str, label: str, expected: str) -> None:
    with pytest.raises(TaskError) as exc:
        TabularSchema.from_strings(features, label)
    assert expected in one_line(exc.value)


# --- scaling: declared ranges, no statistic of anyone's rows -----------------------------------
def test_declared_ranges_scale_to_unit_interval_and_clip(tmp_path: Path,
                                                         schema: TabularSchema) -> None:
    path = csv_file(tmp_path, [HEADER, "60,35,f,low", "0,10,m,high", "150,-5,f,mid"])
    x, y = schema.encode(path)
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x, [[0.5, 0.5, 1, 0],    # the middle of each range
                                   [0.0, 0.0, 0, 1],    # the low ends; m one-hot
                                   [1.0, 0.0, 1, 0]])   # outside the range: clipped
    assert y.tolist() == [0, 2, 1]  # index in the declared classes


def test_each_row_is_encoded_alone(tmp_path: Path, schema: TabularSchema) -> None:
    """Scaling uses only the declared schema: a row encodes the same in any file, so no node's
    minimum, maximum or mean is needed (or could leak)."""
    whole, _ = schema.encode(csv_file(tmp_path, [HEADER, *ROWS]))
    for i, row in enumerate(ROWS):
        alone, _ = schema.encode(csv_file(tmp_path, [HEADER, row], name=f"r{i}.csv"))
        np.testing.assert_array_equal(alone[0], whole[i])


def test_regression_target_scaling_and_metrics_in_original_units(tmp_path: Path) -> None:
    app = tmp_path
    write(app / "schema.toml", '[label]\nname = "y"\nrange = [100, 300]\n[[feature]]\n'
          'name = "x"\nrange = [0, 10]\n')
    path = csv_file(app, ["x,y", "0,100", "5,200", "10,350"])
    ctx = TaskContext({"tabular-schema": "schema.toml"}, {"data-path": str(path)}, 42, app)
    t = task(ctx)
    assert (t.kind, t.headline, t.loss_bound) == ("regression", "mae", 1.0)
    assert t.metric_scale == {"mse": 200.0**2, "mae": 200.0}
    x, y = TabularSchema.from_file(app / "schema.toml").encode(path)
    np.testing.assert_allclose(y, [0.0, 0.5, 1.0])  # 350 is clipped to the declared 300

    class Constant(torch.nn.Module):  # predicts 150 (0.25 scaled) for everyone
        def forward(self, xb: torch.Tensor) -> torch.Tensor:
            return torch.full((len(xb), 1), 0.25)

    data = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    means = evaluate(Constant(), data, t.criterion(), t.metric_fn()).means(t.metric_scale)
    assert math.isclose(means["mae"], (50 + 50 + 150) / 3, rel_tol=1e-6)  # target units
    assert math.isclose(means["mse"], (50**2 + 50**2 + 150**2) / 3, rel_tol=1e-6)
    bounded = evaluate(Constant(), data, t.criterion(), t.metric_fn(), loss_bound=t.loss_bound)
    assert max(bounded.metrics.values()) <= len(data)  # each example's value within [0, 1]


def test_classification_task_from_the_run_config(tmp_path: Path) -> None:
    path = csv_file(tmp_path, [HEADER, *ROWS])
    cfg = {"tabular-features": "age:0..120,bmi:10..60,sex:f|m",
           "tabular-label": "outcome:low|mid|high", "tabular-hidden": 8, "val-fraction": 0.0}
    ctx = TaskContext(cfg, {"data-path": str(path)}, 42, tmp_path)
    t = task(ctx)
    assert (t.kind, t.headline) == ("classification", "accuracy")
    assert t.data_schema(ctx) == TensorSchema((4,), num_classes=3)
    model = t.build_model(ctx)
    assert model(torch.zeros(2, 4)).shape == (2, 3)
    data = t.node_data(ctx)
    assert len(data.train) == 3 and data.val is None


# --- where a node's rows come from -----------------------------------------------------------
def test_simulation_reads_per_node_files_or_splits_one_file(tmp_path: Path) -> None:
    write(tmp_path / "schema.toml", SCHEMA_TOML)
    for i in range(2):
        csv_file(tmp_path, [HEADER, *ROWS, ROWS[i]], name=f"node-{i}.csv")
    base = {"tabular-schema": "schema.toml", "val-fraction": 0.25}
    node = {"partition-id": 1, "num-partitions": 2}
    own = task(TaskContext(base, node, 42, tmp_path)).node_data(
        TaskContext({**base, "tabular-sim-data": "node-{partition}.csv"}, node, 42, tmp_path))
    assert (len(own.train), len(own.val)) == (3, 1)
    one = {**base, "tabular-sim-data": "node-0.csv", "val-fraction": 0.0}
    parts = [task(TaskContext(one, {"partition-id": i, "num-partitions": 2}, 42, tmp_path))
             .node_data(TaskContext(one, {"partition-id": i, "num-partitions": 2}, 42,
                                    tmp_path)).train for i in range(2)]
    assert sorted(len(p) for p in parts) == [2, 2]  # the file's 4 rows, split IID
    synthetic = task(TaskContext(base, node, 42, tmp_path)).node_data(
        TaskContext(base, node, 42, tmp_path))
    assert len(synthetic.train) + len(synthetic.val) == 120  # generated rows fit the schema
    x, y = synthetic.train[0]
    assert x.shape == (4,) and 0 <= int(y) < 3


def test_server_held_out_file_and_node_without_data(tmp_path: Path) -> None:
    write(tmp_path / "schema.toml", SCHEMA_TOML)
    csv_file(tmp_path, [HEADER, *ROWS], name="server.csv")
    cfg = {"tabular-schema": "schema.toml", "tabular-server-data": "server.csv"}
    ctx = TaskContext(cfg, {}, 42, tmp_path)
    assert len(task(ctx).evaluation_set(ctx)) == 3
    ctx = TaskContext({"tabular-schema": "schema.toml"}, {}, 42, tmp_path)
    assert task(ctx).evaluation_set(ctx) is None  # federated evaluation is the headline
    with pytest.raises(DataError) as exc:
        task(ctx).node_data(ctx)
    assert one_line(exc.value) == ("node config has no data-path; start the node with "
                                   "--data-path FILE")
    with pytest.raises(TaskError) as exc:
        bad = TaskContext({**cfg, "val-fraction": 1.5}, {"data-path": str(tmp_path / "server.csv")},
                          42, tmp_path)
        task(bad).node_data(bad)
    assert one_line(exc.value) == "run config val-fraction=1.5: use a share in [0, 1), e.g. 0.2"


# --- a node's own file: every problem is one line naming the file, the row or column, the fix --
@pytest.mark.parametrize(("lines", "expected"), [
    (["age,sex,outcome", "60,f,low"], "no column 'bmi'; the task's schema needs age, bmi, sex, "
     "outcome"),
    ([HEADER + ",notes", "60,35,f,low,ok"], "column 'notes' is not in the task's schema; drop "
     "it from the file or declare it in the schema"),
    ([HEADER, "60,abc,f,low"], "row 2, column 'bmi' has a non-numeric value 'abc'; encode it "
     "as a number"),
    ([HEADER, "60,35,f,low", "70,,m,mid"], "row 3, column 'bmi' is empty; impute it or drop "
     "the row"),
    ([HEADER, "60,nan,f,low"], "has a non-numeric value 'nan'"),
    ([HEADER, "60,35,f,huge"], "row 2 has label 'huge', not one of low, mid, high; relabel or "
     "extend the schema's classes"),
    ([HEADER, "60,35,x,low"], "row 2, column 'sex' has 'x', not one of f, m; fix the value or "
     "declare the category"),
    ([HEADER], "no data rows; the node needs at least one example"),
    ([HEADER, "60,35,f"], "row 2 has 3 values, the header 4; fix the row"),
])
def test_bad_node_file_is_one_line(tmp_path: Path, schema: TabularSchema, lines: list[str],
                                   expected: str) -> None:
    path = csv_file(tmp_path, lines)
    with pytest.raises(DataError) as exc:
        schema.encode(path)
    msg = one_line(exc.value)
    assert msg.startswith(f"data-path {path}: ") and expected in msg, msg


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("empty.csv", b"", "empty file; add a header row and data rows"),
    ("latin1.csv", "age,bmi,sex,outcome\n60,35,f,h\xf6h\n".encode("latin-1"),
     "cannot read as UTF-8 CSV"),
    ("node.xlsx", b"PK\x03\x04", "unsupported type '.xlsx'; use .csv or .parquet"),
    ("node.parquet", b"not parquet at all", "not a readable Parquet file (ArrowInvalid)"),
])
def test_bad_node_file_type_is_one_line(tmp_path: Path, schema: TabularSchema, name: str,
                                        content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as exc:
        schema.encode(path)
    assert expected in one_line(exc.value)


def test_missing_node_file(tmp_path: Path, schema: TabularSchema) -> None:
    with pytest.raises(DataError) as exc:
        schema.encode(tmp_path / "gone.csv")
    assert one_line(exc.value) == (f"data-path {tmp_path / 'gone.csv'}: file not found; give "
                                   "the node's CSV or Parquet file")


def test_regression_target_must_be_numeric(tmp_path: Path) -> None:
    reg = TabularSchema.from_strings("x:0..1", "y:0..10")
    with pytest.raises(DataError) as exc:
        reg.encode(csv_file(tmp_path, ["x,y", "0.5,high"]))
    assert "row 2, column 'y' has a non-numeric value 'high'" in one_line(exc.value)


# --- Parquet -----------------------------------------------------------------------------------
def _parquet(path: Path, columns: dict[str, list[Any]]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_reads_like_the_same_csv(tmp_path: Path, schema: TabularSchema) -> None:
    path = _parquet(tmp_path / "node.parquet", {
        "outcome": ["low", "high", "mid"], "age": [60, 30, 120],  # any column order, ints
        "bmi": [35.0, 10.0, 60.0], "sex": ["f", "m", "f"]})
    x_pq, y_pq = schema.encode(path)
    x_csv, y_csv = schema.encode(csv_file(tmp_path, [HEADER, *ROWS]))
    np.testing.assert_array_equal(x_pq, x_csv)
    np.testing.assert_array_equal(y_pq, y_csv)


def test_parquet_integer_classes_and_nulls(tmp_path: Path) -> None:
    coded = TabularSchema.from_strings("x:0..1", "grade:1|2|3")
    x, y = coded.encode(_parquet(tmp_path / "a.parquet", {"x": [0.5, 1.0], "grade": [3, 1]}))
    assert y.tolist() == [2, 0]  # integer labels match the declared names "1", "2", "3"
    with pytest.raises(DataError) as exc:
        coded.encode(_parquet(tmp_path / "b.parquet", {"x": [0.5, None], "grade": [1, 2]}))
    assert "row 3, column 'x' is empty; impute it or drop the row" in one_line(exc.value)
