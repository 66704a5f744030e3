"""``fedguard-policy``: check a run against policy packs, list rules, verify audit logs and
provenance records.

Exit codes: 0 ok, 1 a check failed (a failing rule, a broken audit chain, a bad record),
2 bad input (one line on stderr, never a traceback), 3 an internal error (also one line).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

from privacy.compliance.audit import AuditError, AuditLog
from privacy.compliance.manifest import Manifest, ManifestError, load_manifest
from privacy.compliance.policy import (
    DEFAULT_PACKS,
    PolicyError,
    RunFacts,
    audit_verdicts,
    evaluate,
    load_packs,
    load_run_config,
    parse_param_overrides,
)
from privacy.compliance.provenance import ProvenanceError, load_record, verify_record
from privacy.compliance.signing import (
    PUBLIC_KEY_FILENAME,
    SigningError,
    parse_public_key,
    read_public_key,
)
from privacy.console import one_line
from privacy.files import atomic_write

PROG = "fedguard-policy"
_INPUT_ERRORS = (ManifestError, PolicyError, ProvenanceError, AuditError, SigningError)


class UsageError(Exception):
    """Bad command-line usage; reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(one_line(f"{message} (see {self.prog} --help)"))


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="fedguard policy checks and verification")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="evaluate a run config and manifests against packs")
    check.add_argument("--run-config", required=True, type=Path, help="TOML of run config keys")
    check.add_argument(
        "--manifest", action="append", required=True, metavar="[NODE=]FILE",
        help="a node's manifest (repeat); node name defaults to the file stem",
    )
    _pack_args(check)
    check.add_argument("--param", action="append", default=[], metavar="PACK.NAME=VALUE",
                       help="override a pack threshold, e.g. baseline.max-epsilon=5")
    check.add_argument("--lang", choices=("en", "zh"), default="en")
    check.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    check.add_argument("--out", type=Path, help="write the report here instead of stdout")
    check.add_argument("--today", help="evaluation date YYYY-MM-DD (default: today, UTC)")
    check.add_argument("--audit-log", type=Path, help="also append every verdict to this log")
    check.add_argument("--mode", choices=("deployment", "simulation"), default="deployment",
                       help="judge the run as a real deployment (default) or a simulation")

    lister = sub.add_parser("list-rules", help="list the rules of the selected packs")
    _pack_args(lister)
    lister.add_argument("--lang", choices=("en", "zh"), default="en")

    audit = sub.add_parser("verify-audit", help="verify a hash-chained audit log and its "
                           "signed head")
    audit.add_argument("log", type=Path)
    pin = audit.add_mutually_exclusive_group()
    _key_arg(pin.add_argument, "head")
    pin.add_argument("--unsigned", action="store_true",
                     help="the log was written without a key (check --audit-log): check only "
                     "that it is intact, which does not show who wrote it")

    prov = sub.add_parser("verify-provenance", help="verify a signed provenance record")
    prov.add_argument("record", type=Path)
    prov.add_argument("--model", type=Path, help="model file whose SHA-256 must match")
    _key_arg(prov.add_argument, "record")
    prov.add_argument("--audit-log", type=Path,
                      help="audit log that must verify and contain the head the record binds")
    return parser


def _key_arg(add_argument: Callable[..., argparse.Action], what: str) -> None:
    add_argument("--public-key", metavar="B64|FILE",
                 help=f"the server's Ed25519 public key the {what} must be signed with: base64 "
                 f"or a .pub file (default: the {PUBLIC_KEY_FILENAME} of the data directory "
                 "holding runs/<id>/)")


def _pack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--packs", help="comma-separated packs (default: run config policy-packs, "
                   "else all: each pack applies where its law does)")
    p.add_argument("--pack-dir", action="append", default=[], type=Path,
                   help="directory of extra .toml packs (repeat)")


def _manifests(specs: Sequence[str]) -> dict[str, Manifest]:
    out: dict[str, Manifest] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise UsageError(f"--manifest {spec!r} must be FILE or NODE=FILE")
        if name in out:
            raise UsageError(f"node {name!r} given twice; name them with NODE=FILE")
        out[name] = load_manifest(path)
    return out


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


# Fills in what the server adds to a run config before judging it (defaults, derived facts);
# the `fedguard-policy` console script passes the server's own (server/policy_cli.py).
Prepare = Callable[[dict[str, Any], str], dict[str, Any]]


