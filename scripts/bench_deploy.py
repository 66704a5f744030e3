"""Seconds per round on 3 real nodes: stock Flower FedAvg vs fedguard's full pipeline, one run.

    python scripts/bench_deploy.py --rounds 6

Both sides run on real `flower-superlink` / `flower-supernode` processes on this machine with the
same three nodes' data (parts of the bundled digits data), model and local training:
- stock: a bare Flower FedAvg app (train + evaluate exchanges, no privacy), insecure SuperLink,
  SuperNodes with Flower's default per-message ClientApp processes;
- fedguard: TLS + node authentication, DP-SGD (epsilon 8), pipelined secure aggregation and
  federated evaluation, SuperNodes with fedguard's warm executor.
A round's time is the gap between the ends of consecutive rounds (round 1, with start-up and
the admission check, is left out). Prints the medians and the ratio fedguard / stock.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.node.supernode import SuperNode, stop_supernodes  # noqa: E402
from privacy.console import OneLineParser  # noqa: E402
from privacy.dp.ledger import PrivacyLedger  # noqa: E402
from privacy.processes import stop_on_signals  # noqa: E402
from privacy.transport.certs import write_certificates  # noqa: E402
from server.deploy.superlink import SuperLink, TLSFiles  # noqa: E402
from server.store import RunStore  # noqa: E402

console = Console()
NODES = 3


def gaps(ends: list[float]) -> list[float]:
    """Per-round seconds from consecutive round-end times, round 1 left out."""
    return [b - a for a, b in zip(ends[1:], ends[2:], strict=False)]


def _nodes(address: str, work: Path, warm: bool, certs: Path | None) -> list[SuperNode]:
    out = []
    for i in range(NODES):
        cfg = {"partition-id": i, "num-partitions": NODES}
        node_dir = work / f"node-{i}"
        if warm:
            cfg.update({"node-data-dir": str(node_dir), "data-source": f"bench/part-{i}",
                        "manifest-path": str(ROOT / "clients/tasks/manifests/digits.toml")})
            ledger = PrivacyLedger(node_dir / "privacy-ledger.sqlite")
            ledger.set_budget(f"bench/part-{i}", 1000.0, 1e-5, allow_raise=True)
        out.append(SuperNode(address, cfg, node_dir, warm=warm,
                             root_certificates=certs / "ca.crt" if certs else None,
                             auth_private_key=certs / f"supernode-{i + 1}.key" if certs
                             else None, flwr_home=node_dir / "flwr-home").start())
    return out


def run_stock(work: Path, rounds: int) -> list[float]:
    timing = work / "timing.json"
    with SuperLink(work / "superlink") as link:
        nodes = _nodes(link.address, work, warm=False, certs=None)
        with stop_on_signals(lambda: stop_supernodes(nodes)):
            rid = link.submit(ROOT / "scripts" / "bare_flower_app",
                              {"num-server-rounds": rounds, "timing-file": str(timing)})
            status = link.wait_finished(rid, 1800, ended=timing.exists)
    if not status.startswith("finished") or not timing.exists():
        raise SystemExit(f"stock Flower run ended {status}; see {work}")
    return gaps(json.loads(timing.read_text()))  # stamps[0] is the initial evaluation


def run_fedguard(work: Path, rounds: int) -> list[float]:
    certs = work / "certs"
    write_certificates(certs, NODES, ["127.0.0.1", "localhost"], 30, False)
    tls = TLSFiles(certs / "ca.crt", certs / "server.pem", certs / "server.key")
    store_dir = work / "store"
    with SuperLink(work / "superlink", tls=tls, supernode_auth=True) as link:
        for i in range(NODES):
            link.register_node(certs / f"supernode-{i + 1}.pub")
        nodes = _nodes(link.address, work, warm=True, certs=certs)
        with stop_on_signals(lambda: stop_supernodes(nodes)):
            config = {"num-server-rounds": rounds, "data-dir": str(store_dir), "dp": True,
                      "dp-epsilon": 8.0, "secagg": True, "federated-evaluation": True,
                      "dp-eval": "every"}
            rid = link.submit(ROOT, config)
            path = store_dir / "runs.sqlite"

            def ended() -> bool:
                if not path.exists():
                    return False
                store = RunStore(path, readonly=True)
                run = store.get_run(str(rid))
                store.close()
                return run is not None and run["status"] != "running"

            status = link.wait_finished(rid, 1800, ended=ended)
    store = RunStore(store_dir / "runs.sqlite", readonly=True)
    run, rows = store.get_run(str(rid)), store.rounds(str(rid))
    store.close()
    if run is None or run["status"] != "completed":
        raise SystemExit(f"fedguard run ended {status} / {run and run['status']}: "
                         f"{run and run['error']}; see {work}")
    return gaps([rows[0]["started_at"], *[r["ended_at"] for r in rows]])


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="bench_deploy.py", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--work", default="", help="keep logs here (default: a temp directory)")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
    if args.rounds < 3:
        p.error("--rounds must be at least 3 (round 1 is left out)")
    base = Path(args.work or tempfile.mkdtemp(prefix="fedguard-bench-deploy-"))
    results = {}
    for name, fn in (("stock Flower FedAvg (no privacy)", run_stock),
                     ("fedguard: TLS + auth + DP + secagg + evaluation", run_fedguard)):
        start = time.monotonic()
        console.print(f"running {name} ...")
        results[name] = fn(base / name.split()[0].strip(":"), args.rounds)
        console.print(f"  done in {time.monotonic() - start:.0f} s")
    table = Table(title=f"seconds per round, {NODES} real nodes, rounds 2..{args.rounds}")
    for col in ("app", "median", "min", "max"):
        table.add_column(col, justify="right")
    medians = {}
    for name, g in results.items():
        medians[name] = statistics.median(g)
        table.add_row(name, f"{medians[name]:.2f}", f"{min(g):.2f}", f"{max(g):.2f}")
    console.print(table)
    stock, ours = medians.values()
    console.print(f"ratio fedguard / stock: [bold]{ours / stock:.2f}[/] (goal <= 1.0, and fedguard "
                  f"<= 10 s a round: {'met' if ours <= 10 and ours <= stock else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"gaps": results, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
