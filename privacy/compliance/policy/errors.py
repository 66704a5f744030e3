"""Exceptions of the policy engine; every message is one line naming the thing and the fix."""

from __future__ import annotations


class PolicyError(ValueError):
    """A malformed pack, rule, expression or run configuration."""


class ExprError(PolicyError):
    """A rule condition that is not a valid, safe expression (found when a pack loads)."""


class EvalError(PolicyError):
    """A valid condition that cannot be evaluated on these facts (e.g. arithmetic on a gap)."""
