"""Start a deployment SuperLink for real fedguard nodes (the coordinator's side).

    python scripts/superlink.py --certs certs/          # TLS + SuperNode authentication
    python scripts/superlink.py --insecure              # local testing only

Prints the address nodes connect to (`fedguard-node start --superlink ADDRESS`) and the `flwr`
connection to submit runs with, then runs until Ctrl-C and stops everything it started.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.deploy.superlink import LaunchError, SuperLink, TLSFiles  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=".fedguard/superlink", help="state, logs and FLWR_HOME")
    p.add_argument("--port", type=int, default=9092, help="the SuperLink's single API port")
    p.add_argument("--certs", help="directory written by scripts/make_certs.py")
    p.add_argument("--insecure", action="store_true", help="no TLS and no node authentication")
    args = p.parse_args(argv)
    tls = None
    if args.insecure:
        print("WARNING: --insecure: no TLS, any node may connect; record this run as insecure.",
              file=sys.stderr)
    else:
        if not args.certs:
            print("error: TLS is on by default: give --certs DIR (python scripts/make_certs.py "
                  "--out DIR) or --insecure", file=sys.stderr)
            return 2
        d = Path(args.certs)
        tls = TLSFiles(d / "ca.crt", d / "server.pem", d / "server.key")
        for f in (tls.ca_cert, tls.server_cert, tls.server_key):
            if not f.is_file():
                print(f"error: {f} not found; create it with scripts/make_certs.py --out {d}",
                      file=sys.stderr)
                return 2
    sl = SuperLink(Path(args.workdir).resolve(), tls=tls, supernode_auth=tls is not None,
                   port=args.port)
    try:
        sl.start()
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"SuperLink on {sl.address} (log {sl.log_path})")
    print(f"nodes: fedguard-node start --superlink {sl.address} ...")
    print(f"runs:  FLWR_HOME={sl.flwr_home} flwr run . fedguard")
    try:
        while sl.proc is not None and sl.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        sl.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
