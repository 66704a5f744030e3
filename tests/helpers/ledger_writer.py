"""Ledger writers run as separate processes by tests/test_ledger.py.

``python ledger_writer.py crash LEDGER RUN_ID [LIMIT]``: reserves and settles releases until
killed. After each settle returns it prints ``ack <reservation id> <run id> <round>`` and
flushes, so the parent knows exactly which releases the ledger promised to keep when it
SIGKILLs this process. After LIMIT releases (default: no limit) it idles until killed, or
exits when stdin closes; this bounds the work of a writer whose output is not read yet.

``python ledger_writer.py race LEDGER SOURCE ATTEMPTS``: prints ``ready``, waits for a line on
stdin (the starting gun, so all racers start together), then tries ATTEMPTS reservations of
:data:`RACE_RELEASE`, printing ``ok <id>`` or ``refused`` for each.
"""

from __future__ import annotations

import sys

from privacy.dp.accounting import Release
from privacy.dp.ledger import PrivacyLedger

CRASH_SOURCE = "sigkill-test/source"
RACE_RELEASE = Release(1.1, 0.05, 40)


def _crash(path: str, run_id: str, limit: int | None) -> int:
    ledger = PrivacyLedger(path)
    ledger.set_budget(CRASH_SOURCE, 1e9, 1e-6)  # equal budgets: a second writer adds nothing
    print("ready", flush=True)
    round_no = 0
    while True:
        if limit is not None and round_no >= limit:
            sys.stdin.read()  # idle until killed; EOF means the parent is gone
            return 0
        round_no += 1
        decision = ledger.reserve(
            CRASH_SOURCE, run_id, round_no, [("dp-sgd", Release(1.0, 0.01, 10))],
            num_records=10_000, fingerprint="f" * 64,
        )
        (rid,) = decision.reservations
        ledger.settle(rid, Release(1.0, 0.01, 10))
        sys.stdout.write(f"ack {rid} {run_id} {round_no}\n")
        sys.stdout.flush()


def _race(path: str, source: str, attempts: int) -> int:
    ledger = PrivacyLedger(path)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(attempts):
        decision = ledger.reserve(
            source, f"race-{i}", 1, [("dp-sgd", RACE_RELEASE)],
            num_records=10_000, fingerprint="r" * 64,
        )
        print(f"ok {decision.reservations[0]}" if decision.allowed else "refused", flush=True)
    return 0


def main(argv: list[str]) -> int:
    mode, path = argv[1], argv[2]
    if mode == "crash":
        return _crash(path, argv[3], int(argv[4]) if len(argv) > 4 else None)
    return _race(path, argv[3], int(argv[4]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