def _cmd_check(args: argparse.Namespace, prepare: Prepare | None = None) -> int:
    config = load_run_config(args.run_config)
    if prepare is not None:
        config = prepare(config, args.mode)
    run = RunFacts.from_config(config)
    manifests = _manifests(args.manifest)
    params = {**parse_param_overrides(run.policy_params or ""),
              **parse_param_overrides(args.param)}
    packs = load_packs(args.packs or run.policy_packs or DEFAULT_PACKS, args.pack_dir, params)
    today = None
    if args.today:
        try:
            today = date.fromisoformat(args.today)
        except ValueError:
            raise UsageError(f"--today {args.today!r} is not a date; use YYYY-MM-DD") from None
    report = evaluate(run, manifests, packs, today=today)
    if args.audit_log:
        audit_verdicts(AuditLog(args.audit_log), report)
    text = report.to_json(args.lang) + "\n" if args.json else report.to_markdown(args.lang)
    if args.out:
        _write_text(args.out, text)
        counts = ", ".join(f"{k} {v}" for k, v in report.counts.items())
        verdict = "FAIL" if report.run_failed else "PASS"
        print(f"{verdict}: {counts}; report written to {args.out}")
    else:
        sys.stdout.write(text)
    return 1 if report.run_failed else 0


def _cmd_list(args: argparse.Namespace) -> int:
    packs = load_packs(args.packs or "all", args.pack_dir)
    for pack in packs:
        print(f"# {pack.name} {pack.version}: {pack.title[args.lang] or pack.name}")
        for r in pack.rules:
            print(f"{r.pid or '-':4} {r.id:34} {r.severity:5} {r.scope:4} {r.title[args.lang]}"
                  f"  [{r.citation}]")
    return 0


def _trusted_key(option: str | None, evidence: Path) -> str:
    """The pinned key: --public-key (base64 or file), else the data dir's published key."""
    if option is not None:
        try:
            is_file = Path(option).is_file()
        except (OSError, ValueError):
            is_file = False
        if is_file:
            return read_public_key(option)
        if option.endswith(".pub"):
            raise UsageError(f"--public-key file {option} not found; check the path")
        return parse_public_key(option)
    run_dir = evidence.resolve().parent
    published = run_dir.parent.parent / PUBLIC_KEY_FILENAME
    in_run = run_dir.parent.name == "runs"
    if in_run and published.is_file():
        return read_public_key(published)
    why = f"{published} does not exist" if in_run else "it is not under <data-dir>/runs/<id>/"
    raise UsageError(
        f"no trusted key for {evidence} ({why}): pass --public-key with the server's "
        f"{PUBLIC_KEY_FILENAME} or its base64"
    )


def _cmd_audit(args: argparse.Namespace) -> int:
    if not args.log.is_file():
        raise UsageError(f"audit log {args.log} not found; check the path")
    key = None if args.unsigned else _trusted_key(args.public_key, args.log)
    result = AuditLog(args.log).verify(key)
    if result.ok:
        signer = (f", head signed by trusted key {result.key_id}" if key else
                  " (unsigned: the files agree, which does not show who wrote them)")
        print(f"audit log {args.log}: OK, {result.count} entries, chain and head intact{signer}")
        return 0
    where = f" at line {result.first_bad}" if result.first_bad else ""
    print(f"audit log {args.log}: FAILED{where}: {result.reason}")
    return 1


def _cmd_provenance(args: argparse.Namespace) -> int:
    for what, path in (("model file", args.model), ("audit log", args.audit_log)):
        if path is not None and not path.is_file():
            raise UsageError(f"{what} {path} not found; pass the {what} the record names")
    signed = load_record(args.record)
    key = _trusted_key(args.public_key, args.record)
    check = verify_record(signed, key, model_path=args.model, audit_log=args.audit_log)
    if check.ok:
        extra = (" and model file matches" if args.model else "") + (
            ", audit log intact and holds the recorded head" if args.audit_log else "")
        print(f"provenance record {args.record}: OK, signed by trusted key {check.key_id}{extra}")
        return 0
    print(f"provenance record {args.record}: FAILED: {'; '.join(check.reasons)}")
    return 1


def main(argv: Sequence[str] | None = None, prepare: Prepare | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
        handler = {
            "check": lambda a: _cmd_check(a, prepare),
            "list-rules": _cmd_list,
            "verify-audit": _cmd_audit,
            "verify-provenance": _cmd_provenance,
        }[args.command]
        return handler(args)
    except (UsageError, *_INPUT_ERRORS) as exc:
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `fedguard-policy list-rules | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"{PROG}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line, never a traceback
        print(f"{PROG}: internal error ({type(exc).__name__}: {exc}); please report it",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
