"""The no-code tabular task: nodes hold CSV or Parquet files; the schema is declared once.

Declare the schema in a TOML file (`tabular-schema = "schema.toml"`, shipped in the app) or in
the run config (`tabular-features = "age:0..120,bmi:10..60,sex:f|m"`,
`tabular-label = "outcome:low|mid|high"` or `"target:0..350"` for regression). Each node checks
its own file against it, with one line naming the file, the row or column and the fix.

Scaling needs no statistic of anyone's data: numeric features and a regression target are
mapped to [0, 1] by their *declared* ranges (values outside are clipped to the range), and
categories are one-hot encoded from the declared list. Nothing computed from a node's rows
(means, extremes) ever leaves it.

Schema file:

    [label]
    name = "outcome"
    classes = ["low", "mid", "high"]   # or: range = [0.0, 350.0] for regression

    [[feature]]
    name = "age"
    range = [0, 120]

    [[feature]]
    name = "sex"
    categories = ["f", "m"]
"""

from __future__ import annotations

import csv
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from clients.task.contract import DataError, NodeData, Task, TaskContext, TaskError, TensorSchema
from clients.tasks.models import MLP
from clients.tasks.partition import partition_iid

SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Feature:
    """A numeric column with its declared range, or a categorical one with its categories."""

    name: str
    lo: float = 0.0
    hi: float = 1.0
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return len(self.categories) or 1


@dataclass(frozen=True)
class Label:
    """The label column: class names (classification) or a declared range (regression)."""

    name: str
    classes: tuple[str, ...] = ()
    lo: float = 0.0
    hi: float = 1.0

    @property
    def kind(self) -> str:
        return "classification" if self.classes else "regression"


def _range(where: str, raw: Any) -> tuple[float, float]:
    ok = (isinstance(raw, list | tuple) and len(raw) == 2
          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw))
    if not ok or not (math.isfinite(raw[0]) and math.isfinite(raw[1]) and raw[0] < raw[1]):
        raise TaskError(f"{where}: range must be [low, high] with low < high, e.g. [0, 120]")
    return float(raw[0]), float(raw[1])


def _names(where: str, raw: Any) -> tuple[str, ...]:
    if (not isinstance(raw, list | tuple) or len(raw) < 2
            or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in raw)):
        raise TaskError(f"{where}: give at least two values, e.g. [\"f\", \"m\"]")
    names = tuple(str(v).strip() for v in raw)
    if len(set(names)) != len(names):
        raise TaskError(f"{where}: values must be distinct, got {list(names)}")
    return names


