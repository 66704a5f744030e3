"""Create TLS certificates for the SuperLink and auth keys for SuperNodes.

    python scripts/make_certs.py --out certs --nodes 2 [--san 127.0.0.1 --san localhost]

Writes ca.crt/ca.key, server.pem/server.key (SANs default to 127.0.0.1 and localhost) and
supernode-<i>.key/.pub (EC P-384, OpenSSH format, as `flower-supernode
--auth-supernode-private-key` and `flwr supernode register` expect). Private keys are 0600.
Errors are one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from privacy.transport.certs import DEFAULT_SANS, CertError, write_certificates  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """CLI definition (separate so tests can inspect it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs (default 2)")
    parser.add_argument(
        "--san",
        action="append",
        default=None,
        help="SuperLink address (IP or DNS name); repeat for several "
        f"(default: {' '.join(DEFAULT_SANS)})",
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    sans = args.san if args.san else list(DEFAULT_SANS)
    try:
        files = write_certificates(args.out, args.nodes, sans, args.days, args.force)
    except CertError as exc:
        print(f"make_certs: error: {exc}", file=sys.stderr)
        return 2
    print(f"CA:        {files.ca_cert}")
    print(f"SuperLink: {files.server_cert} / {files.server_key}  (SAN: {', '.join(sans)})")
    for priv, pub in zip(files.node_private_keys, files.node_public_keys, strict=True):
        print(f"SuperNode: {priv} / {pub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
