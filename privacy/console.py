"""Command-line plumbing every fedguard CLI shares: errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def one_line(text: object) -> str:
    """Collapse newlines and control characters: a message or echoed argument stays one line."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())


def fail(prog: str, message: object, code: int = 2) -> NoReturn:
    """Print `prog: error: message` on one line to stderr and exit with `code`."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (plain argparse prints usage as well)."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog.split()[0], f"{message} (see {self.prog} --help)")