@dataclass(frozen=True)
class TabularSchema:
    """Feature columns (in order), the label, and how they become tensors."""

    features: tuple[Feature, ...]
    label: Label

    def __post_init__(self) -> None:
        if not self.features:
            raise TaskError("tabular schema: declare at least one feature")
        names = [f.name for f in self.features] + [self.label.name]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise TaskError(f"tabular schema: column {dup[0]!r} is declared twice")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, where: str = "tabular schema") -> TabularSchema:
        if not isinstance(data, dict):
            raise TaskError(f"{where}: expected a table with [label] and [[feature]] entries")
        raw_label, raw_features = data.get("label"), data.get("feature")
        if not isinstance(raw_label, dict) or not isinstance(raw_label.get("name"), str):
            raise TaskError(f"{where}: [label] needs name = \"column\" and classes = [...] or "
                            "range = [low, high]")
        if not isinstance(raw_features, list) or not raw_features:
            raise TaskError(f"{where}: add [[feature]] entries with name and range or "
                            "categories")
        if "classes" in raw_label:
            label = Label(raw_label["name"], classes=_names(f"{where} [label].classes",
                                                            raw_label["classes"]))
        elif "range" in raw_label:
            lo, hi = _range(f"{where} [label].range", raw_label["range"])
            label = Label(raw_label["name"], lo=lo, hi=hi)
        else:
            raise TaskError(f"{where}: [label] needs classes = [...] (classification) or "
                            "range = [low, high] (regression)")
        features = []
        for i, raw in enumerate(raw_features, start=1):
            at = f"{where} feature {i}"
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise TaskError(f"{at}: needs name = \"column\"")
            if "categories" in raw:
                features.append(Feature(raw["name"],
                                        categories=_names(f"{at}.categories", raw["categories"])))
            elif "range" in raw:
                features.append(Feature(raw["name"], *_range(f"{at}.range", raw["range"])))
            else:
                raise TaskError(f"{at} ({raw['name']}): give range = [low, high] or categories "
                                "= [...]; ranges are declared so no node's statistics are needed")
        return cls(tuple(features), label)

    @classmethod
    def from_file(cls, path: str | Path) -> TabularSchema:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TaskError(f"tabular schema {p}: file not found; set tabular-schema to the "
                            "schema file in the app directory") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise TaskError(f"tabular schema {p}: not valid TOML ({err})") from None
        return cls.from_dict(data, where=f"tabular schema {p.name}")

    @classmethod
    def from_strings(cls, features: str, label: str) -> TabularSchema:
        """`"age:0..120,sex:f|m"` and `"outcome:low|mid|high"` or `"y:0..350"`."""
        def spec(item: str, where: str) -> dict[str, Any]:
            name, sep, rest = item.strip().partition(":")
            if not sep or not name.strip() or not rest.strip():
                raise TaskError(f"{where}={item!r}: use name:low..high or name:a|b|c")
            if ".." in rest:
                lo, _, hi = rest.partition("..")
                try:
                    return {"name": name.strip(), "range": [float(lo), float(hi)]}
                except ValueError:
                    raise TaskError(f"{where}={item!r}: range bounds must be numbers") from None
            return {"name": name.strip(), "categories": rest.split("|")}

        lab = spec(label, "run config tabular-label")
        if "categories" in lab:
            lab["classes"] = lab.pop("categories")
        feats = [spec(f, "run config tabular-features") for f in features.split(",") if f.strip()]
        return cls.from_dict({"label": lab, "feature": feats}, where="run config tabular schema")

    # --- what the task needs ------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.label.kind

    @property
    def width(self) -> int:
        return sum(f.width for f in self.features)

    @property
    def outputs(self) -> int:
        return len(self.label.classes) or 1

    @property
    def tensor_schema(self) -> TensorSchema:
        if self.kind == "classification":
            return TensorSchema((self.width,), num_classes=len(self.label.classes))
        return TensorSchema((self.width,), target_shape=())

    def encode(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """Read and check a node's file; features in [0, 1] (float32) and targets."""
        p = Path(path)
        header, rows = read_table(p)
        expected = [f.name for f in self.features] + [self.label.name]
        missing = [c for c in expected if c not in header]
        if missing:
            raise DataError(f"data-path {p}: no column {missing[0]!r}; the task's schema needs "
                            f"{', '.join(expected)}")
        extra = [c for c in header if c not in expected]
        if extra:
            raise DataError(f"data-path {p}: column {extra[0]!r} is not in the task's schema; "
                            "drop it from the file or declare it in the schema")
        if not rows:
            raise DataError(f"data-path {p}: no data rows; the node needs at least one example")
        idx = {name: header.index(name) for name in expected}
        x = np.zeros((len(rows), self.width), dtype=np.float32)
        col = 0
        for feat in self.features:
            j = idx[feat.name]
            for r, row in enumerate(rows):
                x[r, col:col + feat.width] = _encode(feat, row[j], p, r + 2)
            col += feat.width
        j = idx[self.label.name]
        lab = self.label
        if lab.classes:
            y = np.empty(len(rows), dtype=np.int64)
            for r, row in enumerate(rows):
                value = _text(row[j])
                if value not in lab.classes:
                    raise DataError(f"data-path {p}: row {r + 2} has label {value[:30]!r}, not "
                                    f"one of {', '.join(lab.classes)}; relabel or extend the "
                                    "schema's classes")
                y[r] = lab.classes.index(value)
        else:
            y = np.empty(len(rows), dtype=np.float32)
            for r, row in enumerate(rows):
                v = _number(row[j], p, r + 2, lab.name)
                y[r] = (min(max(v, lab.lo), lab.hi) - lab.lo) / (lab.hi - lab.lo)
        return x, y

    def node_data(self, path: str | Path, val_fraction: float, seed: int) -> NodeData:
        """A node's file, split into training and validation rows (seeded)."""
        x, y = self.encode(path)
        return split_rows(x, y, val_fraction, seed)

    def synthetic(self, partition_id: int, num_partitions: int, seed: int,
                  rows: int = 120) -> NodeData:
        """Generated rows that fit the schema, for simulations without files (a smoke test
        of the pipeline, not a benchmark): the label depends on the features."""
        rng = np.random.default_rng([seed, partition_id, num_partitions])
        x = rng.random((rows, self.width), dtype=np.float32)
        w = np.random.default_rng(seed).standard_normal((self.width, self.outputs))
        score = x @ w
        if self.kind == "classification":
            y = score.argmax(1).astype(np.int64)
        else:
            y = (1 / (1 + np.exp(-score[:, 0]))).astype(np.float32)
        return split_rows(x, y, 0.2, seed)


def split_rows(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> NodeData:
    if not 0 <= val_fraction < 1:
        raise TaskError(f"run config val-fraction={val_fraction}: use a share in [0, 1), e.g. "
                        "0.2")
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = int(round(len(y) * val_fraction)) if len(y) > 1 else 0
    val, train = order[:n_val], order[n_val:]

    def ds(i: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(x[i]), torch.from_numpy(y[i]))

    return NodeData(train=ds(np.sort(train)), val=ds(np.sort(val)) if n_val else None)


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _number(value: Any, p: Path, row: int, column: str) -> float:
    if isinstance(value, bool):
        value = int(value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"data-path {p}: row {row}, column {column!r} is empty; impute it or "
                        "drop the row")
    if not math.isfinite(out):
        raise DataError(f"data-path {p}: row {row}, column {column!r} has a non-numeric value "
                        f"{str(value)[:30]!r}; encode it as a number")
    return out


def _encode(feat: Feature, value: Any, p: Path, row: int) -> np.ndarray:
    if feat.categories:
        text = _text(value)
        if text not in feat.categories:
            raise DataError(f"data-path {p}: row {row}, column {feat.name!r} has {text[:30]!r}, "
                            f"not one of {', '.join(feat.categories)}; fix the value or declare "
                            "the category")
        out = np.zeros(feat.width, dtype=np.float32)
        out[feat.categories.index(text)] = 1.0
        return out
    v = _number(value, p, row, feat.name)
    return np.array([(min(max(v, feat.lo), feat.hi) - feat.lo) / (feat.hi - feat.lo)],
                    dtype=np.float32)


def read_table(p: Path) -> tuple[list[str], list[Sequence[Any]]]:
    """Header and rows of a CSV (UTF-8, with a header row) or a Parquet file."""
    if not p.is_file():
        raise DataError(f"data-path {p}: file not found; give the node's CSV or Parquet file")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"data-path {p}: unsupported type {suffix!r}; use .csv or .parquet")
    if suffix == ".csv":
        try:
            with p.open(newline="", encoding="utf-8-sig") as fh:
                rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"data-path {p}: cannot read as UTF-8 CSV ({err}); re-export "
                            "it") from None
        if not rows:
            raise DataError(f"data-path {p}: empty file; add a header row and data rows")
        header = [h.strip() for h in rows[0]]
        for n, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise DataError(f"data-path {p}: row {n} has {len(row)} values, the header "
                                f"{len(header)}; fix the row")
        return header, rows[1:]
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(p)
    except Exception as err:  # pyarrow raises many types for a bad file
        raise DataError(f"data-path {p}: not a readable Parquet file "
                        f"({type(err).__name__})") from None
    header = [str(c) for c in table.column_names]
    cols = [table.column(c).to_pylist() for c in table.column_names]
    return header, [list(r) for r in zip(*cols, strict=True)]


