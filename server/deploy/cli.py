"""`fedguard-server`: the coordinator's command line for a real federation.

    fedguard-server certs --out certs --nodes 3        # CA, SuperLink certificate, node keys
    fedguard-server start --certs certs                 # SuperLink, TLS + node auth (foreground)
    fedguard-server register certs/supernode-1.pub      # allow a node's key
    fedguard-server nodes                               # registered / connected nodes
    fedguard-server run . --set num-server-rounds=5     # submit, follow, summary; exit 1 on failure
    fedguard-server status                              # runs as the store and Flower see them
    fedguard-server stop RUN_ID

Every subcommand but `start` and `certs` talks to the SuperLink `start` left in `--home`
(default $FEDGUARD_SERVER_HOME, else ./.fedguard-server). `run` submits through
`SuperLink.submit`, which adds the facts only the coordinator knows (TLS, node authentication)
to the run config, so the policy gate judges the deployment as it is; `--insecure` deployments
are recorded as such (and baseline rule P5 blocks them).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from privacy.console import OneLineParser, fail
from privacy.processes import LaunchError, stop_on_signals
from server.deploy.follow import follow, load_outcome, print_summary
from server.deploy.state import ServerState, clear
from server.deploy.superlink import SuperLink, TLSFiles, parse_value
from server.store.records import FAILED, LOST, RUNNING, STOPPED, shown_status
from server.store.store import RunStore, StoreError

PROG = "fedguard-server"
console = Console()


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home).expanduser().resolve()


def _running(args: argparse.Namespace, wait: float = 30.0) -> tuple[ServerState, SuperLink]:
    """The SuperLink `start` runs from --home (waiting briefly: `start &` may still be booting)."""
    deadline = time.monotonic() + wait
    state = ServerState.load(_home(args))
    while state is None and time.monotonic() < deadline:
        time.sleep(0.5)
        state = ServerState.load(_home(args))
    if state is None:
        fail(PROG, f"no SuperLink is running from {_home(args)}; start one with "
                   f"`{PROG} start --certs DIR` (same --home)")
    host, _, port = state.address.rpartition(":")
    tls = TLSFiles(Path(state.ca_cert), Path(), Path()) if state.tls else None
    link = SuperLink(Path(state.flwr_home).parent, tls=tls, supernode_auth=state.node_auth,
                     port=int(port))
    return state, link


# --- certs / start ------------------------------------------------------------------------------
def cmd_certs(args: argparse.Namespace) -> int:
    from privacy.transport.certs import DEFAULT_SANS, CertError, write_certificates

    sans = args.san or list(DEFAULT_SANS)
    try:
        files = write_certificates(Path(args.out), args.nodes, sans, args.days, args.force)
    except CertError as err:
        fail(PROG, err)
    print(f"CA (give to every node): {files.ca_cert}")
    print(f"SuperLink: {files.server_cert} / {files.server_key}  (names: {', '.join(sans)})")
    for priv, pub in zip(files.node_private_keys, files.node_public_keys, strict=True):
        print(f"node key: {priv}  (register {pub})")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    home = _home(args)
    if ServerState.load(home) is not None:
        fail(PROG, f"a SuperLink is already running from {home}; `{PROG} status` shows it")
    tls = None
    if args.insecure:
        print(f"{PROG}: WARNING: --insecure: no TLS and no node authentication; any machine can "
              "join and read updates. Runs record this (policy P5).", file=sys.stderr)
    else:
        if not args.certs:
            fail(PROG, f"TLS is on by default: give --certs DIR (`{PROG} certs --out DIR`), or "
                       "--insecure for a local test")
        d = Path(args.certs).expanduser().resolve()
        tls = TLSFiles(d / "ca.crt", d / "server.pem", d / "server.key")
        for f in (tls.ca_cert, tls.server_cert, tls.server_key):
            if not f.is_file():
                fail(PROG, f"{f} not found; create the certificates with `{PROG} certs --out {d}`")
    link = SuperLink(home / "superlink", tls=tls, supernode_auth=tls is not None,
                     port=args.port, host=args.host)
    with stop_on_signals(link.stop):
        try:
            link.start()
        except LaunchError as err:
            fail(PROG, err, code=1)
        assert link.process is not None and link.process.pid is not None
        ServerState(link.process.pid, link.address, str(link.flwr_home), str(home / "store"),
                    tls is not None, tls is not None,
                    str(tls.ca_cert) if tls else "", os.getpid()).save(home)
        public = args.advertise or (f"{socket.gethostname()}:{args.port}"
                                    if args.host == "0.0.0.0" else link.address)
        print(f"SuperLink running on {args.host}:{args.port} (log {link.log_path})")
        print(f"nodes connect with: fedguard-node start --superlink {public} ...")
        print(f"stop with Ctrl-C or SIGTERM; `{PROG} run APP` submits a run")
        try:
            while link.alive():
                time.sleep(0.5)
            print(f"{PROG}: the SuperLink exited; see {link.log_path}", file=sys.stderr)
            return 1
        finally:
            clear(home)
    return 0


# --- nodes ----------------------------------------------------------------------------------
def cmd_register(args: argparse.Namespace) -> int:
    _, link = _running(args)
    key = Path(args.key)
    if not key.is_file():
        fail(PROG, f"{key}: file not found; give the node's public key (supernode-N.pub)")
    try:
        link.register_node(key)
    except LaunchError as err:
        fail(PROG, err)
    print(f"registered {key}; the node may now connect")
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    _, link = _running(args)
    res = link.flwr("supernode", "list", "fedguard", "--format", "json")
    from server.deploy.superlink import _last_json

    data = _last_json(res.stdout) or {}
    nodes = data.get("nodes") or data.get("supernodes") or []
    table = Table(title="SuperNodes")
    for col in ("node id", "status", "last seen", "public key"):
        table.add_column(col)
    for n in nodes:
        table.add_row(str(n.get("node-id", n.get("node_id", ""))), str(n.get("status", "")),
                      str(n.get("last-seen", n.get("online-at", n.get("last_seen", "")))),
                      str(n.get("owner-name", n.get("public-key", "")))[:40])
    console.print(table)
    if not nodes and res.returncode != 0:
        fail(PROG, (res.stderr or res.stdout).strip().splitlines()[-1:] or "flwr failed", code=1)
    return 0


# --- runs -------------------------------------------------------------------------------------
def _sets(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            fail(PROG, f"--set {item!r}: use KEY=VALUE, e.g. --set num-server-rounds=5")
        out[key.strip()] = parse_value(raw.strip())
    return out


def cmd_run(args: argparse.Namespace) -> int:
    state, link = _running(args)
    app = Path(args.app).expanduser().resolve()
    if not (app / "pyproject.toml").is_file():
        fail(PROG, f"{app}: no pyproject.toml; give a Flower app directory (`fedguard-new DIR`)")
    config = {"data-dir": state.store_dir, **_sets(args.set)}
    store_path = Path(str(config["data-dir"])) / "runs.sqlite"
    try:
        flower_id = link.submit(app, config)
    except LaunchError as err:
        fail(PROG, err, code=1)
    run_id = str(config.get("resume") or flower_id)
    rounds = int(config.get("num-server-rounds", 0) or _app_rounds(app))
    console.print(f"run [bold]{run_id}[/] submitted to {state.address} "
                  f"(TLS {'on' if state.tls else 'OFF'}, node auth "
                  f"{'on' if state.node_auth else 'OFF'}); store {store_path}")
    with stop_on_signals(lambda: None):
        try:
            status = follow(link, store_path, run_id, flower_id, rounds, args.timeout, console)
        except SystemExit:
            console.print(f"[yellow]stopped following; the run goes on. `{PROG} stop {run_id}` "
                          "stops it[/]")
            raise
    if not status.startswith("finished"):
        link.stop_run(flower_id)
        status = f"timed out after {args.timeout:.0f} s ({status})"
    reconcile(store_path, run_id, status)
    out = load_outcome(store_path, run_id, status)
    print_summary(out, console)
    if out.ok:
        console.print(f"[green]completed[/] run id [bold]{run_id}[/]")
        return 0
    why = (out.run or {}).get("error") or status
    console.print(f"[red]run {run_id} {(out.run or {}).get('status', 'failed')}[/]: {why}")
    return 1


def _app_rounds(app: Path) -> int:
    import tomllib

    cfg = tomllib.loads((app / "pyproject.toml").read_text(encoding="utf-8"))
    return int(cfg.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}).get(
        "num-server-rounds", 10))


def reconcile(store_path: Path, run_id: str, flower_status: str) -> str | None:
    """Make the store agree with Flower when a run's ServerApp died without saying so."""
    if not flower_status.startswith("finished") or not store_path.exists():
        return None
    try:
        store = RunStore(store_path)
    except StoreError:
        return None
    try:
        run = store.get_run(run_id)
        if run is None or run["status"] != RUNNING:
            return None
        new = STOPPED if "stopped" in flower_status else FAILED
        store.finish_run(run_id, new, f"the ServerApp ended without recording it (Flower: "
                         f"{flower_status})", only_if_running=True)
        store.add_event(run_id, "run-lost", f"reconciled with Flower: {flower_status}")
        return new
    finally:
        store.close()


