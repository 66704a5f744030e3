"""Exceptions raised by the secure-aggregation library.

Every message is one line naming the problem and the fix, so callers (Flower glue, CLIs)
can log or show it without a traceback.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class for every secure-aggregation error."""


class SecAggConfigError(SecAggError, ValueError):
    """Parameters are unsafe or inconsistent (e.g. threshold not above half the group)."""


class SecAggProtocolError(SecAggError):
    """A payload, stored state or stage order is malformed; the sender is treated as dropped."""


class SecAggInputError(SecAggError, ValueError):
    """The vector handed to a client for masking is unusable (wrong length, NaN, inf)."""


class SecAggAbort(SecAggError):
    """The round cannot finish safely (too few survivors or shares); end the round cleanly."""
