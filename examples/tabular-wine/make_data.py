"""Split scikit-learn's bundled wine data into per-node CSV files and a server held-out file.

    python examples/tabular-wine/make_data.py examples/tabular-wine/data --nodes 3

Writes node-<i>.csv and server.csv (.parquet with --format parquet) and each node's manifest
partition-<i>.toml. Nothing is downloaded: scikit-learn ships the 178 rows.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from split_table import parse_args, write_split  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    from sklearn.datasets import load_wine

    args = parse_args(__doc__.splitlines()[0], argv)
    wine = load_wine()
    header = [*wine.feature_names, "cultivar"]
    rows = [[*map(float, x), str(wine.target_names[y])]
            for x, y in zip(wine.data, wine.target, strict=True)]
    write_split(args, header, rows, wine.target, HERE / "manifest.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
