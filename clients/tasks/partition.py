"""Split one dataset over virtual nodes for simulations: IID or label-skewed (Dirichlet).

Seeded, so every process of a simulation computes the same partition for a node id.
"""

from __future__ import annotations

import numpy as np

from clients.task.contract import DataError

PARTITIONS = ("iid", "dirichlet")


def partition_iid(num_examples: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Shuffle and cut into near-equal parts (sizes differ by at most one)."""
    _check(num_examples, num_partitions)
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
    _check(len(labels), num_partitions)
    if not alpha > 0:
        raise DataError(f"run config dirichlet-alpha={alpha}: must be > 0, e.g. 0.5 (smaller = "
                        "more skew)")
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
    raise DataError(f"run config dirichlet-alpha={alpha} with {num_partitions} nodes leaves some "
                    "node without data; raise dirichlet-alpha or use fewer nodes")


def partition(labels: np.ndarray, num_partitions: int, how: str, alpha: float,
              seed: int) -> list[np.ndarray]:
    if how == "iid":
        return partition_iid(len(labels), num_partitions, seed)
    if how == "dirichlet":
        return partition_dirichlet(labels, num_partitions, alpha, seed)
    raise DataError(f"run config partition={how!r}: use 'iid' or 'dirichlet'")


def _check(num_examples: int, num_partitions: int) -> None:
    if num_partitions < 1:
        raise DataError(f"num-partitions={num_partitions}: must be at least 1")
    if num_examples < num_partitions:
        raise DataError(f"{num_examples} examples cannot be split over {num_partitions} nodes; "
                        "use fewer nodes")
