"""Split one table into per-node files and a server held-out file, for the tabular examples.

Each example's `make_data.py` loads a dataset bundled with scikit-learn (nothing is downloaded)
and calls `write_split`: a seeded, stratified held-out share for the server (server.csv), the
rest dealt to the nodes (node-<i>.csv; .parquet with --format parquet), and each node's data
manifest (partition-<i>.toml: the example's manifest.toml with that node's record count), which
a simulation reads through `manifest-dir`.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from privacy.files import atomic_write

FORMATS = ("csv", "parquet")


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("out", type=Path, help="directory for node-<i>.csv, server.csv and the "
                   "nodes' manifests partition-<i>.toml (created if missing)")
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--server-fraction", type=float, default=0.2,
                   help="share of rows held out for the server's evaluation (default 0.2)")
    p.add_argument("--format", choices=FORMATS, default="csv", help="node file format")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    if args.nodes < 1:
        p.error(f"--nodes {args.nodes}: need at least 1 node")
    if not 0.0 < args.server_fraction < 1.0:
        p.error(f"--server-fraction {args.server_fraction}: use a share between 0 and 1")
    return args


def _strata(target: np.ndarray) -> np.ndarray:
    """Classes for a classification target; quartile bins for a regression target."""
    if np.issubdtype(target.dtype, np.integer) or target.dtype.kind in "OUS":
        return np.unique(target, return_inverse=True)[1]
    return np.searchsorted(np.quantile(target, [0.25, 0.5, 0.75]), target)


def split_rows(target: np.ndarray, nodes: int, server_fraction: float,
               seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row indices of the server's held-out set and of each node (stratified, seeded)."""
    rng = np.random.default_rng(seed)
    server: list[int] = []
    parts: list[list[int]] = [[] for _ in range(nodes)]
    strata = _strata(target)
    for stratum in np.unique(strata):
        idx = np.flatnonzero(strata == stratum)
        rng.shuffle(idx)
        cut = int(round(len(idx) * server_fraction))
        server.extend(idx[:cut].tolist())
        for i, chunk in enumerate(np.array_split(idx[cut:], nodes)):
            parts[(i + stratum) % nodes].extend(chunk.tolist())  # rotate: even node sizes
    if min(len(p) for p in parts) == 0:
        raise SystemExit(f"{len(target)} rows are too few for {nodes} nodes; use fewer nodes")
    return np.sort(server), [np.sort(np.asarray(p)) for p in parts]


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """A CSV (with a header row) or a Parquet file, written atomically."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({h: [r[j] for r in rows] for j, h in enumerate(header)}), sink)
        atomic_write(path, sink.getvalue().to_pybytes())
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buf.getvalue().encode("utf-8"))


def write_split(args: argparse.Namespace, header: list[str], rows: list[list[object]],
                target: np.ndarray, manifest_template: Path) -> list[Path]:
    """Write server.<format>, node-<i>.<format> and partition-<i>.toml under `args.out`."""
    args.out.mkdir(parents=True, exist_ok=True)
    server, parts = split_rows(target, args.nodes, args.server_fraction, args.seed)
    written = [args.out / f"server.{args.format}"]
    _write(written[0], header, [rows[i] for i in server])
    template = manifest_template.read_text(encoding="utf-8")
    for i, part in enumerate(parts):
        data = args.out / f"node-{i}.{args.format}"
        _write(data, header, [rows[j] for j in part])
        manifest = args.out / f"partition-{i}.toml"
        text = re.sub(r"(?m)^records = \d+", f"records = {len(part)}", template)
        atomic_write(manifest, text.encode("utf-8"))
        written += [data, manifest]
    sizes = ", ".join(str(len(p)) for p in parts)
    print(f"wrote {args.nodes} node files ({sizes} rows), {written[0].name} ({len(server)} rows) "
          f"and the nodes' manifests to {args.out}")
    return written
