"""Differential privacy on a node: DP-SGD, accounting, the node's ledger, user-level DP, metrics.

Light to import (numpy only); the Opacus side (`make_private`, `DPSGDSession`, `DPSGDConfig`,
`check_private_model`) loads on first use, so a node that runs without DP never pays for
importing Opacus and torch.
"""

from typing import Any

from privacy.dp.accounting import (
    ACCOUNTANTS,
    AccountingError,
    Release,
    SkellamRelease,
    calibrate_noise,
    epsilon,
)
from privacy.dp.ledger import Budget, BudgetDecision, LedgerEntry, LedgerError, PrivacyLedger

_LAZY = {
    "DPConfigError", "DPSGDConfig", "DPSGDSession", "PrivateTraining", "check_private_model",
    "make_private",
}

__all__ = [
    "ACCOUNTANTS",
    "AccountingError",
    "Budget",
    "BudgetDecision",
    "DPConfigError",
    "DPSGDConfig",
    "DPSGDSession",
    "LedgerEntry",
    "LedgerError",
    "PrivacyLedger",
    "PrivateTraining",
    "Release",
    "SkellamRelease",
    "calibrate_noise",
    "check_private_model",
    "epsilon",
    "make_private",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from privacy.dp import dp_sgd

        return getattr(dp_sgd, name)
    raise AttributeError(f"module 'privacy.dp' has no attribute {name!r}")
