"""Read a node's own numeric data file (CSV with a header, or NPZ with arrays `x` and `y`).

Used by the bundled tasks when a real node is started with `--data-path`; any problem is one
line naming the file and the fix. The no-code tabular task has its own, schema-driven reader.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from clients.task.contract import DataError
from clients.tasks.datasets import Split


def read_numeric_file(path: str | Path, num_features: int, num_classes: int,
                      label_column: str = "label", what: str = "the task") -> Split:
    """A node file with `num_features` numeric features and labels 0..num_classes-1."""
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
    if x.shape[1] != num_features:
        raise DataError(f"data-path {p}: {x.shape[1]} feature columns, but {what} needs "
                        f"{num_features}; export the same features as the other nodes")
    if not np.isfinite(x).all():
        raise DataError(f"data-path {p}: contains NaN or infinite values; clean or impute them")
    whole = np.isfinite(y).all() and np.abs(y).max() < 2**31 and np.all(np.equal(np.mod(y, 1), 0))
    if not whole:
        raise DataError(f"data-path {p}: labels must be whole numbers 0..{num_classes - 1}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise DataError(f"data-path {p}: label {int(y[bad][0])} is outside 0..{num_classes - 1} "
                        f"for {what}; relabel or pick the matching task")
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