# --- the no-code task -----------------------------------------------------------------------
@lru_cache(maxsize=8)
def _schema_from(path: str, features: str, label: str) -> TabularSchema:
    if path:
        return TabularSchema.from_file(path)
    if features and label:
        return TabularSchema.from_strings(features, label)
    raise TaskError("the tabular task needs a schema: set tabular-schema = \"schema.toml\" (in "
                    "the app) or tabular-features and tabular-label in the run config")


def schema_of(ctx: TaskContext) -> TabularSchema:
    path = ctx.get("tabular-schema", "")
    return _schema_from(str(ctx.resolve(path)) if path else "", ctx.get("tabular-features", ""),
                        ctx.get("tabular-label", ""))


class _FlatMSE(nn.MSELoss):
    """MSE between a (batch, 1) output and (batch,) targets, without broadcasting."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return super().forward(input.reshape(target.shape), target)


def _model(ctx: TaskContext) -> nn.Module:
    schema = schema_of(ctx)
    return MLP(schema.width, schema.outputs, hidden=ctx.get("tabular-hidden", 64))


def _load(ctx: TaskContext) -> NodeData:
    schema = schema_of(ctx)
    val = ctx.get("val-fraction", 0.2)
    if ctx.data_path is not None:
        return schema.node_data(ctx.data_path, val, ctx.seed)
    pid, parts = ctx.partition_id, ctx.num_partitions
    if pid is None or not parts:
        raise DataError("node config has no data-path; start the node with --data-path FILE")
    sim = ctx.get("tabular-sim-data", "")
    if not sim:
        return schema.synthetic(pid, parts, ctx.seed)
    if "{partition}" in sim:
        return schema.node_data(ctx.resolve(sim.format(partition=pid)), val, ctx.seed)
    x, y = schema.encode(ctx.resolve(sim))
    rows = partition_iid(len(y), parts, ctx.seed)[pid]
    return split_rows(x[rows], y[rows], val, ctx.seed)


def _server(ctx: TaskContext) -> TensorDataset | None:
    path = ctx.get("tabular-server-data", "")
    if not path:
        return None
    x, y = schema_of(ctx).encode(ctx.resolve(path))
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def task(ctx: TaskContext) -> Task:
    """The no-code task for this run: its kind, loss and metrics follow the declared label."""
    schema = schema_of(ctx)
    if schema.kind == "classification":
        return Task(model=_model, load_data=_load, server_data=_server,
                    schema=schema.tensor_schema, name="tabular")
    span = schema.label.hi - schema.label.lo

    def metrics(out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        err = out.reshape(y.shape) - y
        return {"mse": err.pow(2), "mae": err.abs()}

    return Task(model=_model, load_data=_load, server_data=_server, kind="regression",
                loss=_FlatMSE(), metrics=metrics, schema=schema.tensor_schema,
                primary_metric="mae", loss_bound=1.0,
                metric_scale={"mse": span**2, "mae": span}, name="tabular")
