"""Decide whether a question is Chinese or English, so the answer comes back in the same language.

Questions often mix scripts ("PIPL 的单独同意是什么？", "What is 单独同意?"), so we weigh Han
characters against Latin words instead of looking at the first character.
"""

from __future__ import annotations

import re
from typing import Literal

Lang = Literal["zh", "en"]
LANGS: tuple[Lang, ...] = ("zh", "en")

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


class LanguageError(ValueError):
    """An unsupported language code was requested."""


def detect_language(text: str) -> Lang:
    """Return "zh" when Han characters carry at least as much of the text as Latin words.

    One Latin word counts as much as one Han character: "GDPR 第6条是什么" is Chinese, while
    "Does PIPL require 单独同意 here?" (5 words vs 4 characters) is English. Empty text is "en".
    """
    han = len(_HAN.findall(text))
    if han == 0:
        return "en"
    words = len(_LATIN_WORD.findall(text))
    return "zh" if han >= words else "en"


def normalise_lang(lang: str | None) -> Lang | None:
    """Map user spellings ("ZH", "zh-CN", "en_US", "chinese") to "zh"/"en"; None stays None."""
    if lang is None:
        return None
    key = lang.strip().lower().replace("_", "-")
    if key in {"zh", "zh-cn", "zh-hans", "cn", "chinese", "中文"}:
        return "zh"
    if key in {"en", "en-us", "en-gb", "english"}:
        return "en"
    raise LanguageError(f"unsupported language {lang!r}; use 'zh' or 'en'")
