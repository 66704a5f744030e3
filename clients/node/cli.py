"""`fedguard-node`: start a real node, inspect its privacy ledger, write a data manifest.

    fedguard-node start --superlink 127.0.0.1:9092 --data-path hospital.csv --data-dir ./node-a
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from clients.node.supernode import NodeLaunchError, SuperNode, free_port
from privacy.console import OneLineParser, one_line

PROG = "fedguard-node"


def _cmd_start(args: argparse.Namespace) -> int:
    node_config: dict[str, object] = {}
    if args.data_path:
        path = Path(args.data_path).expanduser().resolve()
        if not path.is_file():
            return _fail(f"--data-path {path}: file not found; give the node's CSV or NPZ file")
        node_config["data-path"] = str(path)
    elif args.partition_id is not None and args.num_partitions:
        node_config["partition-id"] = args.partition_id
        node_config["num-partitions"] = args.num_partitions
    else:
        return _fail("give --data-path FILE (or, for demos, --partition-id I --num-partitions N)")
    data_dir = Path(args.data_dir).expanduser().resolve()
    node_config["node-data-dir"] = str(data_dir)
    if args.budget is not None:
        if args.budget <= 0:
            return _fail(f"--budget {args.budget}: the epsilon budget must be > 0, e.g. 8")
        node_config["privacy-budget"] = float(args.budget)
    if args.manifest:
        manifest = Path(args.manifest).expanduser().resolve()
        if not manifest.is_file():
            return _fail(f"--manifest {manifest}: file not found; create one with "
                         "`fedguard-node manifest init`")
        node_config["manifest-path"] = str(manifest)
    if args.insecure:
        print("WARNING: --insecure: traffic to the SuperLink is NOT encrypted and the node is "
              "not authenticated; use only on a trusted test network.", file=sys.stderr)
        root = key = pub = None
    else:
        if not args.root_certificates:
            return _fail("TLS is on by default: give --root-certificates CA.pem (from "
                         "scripts/make_certs.py), or --insecure for a local test")
        root = Path(args.root_certificates)
        key = Path(args.auth_key) if args.auth_key else None
        pub = Path(args.auth_public_key) if args.auth_public_key else None
        for flag, p in (("--root-certificates", root), ("--auth-key", key),
                        ("--auth-public-key", pub)):
            if p is not None and not p.is_file():
                return _fail(f"{flag} {p}: file not found")
    node = SuperNode(
        superlink=args.superlink,
        node_config=node_config,
        workdir=data_dir,
        root_certificates=root,
        auth_private_key=key,
        auth_public_key=pub,
        port=args.port or free_port(),
    )
    try:
        node.start()
    except NodeLaunchError as err:
        return _fail(str(err))
    print(f"node started (pid {node.proc.pid}, port {node.port}); log {node.log_path}")
    if args.detach:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    try:
        return node.proc.wait()
    except KeyboardInterrupt:
        node.stop()
        return 130


def _cmd_ledger(args: argparse.Namespace) -> int:
    from clients.training.privacy import LEDGER_FILE
    from privacy.dp.ledger import LedgerError, PrivacyLedger, format_ledger

    path = Path(args.data_dir).expanduser() / LEDGER_FILE
    if not path.is_file():
        return _fail(f"no privacy ledger at {path}; give the node's --data-dir (the one it was "
                     "started with)")
    try:
        print(format_ledger(PrivacyLedger(path, create=False), accountant=args.accountant))
    except LedgerError as err:
        return _fail(str(err))
    return 0


def _cmd_manifest_init(args: argparse.Namespace) -> int:
    from privacy.compliance.manifest import manifest_template

    out = Path(args.out)
    if out.exists() and not args.force:
        return _fail(f"{out} exists; pass --force to overwrite it")
    text = manifest_template(args.name, records=args.records, country=args.country)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}: fill in every commented line, then check it with "
          f"`fedguard-policy check --run-config RUN.toml --manifest {out}`")
    return 0


def _fail(msg: str) -> int:
    print(f"{PROG}: error: {one_line(msg)}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Run and inspect a fedguard node.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    s = sub.add_parser("start", help="start a Flower SuperNode for this node's data")
    s.add_argument("--superlink", default="127.0.0.1:9092", help="SuperLink Fleet API address")
    s.add_argument("--data-path", help="the node's own CSV (header + 'label' column) or NPZ (x, y)")
    s.add_argument("--partition-id", type=int, help="demo: use this part of a bundled dataset")
    s.add_argument("--num-partitions", type=int, help="demo: number of parts")
    s.add_argument("--data-dir", default=os.environ.get("FEDGUARD_NODE_HOME", ".fedguard-node"),
                   help="node's own directory: privacy ledger, logs")
    s.add_argument("--budget", type=float, help="privacy budget: total epsilon this node may spend")
    s.add_argument("--manifest", help="the node's data manifest (TOML)")
    s.add_argument("--port", type=int, default=0, help="local ClientApp API port (default: free)")
    s.add_argument("--root-certificates", help="CA certificate (PEM) to verify the SuperLink")
    s.add_argument("--auth-key", help="node private key for SuperNode authentication")
    s.add_argument("--auth-public-key", help="node public key for SuperNode authentication")
    s.add_argument("--insecure", action="store_true", help="no TLS, no authentication (tests)")
    s.add_argument("--detach", action="store_true", help="start and return immediately")
    s.set_defaults(func=_cmd_start)
    led = sub.add_parser("ledger", help="print this node's DP releases and total epsilon")
    led.add_argument("--data-dir", required=True, help="the node's directory")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
