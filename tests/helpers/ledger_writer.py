"""Crash-test writer: appends releases to a privacy ledger until it is killed.

Usage: ``python ledger_writer.py LEDGER_PATH RUN_ID [LIMIT]``. After each ``record``
returns it prints ``ack <row id> <run id> <round>`` and flushes, so the parent knows exactly
which releases the ledger promised to keep when it SIGKILLs this process. After LIMIT
records (default: no limit) it idles until killed, or exits when stdin closes; this bounds
the work of a writer whose output the parent is not reading yet.
"""

from __future__ import annotations

import sys

from privacy.dp.accounting import Release
from privacy.dp.ledger import PrivacyLedger

FINGERPRINT = "sigkill-test-dataset"


def main(argv: list[str]) -> int:
    path, run_id = argv[1], argv[2]
    limit = int(argv[3]) if len(argv) > 3 else None
    ledger = PrivacyLedger(path)
    print("ready", flush=True)
    round_no = 0
    while True:
        if limit is not None and round_no >= limit:
            sys.stdin.read()  # idle until killed; EOF means the parent is gone
            return 0
        round_no += 1
        entry = ledger.record(run_id, round_no, FINGERPRINT, Release(1.0, 0.01, 10), 1e-5, "rdp")
        sys.stdout.write(f"ack {entry.id} {run_id} {round_no}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
