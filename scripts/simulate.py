"""Run a fedguard app in Flower's Simulation Engine with N virtual nodes, showing progress.

    python scripts/simulate.py --nodes 10 --rounds 10 --dataset digits --partition dirichlet
    python scripts/simulate.py --app examples/signal-cnn --nodes 5 --set dp=true --set secagg=true

Starts its own simulation SuperLink (project-local FLWR_HOME, runtime dependency installation
off), submits the app with `flwr run`, follows the run in the run store, asks Flower for the real
final status (`flwr run` exits 0 even when a run fails), stops everything it started (also on
SIGTERM, SIGINT, SIGHUP), and prints a summary table with the run id. Exit code 0 only when the
run completed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from privacy.console import OneLineParser  # noqa: E402
from server.deploy.follow import print_summary  # noqa: E402
from server.deploy.simulation import simulate  # noqa: E402
from server.deploy.superlink import LaunchError, parse_value  # noqa: E402
from server.store import default_data_dir  # noqa: E402

console = Console()
BUNDLED = {"digits": "clients.tasks.digits:task",
           "breast-cancer": "clients.tasks.breast_cancer:task"}
APP_PATH_KEYS = ("tabular-schema", "tabular-sim-data", "tabular-server-data", "manifest-dir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="simulate.py", description=__doc__.splitlines()[0])
    p.add_argument("--app", type=Path, default=ROOT, help="the Flower app directory (default: "
                   "fedguard's own app with the bundled tasks)")
    p.add_argument("--nodes", type=int, default=10, help="number of virtual nodes")
    p.add_argument("--rounds", type=int, default=None, help="federated rounds")
    p.add_argument("--dataset", default=None, choices=sorted(BUNDLED),
                   help="a bundled task (shorthand for --set task=...)")
    p.add_argument("--model", default=None, help="bundled tasks: mlp | cnn")
    p.add_argument("--partition", default=None, help="bundled tasks: iid | dirichlet")
    p.add_argument("--alpha", type=float, default=None, help="Dirichlet alpha (label skew)")
    p.add_argument("--data-dir", default="", help="run store directory (default $FEDGUARD_HOME "
                   "or ./.fedguard)")
    p.add_argument("--resume", default="", help="continue this run id from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other run-config key, e.g. --set dp=true (repeatable)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before giving up")
    args = p.parse_args(argv)
    if args.nodes < 1:
        p.error(f"--nodes {args.nodes}: need at least 1 node")
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds {args.rounds}: need at least 1 round")
    if not (args.app / "pyproject.toml").is_file():
        p.error(f"--app {args.app}: no pyproject.toml there; give a Flower app directory "
                "(fedguard-new DIR makes one)")
    return args


def build_run_config(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if args.rounds is not None:
        cfg["num-server-rounds"] = args.rounds
    for key, val in (("task", BUNDLED.get(args.dataset or "")), ("model", args.model),
                     ("partition", args.partition), ("dirichlet-alpha", args.alpha)):
        if val:
            cfg[key] = val
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"simulate.py: error: --set {item!r}: use KEY=VALUE, e.g. "
                             "--set lr=0.05")
        cfg[key.strip()] = parse_value(raw.strip())
    for key in APP_PATH_KEYS:  # files named relative to the app: the FAB copy lacks data files
        value = cfg.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            candidate = (args.app / value).resolve()
            if candidate.exists() or "{partition}" in value:
                cfg[key] = str(candidate)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = default_data_dir(args.data_dir)
    try:
        out = simulate(args.app, args.nodes, build_run_config(args, data_dir), data_dir,
                       args.timeout, console, resume=args.resume)
    except LaunchError as err:
        console.print(f"[red]error:[/] {err}")
        return 1
    print_summary(out, console)
    if out.ok:
        console.print(f"[green]completed[/] run id [bold]{out.run_id}[/]; run store "
                      f"{data_dir / 'runs.sqlite'}")
        return 0
    # soft_wrap: the reason and the path stay whole lines (to read, grep and copy)
    console.print(f"[red]run {out.run_id} did not complete[/]: {out.reason()}", soft_wrap=True)
    console.print(f"  full log: {out.log_path}", soft_wrap=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
