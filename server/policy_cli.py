"""`fedguard-policy`: the policy checks offline, judging exactly what the ServerApp judges.

The command itself lives in `privacy.compliance.cli`; this shell gives it the server's view of a
run config (schema defaults filled in, derived facts added), so a partial run.toml gets the same
verdicts offline as the same run gets on the server.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from clients.task.run_config import ConfigError
from privacy.compliance.cli import main as policy_main
from privacy.compliance.policy import PolicyError
from server.compliance.policy_view import policy_config


def _prepare(config: dict[str, Any], mode: str) -> dict[str, Any]:
    try:
        return policy_config(config, mode)
    except ConfigError as err:
        raise PolicyError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    return policy_main(argv, prepare=_prepare)


if __name__ == "__main__":
    sys.exit(main())
