"""Showing untrusted text safely: user input and data-file text are never markup.

Streamlit's Markdown does not render raw HTML, but Markdown itself can load remote images,
make links, or colour text (`:red[...]`); escaping every ASCII punctuation character keeps the
text literally as typed while still wrapping like prose.
"""

from __future__ import annotations

import re
import string
import unicodedata
from datetime import UTC, datetime
from typing import Any

_PUNCT = re.compile("([" + re.escape(string.punctuation) + "])")


def md_escape(text: Any, limit: int | None = None) -> str:
    """`text` as Markdown source that displays exactly as the text (line breaks kept)."""
    value = str(text)
    if limit is not None and len(value) > limit:
        value = value[:limit] + "…"
    lines = [_PUNCT.sub(r"\\\1", line.strip()) for line in value.splitlines()]
    return "  \n".join(lines)


def strip_control(text: str) -> tuple[str, int]:
    """Remove control/format characters except newline and tab; return (text, how many)."""
    kept = [
        c for c in text
        if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co")
    ]
    return "".join(kept), len(text) - len(kept)


def utc(ts: Any) -> str:
    """A store timestamp (epoch seconds) as 'YYYY-MM-DD HH:MM:SS UTC'; '' when missing."""
    if ts is None:
        return ""
    try:
        return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def one_line(exc: BaseException | str) -> str:
    """First line of an error message, for `st.error` (never a traceback)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
