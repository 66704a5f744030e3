"""Split scikit-learn's bundled diabetes data into per-node CSV files and a server held-out file.

    python examples/diabetes-regression/make_data.py examples/diabetes-regression/data --nodes 3

Writes node-<i>.csv and server.csv (.parquet with --format parquet) and each node's manifest
partition-<i>.toml, with the raw (unscaled) measurements a clinic would export. Nothing is
downloaded: scikit-learn ships the 442 rows.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from split_table import parse_args, write_split  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    from sklearn.datasets import load_diabetes

    args = parse_args(__doc__.splitlines()[0], argv)
    data = load_diabetes(scaled=False)
    header = [*data.feature_names, "progression"]
    sex = data.feature_names.index("sex")
    rows = [[int(v) if j == sex else float(v) for j, v in enumerate(x)] + [float(y)]
            for x, y in zip(data.data, data.target, strict=True)]
    write_split(args, header, rows, data.target, HERE / "manifest.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