def cmd_status(args: argparse.Namespace) -> int:
    state = ServerState.load(_home(args))
    store_dir = Path(state.store_dir) if state else _home(args) / "store"
    print(f"SuperLink: {'running on ' + state.address if state else 'not running'}"
          + (f" (TLS {'on' if state.tls else 'OFF'})" if state else ""))
    path = store_dir / "runs.sqlite"
    if not path.exists():
        print(f"no runs yet (store {path})")
        return 0
    store = RunStore(path, readonly=True)
    runs = store.list_runs()
    store.close()
    link = _running(args)[1] if state else None
    table = Table(title="runs")
    for col in ("run", "status", "rounds", "headline", "error"):
        table.add_column(col)
    for run in runs[: args.limit]:
        shown = shown_status(run, time.time())
        if shown == LOST and link is not None and str(run.get("flower_run_id") or "").isdigit():
            flower = link.run_status(int(run["flower_run_id"]))
            shown = reconcile(path, run["run_id"], flower) or shown
        table.add_row(str(run["run_id"]), shown, f"{run['last_round']}/{run['num_rounds']}",
                      str(run.get("headline") or ""), str(run.get("error") or "")[:60])
    console.print(table)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    state, link = _running(args)
    res = link.flwr("stop", str(args.run), "fedguard", timeout=60)
    store_path = Path(state.store_dir) / "runs.sqlite"
    if res.returncode != 0:
        fail(PROG, f"flwr stop {args.run}: "
                   f"{((res.stderr or res.stdout).strip().splitlines() or ['failed'])[-1]}", code=1)
    if store_path.exists():
        store = RunStore(store_path)
        try:
            if store.finish_run(str(args.run), STOPPED, "stopped by the coordinator",
                                only_if_running=True):
                store.add_event(str(args.run), "run-stopped", "stopped by the coordinator")
        finally:
            store.close()
    print(f"run {args.run} stopped")
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    """Stop the SuperLink `start` runs (and everything it started)."""
    import signal

    state = ServerState.load(_home(args))
    if state is None:
        print(f"no SuperLink is running from {_home(args)}")
        return 0
    start_pid = int(state.start_pid or 0)
    os.kill(start_pid or state.pid, signal.SIGTERM)
    for _ in range(300):
        if not (_home(args) / "superlink.json").exists():
            print("SuperLink stopped")
            return 0
        time.sleep(0.1)
    fail(PROG, "the SuperLink did not stop within 30 s; kill it", code=1)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--home", default=os.environ.get("FEDGUARD_SERVER_HOME", ".fedguard-server"),
                   help="the coordinator's directory: SuperLink state, logs, run store")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    c = sub.add_parser("certs", help="write a CA, the SuperLink certificate and node key pairs")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--nodes", type=int, default=3, help="node key pairs to create")
    c.add_argument("--san", action="append", help="SuperLink DNS name or IP (repeatable)")
    c.add_argument("--days", type=int, default=365, help="validity in days")
    c.add_argument("--force", action="store_true", help="overwrite existing files")
    c.set_defaults(func=cmd_certs)
    s = sub.add_parser("start", help="start the SuperLink (TLS + node auth by default)")
    s.add_argument("--certs", help="directory written by `certs`")
    s.add_argument("--port", type=int, default=9092, help="the SuperLink's API port")
    s.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 for remote nodes)")
    s.add_argument("--advertise", help="the address nodes use, if not host:port")
    s.add_argument("--insecure", action="store_true", help="no TLS, no node auth (local tests)")
    s.set_defaults(func=cmd_start)
    r = sub.add_parser("register", help="allow a node's public key")
    r.add_argument("key", help="the node's public key file (supernode-N.pub)")
    r.set_defaults(func=cmd_register)
    sub.add_parser("nodes", help="registered and connected nodes").set_defaults(func=cmd_nodes)
    run = sub.add_parser("run", help="submit a run, follow it, summarise; exit 1 unless it "
                         "completed")
    run.add_argument("app", help="the Flower app directory (e.g. . or an app from fedguard-new)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a run-config value (repeatable)")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the end")
    run.set_defaults(func=cmd_run)
    st = sub.add_parser("status", help="the SuperLink and recent runs")
    st.add_argument("--limit", type=int, default=10, help="how many runs")
    st.set_defaults(func=cmd_status)
    sub.add_parser("shutdown", help="stop the SuperLink").set_defaults(func=cmd_shutdown)
    stop = sub.add_parser("stop", help="stop a run")
    stop.add_argument("run", help="the run id")
    stop.set_defaults(func=cmd_stop)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (StoreError, LaunchError, OSError) as err:
        fail(PROG, err, code=1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "reconcile"]
