"""Differential privacy on a node: DP-SGD set-up, accounting, the node's ledger, user-level DP.

Light to import (numpy only); the Opacus side (`make_private`, `DPSGDSession`, `DPSGDConfig`)
loads on first use, so a node that runs without DP never pays for importing Opacus.
"""

from typing import Any

from privacy.dp.accounting import ACCOUNTANTS, AccountingError, Release, calibrate_noise, epsilon
from privacy.dp.ledger import BudgetDecision, LedgerEntry, LedgerError, PrivacyLedger

_LAZY = {"DPConfigError", "DPSGDConfig", "DPSGDSession", "PrivateTraining", "make_private"}

__all__ = [
    "ACCOUNTANTS",
    "AccountingError",
    "BudgetDecision",
    "DPConfigError",
    "DPSGDConfig",
    "DPSGDSession",
    "LedgerEntry",
    "LedgerError",
    "PrivacyLedger",
    "PrivateTraining",
    "Release",
    "calibrate_noise",
    "epsilon",
    "make_private",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from privacy.dp import dp_sgd

        return getattr(dp_sgd, name)
    raise AttributeError(f"module 'privacy.dp' has no attribute {name!r}")
