"""`fedguard-node`: run a real node, manage its privacy budget and ledger, write its manifest.

    fedguard-node budget set --data-dir ./node-a --source hospital-a/ehr --epsilon 8 --delta 1e-6
    fedguard-node start --superlink HOST:9092 --data-path hospital.csv --data-dir ./node-a \\
        --data-source hospital-a/ehr --manifest manifest.toml \\
        --root-certificates ca.crt --auth-key supernode-1.key
    fedguard-node status --data-dir ./node-a
    fedguard-node stop --data-dir ./node-a

`start` runs the Flower SuperNode and fedguard's warm executor in the foreground and stops both
on SIGTERM, SIGINT or SIGHUP; the SuperNode reconnects by itself when the SuperLink restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from clients.node.supernode import NodeLaunchError, SuperNode, free_port
from privacy.console import OneLineParser, fail
from privacy.files import atomic_write
from privacy.processes import stop_on_signals

PROG = "fedguard-node"
STATE_FILE = "node.json"


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir).expanduser().resolve()


def _ledger(data_dir: Path, create: bool = False) -> Any:
    from clients.training.privacy import LEDGER_FILE
    from privacy.dp.ledger import PrivacyLedger

    path = data_dir / LEDGER_FILE
    if not create and not path.is_file():
        fail(PROG, f"no privacy ledger at {path}; give the node's --data-dir (the one it was "
                   "started with)")
    data_dir.mkdir(parents=True, exist_ok=True)
    return PrivacyLedger(path, create=create)


def _records(path: Path | None) -> int | None:
    """How many records a node file holds (the delta <= 1/n check), if it can tell."""
    if path is None or not path.is_file():
        return None
    try:
        if path.suffix.lower() == ".csv":
            with path.open(encoding="utf-8-sig") as fh:
                return max(sum(1 for line in fh if line.strip()) - 1, 0)
    except (OSError, UnicodeDecodeError):
        return None
    return None


# --- start / stop / status ------------------------------------------------------------------
def _cmd_start(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    node_config: dict[str, object] = {"node-data-dir": str(data_dir)}
    data_path: Path | None = None
    if args.data_path:
        data_path = Path(args.data_path).expanduser().resolve()
        if not data_path.is_file():
            fail(PROG, f"--data-path {data_path}: file not found; give the node's data file")
        node_config["data-path"] = str(data_path)
    elif args.partition_id is not None and args.num_partitions:
        node_config["partition-id"] = args.partition_id
        node_config["num-partitions"] = args.num_partitions
    else:
        fail(PROG, "give --data-path FILE (or, for demos, --partition-id I --num-partitions N)")
    if args.data_source:
        node_config["data-source"] = args.data_source
    if args.manifest:
        manifest = Path(args.manifest).expanduser().resolve()
        if not manifest.is_file():
            fail(PROG, f"--manifest {manifest}: file not found; create one with "
                       "`fedguard-node manifest init`")
        node_config["manifest-path"] = str(manifest)
    elif not args.no_manifest:
        fail(PROG, "this node has no data manifest, so every policy gate will exclude it: "
                   "write one with `fedguard-node manifest init --out manifest.toml` and pass "
                   "--manifest manifest.toml (or --no-manifest to start anyway)")
    if args.budget is not None:
        from clients.training.privacy import data_source

        _set_budget(data_dir, data_source(node_config), args.budget, args.delta,
                    _records(data_path), allow_raise=False)
    root = key = None
    if args.insecure:
        print(f"{PROG}: WARNING: --insecure: traffic to the SuperLink is NOT encrypted and the "
              "node is not authenticated; use only on a trusted test network.", file=sys.stderr)
    else:
        if not args.root_certificates:
            fail(PROG, "TLS is on by default: give --root-certificates CA.crt (from the "
                       "coordinator's `fedguard-server certs`), or --insecure for a local test")
        root = Path(args.root_certificates).expanduser().resolve()
        key = Path(args.auth_key).expanduser().resolve() if args.auth_key else None
        for flag, p in (("--root-certificates", root), ("--auth-key", key)):
            if p is not None and not p.is_file():
                fail(PROG, f"{flag} {p}: file not found")
    node = SuperNode(superlink=args.superlink, node_config=node_config, workdir=data_dir,
                     root_certificates=root, auth_private_key=key,
                     port=args.port or free_port(), warm=not args.cold,
                     flwr_home=data_dir / "flwr-home")
    with stop_on_signals(node.stop):
        try:
            node.start()
        except NodeLaunchError as err:
            fail(PROG, err, code=1)
        atomic_write(data_dir / STATE_FILE, json.dumps(
            {"pid": os.getpid(), "superlink": args.superlink, "port": node.port,
             "node-config": node_config, "log": str(node.log_path)}, indent=2).encode())
        print(f"node started (SuperNode port {node.port}, "
              f"{'warm executor' if node.warm else 'per-message processes'}); "
              f"log {node.log_path}", flush=True)
        try:
            while node.alive():
                if node.ensure_executor():
                    print(f"{PROG}: the executor exited; restarted it", file=sys.stderr)
                time.sleep(0.5)
            print(f"{PROG}: the SuperNode exited; see {node.log_path}", file=sys.stderr)
            return 1
        finally:
            (data_dir / STATE_FILE).unlink(missing_ok=True)


def _state(data_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def _cmd_stop(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    state = _state(data_dir)
    if state is None:
        print(f"no node is running from {data_dir}")
        return 0
    os.kill(int(state["pid"]), signal.SIGTERM)
    for _ in range(200):
        if _state(data_dir) is None:
            print("node stopped")
            return 0
        time.sleep(0.1)
    fail(PROG, f"node (pid {state['pid']}) did not stop within 20 s; kill it", code=1)


def _cmd_status(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    state = _state(data_dir)
    if state is None:
        print(f"node: not running (data dir {data_dir})")
    else:
        print(f"node: running (pid {state['pid']}), SuperLink {state['superlink']}, "
              f"log {state['log']}")
    from clients.training.privacy import LEDGER_FILE

    if not (data_dir / LEDGER_FILE).is_file():
        print("privacy ledger: none yet")
        return 0
    ledger = _ledger(data_dir)
    for source in ledger.sources():
        budget = ledger.budget(source)
        spent = ledger.spent(source) if budget else None
        shown = (f"epsilon {spent:.3f} of {budget.epsilon:g} at delta {budget.delta:g}"
                 if budget else "no budget set")
        print(f"data source {source}: {shown}")
    return 0


# --- budget / ledger / manifest -------------------------------------------------------------
def _set_budget(data_dir: Path, source: str, epsilon: float, delta: float | None,
                records: int | None, allow_raise: bool) -> None:
    from privacy.dp.ledger import LedgerError

    if delta is None:
        fail(PROG, "give the budget's --delta too (e.g. 1e-6; it must stay below 1/records)")
    try:
        budget = _ledger(data_dir, create=True).set_budget(
            source, epsilon, delta, num_records=records, allow_raise=allow_raise,
            note="fedguard-node")
    except LedgerError as err:
        fail(PROG, err)
    print(f"budget for {source}: epsilon {budget.epsilon:g} at delta {budget.delta:g}")


def _cmd_budget_set(args: argparse.Namespace) -> int:
    records = args.records or _records(Path(args.data_path) if args.data_path else None)
    _set_budget(_data_dir(args), args.source, args.epsilon, args.delta, records,
                args.allow_raise)
    return 0


def _cmd_ledger(args: argparse.Namespace) -> int:
    from privacy.dp.ledger import LedgerError, format_ledger

    try:
        print(format_ledger(_ledger(_data_dir(args)), accountant=args.accountant))
    except LedgerError as err:
        fail(PROG, err)
    return 0


def _cmd_manifest_init(args: argparse.Namespace) -> int:
    from privacy.compliance.manifest import manifest_template

    out = Path(args.out)
    if out.exists() and not args.force:
        fail(PROG, f"{out} exists; pass --force to overwrite it")
    atomic_write(out, manifest_template(args.name, records=args.records,
                                        country=args.country).encode("utf-8"))
    print(f"wrote {out}: fill in every commented line, then check it with "
          f"`fedguard-policy check --run-config pyproject.toml --manifest {out}`")
    return 0


def _cmd_manifest_demo(args: argparse.Namespace) -> int:
    """The manifest of the bundled demo datasets (for demo nodes on a bundled partition)."""
    from clients.tasks.bundled import MANIFESTS

    source = MANIFESTS / f"{args.dataset}.toml"
    out = Path(args.out)
    if out.exists() and not args.force:
        fail(PROG, f"{out} exists; pass --force to overwrite it")
    atomic_write(out, source.read_bytes())
    print(f"wrote {out}: the manifest of the bundled {args.dataset} demo data")
    return 0


def build_parser() -> argparse.ArgumentParser:
    home = os.environ.get("FEDGUARD_NODE_HOME", ".fedguard-node")
    p = OneLineParser(prog=PROG, description="Run and inspect a fedguard node.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    s = sub.add_parser("start", help="start this node (SuperNode + warm executor)")
    s.add_argument("--superlink", default="127.0.0.1:9092", help="the SuperLink's address")
    s.add_argument("--data-path", help="the node's own data file (as the run's task reads it)")
    s.add_argument("--partition-id", type=int, help="demo: use this part of a bundled dataset")
    s.add_argument("--num-partitions", type=int, help="demo: number of parts")
    s.add_argument("--data-dir", default=home, help="node's own directory: ledger, logs")
    s.add_argument("--data-source", help="the stable name the privacy budget belongs to "
                   "(default: the data file's path)")
    s.add_argument("--budget", type=float, help="set this source's lifetime epsilon (needs "
                   "--delta); see also `budget set`")
    s.add_argument("--delta", type=float, help="the budget's delta (below 1/records)")
    s.add_argument("--manifest", help="the node's data manifest (TOML)")
    s.add_argument("--no-manifest", action="store_true", help="start without a manifest "
                   "(policy gates will exclude the node)")
    s.add_argument("--port", type=int, default=0, help="local Runtime API port (default: free)")
    s.add_argument("--root-certificates", help="the federation's CA certificate (PEM)")
    s.add_argument("--auth-key", help="this node's private key (node authentication)")
    s.add_argument("--insecure", action="store_true", help="no TLS, no authentication (tests)")
    s.add_argument("--cold", action="store_true", help="one process per message (Flower's "
                   "default) instead of the warm executor")
    s.set_defaults(func=_cmd_start)
    stop = sub.add_parser("stop", help="stop the node started from --data-dir")
    stop.add_argument("--data-dir", default=home)
    stop.set_defaults(func=_cmd_stop)
    st = sub.add_parser("status", help="is the node running; budgets and spend")
    st.add_argument("--data-dir", default=home)
    st.set_defaults(func=_cmd_status)
    bud = sub.add_parser("budget", help="this node's privacy budgets")
    bsub = bud.add_subparsers(dest="budget_command", required=True, parser_class=OneLineParser)
    bs = bsub.add_parser("set", help="set a data source's lifetime (epsilon, delta)")
    bs.add_argument("--data-dir", default=home)
    bs.add_argument("--source", required=True, help="the data source's stable name")
    bs.add_argument("--epsilon", type=float, required=True)
    bs.add_argument("--delta", type=float, required=True)
    bs.add_argument("--records", type=int, help="records in the source (delta must be < 1/n)")
    bs.add_argument("--data-path", help="or the data file, to count its records")
    bs.add_argument("--allow-raise", action="store_true", help="allow a weaker budget")
    bs.set_defaults(func=_cmd_budget_set)
    led = sub.add_parser("ledger", help="print this node's DP releases and spend")
    led.add_argument("--data-dir", default=home, help="the node's directory")
    led.add_argument("--accountant", default="rdp", choices=["rdp", "prv"])
    led.set_defaults(func=_cmd_ledger)
    man = sub.add_parser("manifest", help="data manifests")
    msub = man.add_subparsers(dest="manifest_command", required=True, parser_class=OneLineParser)
    init = msub.add_parser("init", help="write a commented manifest template to fill in")
    init.add_argument("--out", default="manifest.toml", help="where to write it")
    init.add_argument("--name", default="my-dataset", help="dataset name")
    init.add_argument("--records", type=int, help="number of records")
    init.add_argument("--country", help="ISO 3166-1 alpha-2 country where the data is held")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_cmd_manifest_init)
    demo = msub.add_parser("demo", help="write the manifest of a bundled demo dataset")
    demo.add_argument("--dataset", default="digits", choices=["digits", "breast-cancer"])
    demo.add_argument("--out", default="manifest.toml", help="where to write it")
    demo.add_argument("--force", action="store_true", help="overwrite an existing file")
    demo.set_defaults(func=_cmd_manifest_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except OSError as err:
        fail(PROG, f"{err.filename or ''}: {err.strerror or err}", code=1)


if __name__ == "__main__":
    sys.exit(main())
