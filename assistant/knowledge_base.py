"""Load and validate the assistant's bilingual knowledge base (`assistant/knowledge/*.yaml`).

Validation is strict because an answer with a missing translation, no citation or a stale date
would reach users as legal information. Every problem is reported as one line naming the file,
the entry id and the field, so whoever edits the YAML can fix it without reading this code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from assistant.language import LANGS

DEFAULT_KB_DIR = Path(__file__).resolve().parent / "knowledge"

TOPICS: frozenset[str] = frozenset(
    {
        "personal-data", "legal-bases", "sensitive-data", "impact-assessment", "cross-border",
        "retention", "security", "anonymisation", "cn-genai", "eu-ai-act", "copyright",
        "ai-output-ownership", "patents", "trade-secrets", "licences", "differential-privacy",
        "automated-decisions", "roles", "fedguard", "health", "finance", "accountability",
    }
)  # fmt: skip
JURISDICTIONS: frozenset[str] = frozenset({"EU", "CN", "US", "UK", "JP", "DE", "INTL", "FEDGUARD"})
REQUIRED_FIELDS: tuple[str, ...] = (
    "id", "topic", "jurisdiction", "question", "paraphrases", "answer", "citations",
    "last_verified",
)  # fmt: skip
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")

try:  # the C loader is ~10x faster; cold start of `fedguard-ask` matters
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


class KBError(ValueError):
    """The knowledge base is missing or one of its entries is malformed (message is one line)."""


@dataclass(frozen=True)
class Entry:
    """One validated question/answer pair, in both languages."""

    id: str
    topic: str
    jurisdiction: tuple[str, ...]
    question: Mapping[str, str]
    paraphrases: Mapping[str, tuple[str, ...]]
    answer: Mapping[str, str]
    citations: tuple[str, ...]
    last_verified: dt.date
    file: str

    def title(self, lang: str) -> str:
        """The canonical question, used as the source title shown next to a citation."""
        return self.question[lang]


@dataclass(frozen=True)
class KnowledgeBase:
    """All entries plus a content digest, which keys the per-process search-index cache."""

    entries: tuple[Entry, ...]
    digest: str
    directory: Path

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def get(self, entry_id: str) -> Entry | None:
        """The entry with this id, or None."""
        for entry in self.entries:
            if entry.id == entry_id:
                return entry
        return None

    def topics(self) -> list[str]:
        """Topics that have at least one entry, in first-seen order."""
        return list(dict.fromkeys(e.topic for e in self.entries))


class _Where:
    """Builds the "file: entry 'id': field 'x'" prefix every error starts with."""

    def __init__(self, file: str, entry_id: str | None = None, index: int | None = None) -> None:
        self.file, self.entry_id, self.index = file, entry_id, index

    def error(self, field: str | None, problem: str) -> KBError:
        where = self.file
        if self.entry_id:
            where += f": entry '{self.entry_id}'"
        elif self.index is not None:
            where += f": entry #{self.index + 1}"
        if field:
            where += f": field '{field}'"
        return KBError(f"{where}: {problem}")


def _text(value: Any, where: _Where, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(field, "must be a non-empty string; fill it in")
    return value.strip()


def _bilingual_text(value: Any, where: _Where, field: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise where.error(field, "must be a mapping {en: ..., zh: ...}; give both languages")
    _no_extra_langs(value, where, field)
    return {lang: _text(value.get(lang), where, f"{field}.{lang}") for lang in LANGS}


def _bilingual_list(value: Any, where: _Where, field: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise where.error(field, "must be a mapping {en: [...], zh: [...]}; give both languages")
    _no_extra_langs(value, where, field)
    out: dict[str, tuple[str, ...]] = {}
    for lang in LANGS:
        items = value.get(lang)
        if not isinstance(items, list) or not items:
            raise where.error(f"{field}.{lang}", "must be a non-empty list; add a paraphrase")
        out[lang] = tuple(_text(v, where, f"{field}.{lang}[{i}]") for i, v in enumerate(items))
    return out


def _no_extra_langs(value: Mapping[Any, Any], where: _Where, field: str) -> None:
    extra = sorted(str(k) for k in value if k not in LANGS)
    if extra:
        raise where.error(field, f"unknown language key(s) {extra}; use only 'en' and 'zh'")


def _date(value: Any, where: _Where, today: dt.date) -> dt.date:
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value.strip())
        except ValueError:
            raise where.error("last_verified", f"{value!r} is not a date; use YYYY-MM-DD") from None
    if not isinstance(value, dt.date):
        raise where.error("last_verified", "must be a date in the form YYYY-MM-DD")
    # One day of slack: an entry verified "today" in UTC+8 is still "tomorrow" for a US user.
    if value > today + dt.timedelta(days=1):
        raise where.error("last_verified", f"{value} is in the future; use the day you checked")
    return value


def _entry(raw: Any, where: _Where, today: dt.date) -> Entry:
    if not isinstance(raw, Mapping):
        raise where.error(None, "must be a mapping with fields " + ", ".join(REQUIRED_FIELDS))
    entry_id = raw.get("id")
    if not isinstance(entry_id, str) or not _ID_RE.match(entry_id):
        raise where.error("id", f"{entry_id!r} is not a valid id; use lowercase-words-with-dashes")
    where.entry_id = entry_id
    unknown = sorted(str(k) for k in raw if k not in REQUIRED_FIELDS)
    if unknown:
        raise where.error(
            unknown[0], f"unknown field; allowed fields are {', '.join(REQUIRED_FIELDS)}"
        )
    for field in REQUIRED_FIELDS:
        if field not in raw:
            raise where.error(field, "is missing; add it")
    topic = raw["topic"]
    if not isinstance(topic, str) or topic not in TOPICS:
        raise where.error("topic", f"unknown topic {topic!r}; use one of {sorted(TOPICS)}")
    jurisdiction = raw["jurisdiction"]
    if isinstance(jurisdiction, str):
        jurisdiction = [jurisdiction]
    if not isinstance(jurisdiction, list) or not jurisdiction:
        raise where.error("jurisdiction", "must be a non-empty list such as [EU, CN]")
    for code in jurisdiction:
        if not isinstance(code, str) or code not in JURISDICTIONS:
            raise where.error(
                "jurisdiction", f"unknown code {code!r}; use one of {sorted(JURISDICTIONS)}"
            )
    citations = raw["citations"]
    if not isinstance(citations, list) or not citations:
        raise where.error("citations", "needs at least one citation; name the source")
    return Entry(
        id=entry_id,
        topic=topic,
        jurisdiction=tuple(jurisdiction),
        question=_bilingual_text(raw["question"], where, "question"),
        paraphrases=_bilingual_list(raw["paraphrases"], where, "paraphrases"),
        answer=_bilingual_text(raw["answer"], where, "answer"),
        citations=tuple(_text(c, where, f"citations[{i}]") for i, c in enumerate(citations)),
        last_verified=_date(raw["last_verified"], where, today),
        file=where.file,
    )


def parse_entries(text: str, file: str, today: dt.date | None = None) -> list[Entry]:
    """Validate one YAML document (a list of entries); `file` is only used in error messages."""
    today = today or dt.date.today()
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except ValueError as exc:  # a date YAML cannot build, e.g. 2026-02-30
        raise KBError(f"{file}: {exc}; write dates as real YYYY-MM-DD days") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise KBError(f"{file}: invalid YAML{line}; fix the syntax") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise KBError(f"{file}: must contain a YAML list of entries (start each with '- id:')")
    return [_entry(raw, _Where(file, index=i), today) for i, raw in enumerate(data)]


def load_kb(
    dir: str | Path | None = None,  # noqa: A002 - public name fixed by the API
    *,
    today: dt.date | None = None,
    files: Sequence[Path] | None = None,
) -> KnowledgeBase:
    """Load every `*.yaml` file in `dir` (default: the packaged knowledge base) and validate it.

    Raises KBError for a missing directory, a directory without YAML files, a malformed entry
    or an id used twice. `today` exists so tests can pin the "not in the future" check.
    """
    directory = Path(dir) if dir is not None else DEFAULT_KB_DIR
    if not directory.is_dir():
        raise KBError(f"knowledge base directory {directory} does not exist; pass an existing dir")
    paths = sorted(files) if files is not None else sorted(directory.glob("*.yaml"))
    if not paths:
        raise KBError(f"no *.yaml files in {directory}; add knowledge entries or pass another dir")
    digest = hashlib.sha256()
    entries: list[Entry] = []
    seen: dict[str, str] = {}
    for path in paths:
        raw = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + raw + b"\0")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise KBError(f"{path}: is not UTF-8; save it as UTF-8") from None
        for entry in parse_entries(text, str(path), today):
            if entry.id in seen:
                raise KBError(
                    f"{path}: entry '{entry.id}': field 'id': duplicate of an entry in "
                    f"{seen[entry.id]}; give it a unique id"
                )
            seen[entry.id] = str(path)
            entries.append(entry)
    return KnowledgeBase(entries=tuple(entries), digest=digest.hexdigest(), directory=directory)
