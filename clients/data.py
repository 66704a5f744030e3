"""Datasets for fedguard nodes: bundled scikit-learn copies, partitioners, and node data files.

Everything here is plain numpy so both the server (held-out test split) and the nodes can use it
without importing Flower. Bundled datasets are read from scikit-learn's own package data, so no
code path downloads anything.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILTIN_DATASETS = ("digits", "breast-cancer")


class DataError(ValueError):
    """A node's data is unusable; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class DatasetSpec:
    """Shape facts the model and every node must agree on."""

    name: str
    num_features: int
    num_classes: int
    image_shape: tuple[int, int, int] | None  # (channels, height, width) when the data are images


@dataclass(frozen=True)
class Split:
    """Features (float32, flattened) and integer labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def dataset_spec(name: str) -> DatasetSpec:
    """Return the shape facts of a bundled dataset."""
    if name == "digits":
        return DatasetSpec("digits", 64, 10, (1, 8, 8))
    if name == "breast-cancer":
        return DatasetSpec("breast-cancer", 30, 2, None)
    raise DataError(
        f"dataset={name!r} is not bundled; use one of {', '.join(BUILTIN_DATASETS)} "
        "or give each node a data-path"
    )


def load_builtin(name: str) -> Split:
    """Load a bundled dataset, scaled to roughly unit range (deterministic, no fitting on test)."""
    dataset_spec(name)  # validates the name
    from sklearn import datasets  # imported lazily: nodes with their own files never need it

    if name == "digits":
        bunch = datasets.load_digits()
        x = bunch.data.astype(np.float32) / 16.0
    else:
        bunch = datasets.load_breast_cancer()
        raw = bunch.data.astype(np.float64)
        # Fixed scaling by the features' global ranges: a public property of the bundled copy.
        lo, hi = raw.min(axis=0), raw.max(axis=0)
        x = ((raw - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)
    return Split(x, bunch.target.astype(np.int64))


def train_test_split(data: Split, test_fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off the server's held-out test set, stratified and fixed for a seed."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test-fraction={test_fraction}: must be between 0 and 1, e.g. 0.2")
    rng = np.random.default_rng(seed)
    test_idx: list[np.ndarray] = []
    for label in np.unique(data.y):
        idx = np.flatnonzero(data.y == label)
        rng.shuffle(idx)
        test_idx.append(idx[: max(1, round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(data)), test)
    return Split(data.x[train], data.y[train]), Split(data.x[test], data.y[test])


def partition_iid(num_examples: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Shuffle and cut into near-equal parts (sizes differ by at most one)."""
    _check_partitions(num_examples, num_partitions)
    perm = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(p) for p in np.array_split(perm, num_partitions)]


def partition_dirichlet(
    labels: np.ndarray, num_partitions: int, alpha: float, seed: int, min_size: int = 2
) -> list[np.ndarray]:
    """Label-skewed parts: each class is spread over nodes by Dirichlet(alpha) proportions.

    Small alpha gives each node few classes (strong non-IID); large alpha approaches IID.
    Resamples until every node has at least `min_size` examples, as is common practice, so no
    node ends up unable to train.
    """
    _check_partitions(len(labels), num_partitions)
    if not alpha > 0:
        raise DataError(f"dirichlet-alpha={alpha}: must be > 0, e.g. 0.5 (smaller = more skew)")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for c in classes:
            idx = np.flatnonzero(labels == c)
            rng.shuffle(idx)
            props = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise DataError(
        f"dirichlet-alpha={alpha} with {num_partitions} nodes leaves some node without data; "
        "raise dirichlet-alpha or use fewer nodes"
    )


def _check_partitions(num_examples: int, num_partitions: int) -> None:
    if num_partitions < 1:
        raise DataError(f"num-partitions={num_partitions}: must be at least 1")
    if num_examples < num_partitions:
        raise DataError(
            f"{num_examples} examples cannot be split over {num_partitions} nodes; use fewer nodes"
        )


def load_node_file(path: str | Path, spec: DatasetSpec, label_column: str = "label") -> Split:
    """Load a node's own CSV or NPZ file and check it fits the run's model.

    CSV: a header row, one numeric column per feature and a `label` column.
    NPZ: arrays `x` (n, features) or images (n, c, h, w) and `y` (n,).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data-path {p}: file not found; set data-path to an existing CSV or NPZ")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        x, y = _read_csv(p, label_column)
    elif suffix == ".npz":
        x, y = _read_npz(p)
    else:
        raise DataError(f"data-path {p}: unsupported type {suffix!r}; use a .csv or .npz file")
    if len(y) == 0:
        raise DataError(f"data-path {p}: no rows; the node needs at least one labelled example")
    x = x.reshape(len(x), -1)
    if x.shape[1] != spec.num_features:
        raise DataError(
            f"data-path {p}: {x.shape[1]} feature columns, but dataset {spec.name!r} needs "
            f"{spec.num_features}; export the same features as the other nodes"
        )
    if not np.isfinite(x).all():
        raise DataError(f"data-path {p}: contains NaN or infinite values; clean or impute them")
    whole = np.isfinite(y).all() and np.abs(y).max() < 2**31 and np.all(np.equal(np.mod(y, 1), 0))
    if not whole:
        raise DataError(f"data-path {p}: labels must be whole numbers 0..{spec.num_classes - 1}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= spec.num_classes)
    if bad.any():
        raise DataError(
            f"data-path {p}: label {int(y[bad][0])} is outside 0..{spec.num_classes - 1} "
            f"for dataset {spec.name!r}; relabel or pick the matching dataset"
        )
    return Split(x.astype(np.float32), y)


def _read_csv(p: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"data-path {p}: cannot read as UTF-8 CSV ({err}); re-export it") from None
    if not rows:
        raise DataError(f"data-path {p}: empty file; add a header row and data rows")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(
            f"data-path {p}: no {label_column!r} column in the header; name the label column "
            f"{label_column!r}"
        )
    li = header.index(label_column)
    feats: list[list[float]] = []
    labels: list[float] = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(
                f"data-path {p}: line {n} has {len(row)} values, header has {len(header)}; "
                "fix the row"
            )
        try:
            vals = [float(c) for c in row]
        except ValueError:
            bad = next(c for c in row if not _is_float(c))
            raise DataError(
                f"data-path {p}: line {n} has a non-numeric value {bad[:30]!r}; "
                "encode every feature as a number"
            ) from None
        labels.append(vals.pop(li))
        feats.append(vals)
    x = np.asarray(feats, dtype=np.float64).reshape(len(feats), len(header) - 1)
    return x, np.asarray(labels, dtype=np.float64)


def _read_npz(p: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(p, allow_pickle=False) as npz:
            if "x" not in npz or "y" not in npz:
                raise DataError(
                    f"data-path {p}: needs arrays 'x' and 'y', found {sorted(npz.files)}; "
                    "save with np.savez(path, x=features, y=labels)"
                )
            x, y = np.asarray(npz["x"]), np.asarray(npz["y"])
    except DataError:
        raise
    except Exception as err:  # zipfile/pickle/format errors all mean "not a usable NPZ"
        raise DataError(f"data-path {p}: not a readable NPZ file ({type(err).__name__})") from None
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise DataError(f"data-path {p}: 'x' and 'y' must be numeric arrays")
    if x.ndim < 1 or y.ndim != 1 or len(x) != len(y):
        raise DataError(
            f"data-path {p}: 'y' must be 1-D with one label per row of 'x' "
            f"(got x {x.shape}, y {y.shape})"
        )
    return x.astype(np.float64), y.astype(np.float64)


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
