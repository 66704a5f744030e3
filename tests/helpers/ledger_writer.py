"""Crash-test writer: appends releases to a privacy ledger until it is killed.

Usage: ``python ledger_writer.py LEDGER_PATH RUN_ID``. After each ``record`` returns it
prints ``ack <row id> <run id> <round>`` and flushes, so the parent knows exactly which
releases the ledger promised to keep when it SIGKILLs this process.
"""

from __future__ import annotations

import sys

from privacy.accounting import Release
from privacy.ledger import PrivacyLedger

FINGERPRINT = "sigkill-test-dataset"


def main(argv: list[str]) -> int:
    path, run_id = argv[1], argv[2]
    ledger = PrivacyLedger(path)
    print("ready", flush=True)
    round_no = 0
    while True:
        round_no += 1
        entry = ledger.record(run_id, round_no, FINGERPRINT, Release(1.0, 0.01, 10), 1e-5, "rdp")
        sys.stdout.write(f"ack {entry.id} {run_id} {round_no}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
