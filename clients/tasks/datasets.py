"""Bundled datasets, read from scikit-learn's own package data (nothing is downloaded).

Plain numpy, so the server (its held-out split) and the nodes (their partitions) agree on every
row for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clients.task.contract import TaskError


@dataclass(frozen=True)
class Split:
    """Features (float32, flattened) and integer labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> Split:
        return Split(self.x[idx], self.y[idx])


def load_digits() -> Split:
    """8x8 digit images scaled to [0, 1] (1,797 rows, 10 classes)."""
    from sklearn import datasets  # lazy: nodes with their own files never need it

    bunch = datasets.load_digits()
    return Split(bunch.data.astype(np.float32) / 16.0, bunch.target.astype(np.int64))


def load_breast_cancer() -> Split:
    """30 tabular features min-max scaled by the bundled copy's public ranges (569 rows)."""
    from sklearn import datasets

    bunch = datasets.load_breast_cancer()
    raw = bunch.data.astype(np.float64)
    lo, hi = raw.min(axis=0), raw.max(axis=0)
    x = ((raw - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)
    return Split(x, bunch.target.astype(np.int64))


def train_test_split(data: Split, test_fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off the server's held-out test set, stratified and fixed for a seed."""
    if not 0.0 < test_fraction < 1.0:
        raise TaskError(f"run config test-fraction={test_fraction}: must be between 0 and 1, "
                        "e.g. 0.2")
    rng = np.random.default_rng(seed)
    test_idx: list[np.ndarray] = []
    for label in np.unique(data.y):
        idx = np.flatnonzero(data.y == label)
        rng.shuffle(idx)
        test_idx.append(idx[: max(1, round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(data)), test)
    return data.take(train), data.take(test)
