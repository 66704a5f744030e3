"""Chinese word segmentation: jieba's full dictionary for the KB, a small one for questions.

Loading jieba's full dictionary costs most of a second, which used to be most of the assistant's
cold start. A question can only match words the knowledge base contains, so questions are cut
with a dictionary of just those words (a few thousand, loaded in milliseconds), built once when
the knowledge base is tokenised and kept in the cache directory next to the token cache. Words
the full dictionary does not know (jieba found them with its HMM) get the frequency jieba would
need to keep them whole, so a question is cut into the same words as the entries it matches.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_lock = threading.Lock()
_full_ready = False


class Segmenter(Protocol):
    """The part of jieba's interface the assistant uses."""

    def lcut(self, sentence: str) -> list[str]: ...

    def lcut_for_search(self, sentence: str) -> list[str]: ...


def cache_dir() -> Path:
    """Where segmentation and token caches live (never the system temp dir of a test run)."""
    env = os.environ.get("FEDGUARD_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedguard"


def _quiet_jieba():  # type: ignore[no-untyped-def]
    import jieba

    jieba.setLogLevel(logging.ERROR)  # it logs to stderr, and never to stdout
    return jieba


def full() -> Segmenter:
    """jieba with its full dictionary, initialised once per process."""
    global _full_ready
    jieba = _quiet_jieba()
    if not _full_ready:
        with _lock:
            if not _full_ready:
                cache = cache_dir()
                try:
                    cache.mkdir(parents=True, exist_ok=True)
                    jieba.dt.tmp_dir = str(cache)
                except OSError:  # read-only home: jieba still works, it just re-parses each time
                    logging.getLogger("jieba").setLevel(logging.CRITICAL)
                jieba.initialize()
                _full_ready = True
    return jieba  # type: ignore[no-any-return]


def vocabulary(texts: Iterable[str]) -> dict[str, int]:
    """Every word the full dictionary cuts these texts into, with the frequency to keep it whole."""
    seg = full()
    words: set[str] = set()
    for text in texts:
        for run in _HAN_RUN.findall(text):
            words.update(seg.lcut(run))
            words.update(seg.lcut_for_search(run))
    jieba = _quiet_jieba()
    freq = jieba.dt.FREQ
    return {w: int(freq.get(w) or jieba.suggest_freq(w)) or 1 for w in sorted(words)}


def for_vocabulary(vocab: dict[str, int], name: str, directory: Path | None = None) -> Segmenter:
    """A segmenter whose dictionary is `vocab`, stored as `name` in the cache directory.

    Falls back to the full dictionary when the small one cannot be written (read-only disk)
    or would be empty (a knowledge base without Chinese text).
    """
    if not vocab:
        return full()
    directory = directory if directory is not None else cache_dir()
    path = directory / name
    try:
        if not path.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text("".join(f"{w} {f}\n" for w, f in vocab.items()), encoding="utf-8")
            os.replace(tmp, path)
    except OSError:
        return full()
    jieba = _quiet_jieba()
    seg = jieba.Tokenizer(dictionary=str(path))
    seg.tmp_dir = str(directory)
    seg.initialize()
    return seg  # type: ignore[no-any-return]
