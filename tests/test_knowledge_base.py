"""The knowledge base loader rejects bad entries with one-line errors, and the real KB is valid.

The real-KB tests re-check every entry on every run, so an entry added tomorrow without a
Chinese answer, a citation or a sane date fails CI instead of reaching users.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pytest
import yaml

from assistant.freshness import (
    PENDING_CHANGES,
    STALE_AFTER,
    outdated_numbering,
    update_note,
    update_reasons,
)
from assistant.knowledge_base import (
    DEFAULT_KB_DIR,
    JURISDICTIONS,
    TOPICS,
    Entry,
    KBError,
    load_kb,
    parse_entries,
)
from assistant.language import detect_language

GOOD = {
    "id": "gdpr-legitimate-interest",
    "topic": "legal-bases",
    "jurisdiction": ["EU"],
    "question": {"en": "Can we rely on legitimate interest?", "zh": "能依据正当利益吗？"},
    "paraphrases": {"en": ["Is legitimate interest enough?"], "zh": ["正当利益够不够？"]},
    "answer": {"en": "Yes, after a balancing test.", "zh": "可以，但须先做平衡测试。"},
    "citations": ["GDPR Art. 6(1)(f)"],
    "last_verified": "2026-11-20",
}
TODAY = dt.date(2026, 11, 24)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_CACHE_DIR", str(tmp_path / "cache"))


def write(directory: Path, name: str, entries: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(entries, allow_unicode=True), encoding="utf-8")
    return path


def entry(**changes: object) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    data.update(changes)
    return data


def load_error(tmp_path: Path, entries: list[dict]) -> str:
    write(tmp_path / "kb", "legal.yaml", entries)
    with pytest.raises(KBError) as info:
        load_kb(tmp_path / "kb", today=TODAY)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- loader behaviour --------------------------------------------------------------------


def test_valid_entry_loads_with_parsed_fields(tmp_path: Path) -> None:
    write(tmp_path / "kb", "legal.yaml", [entry()])
    kb = load_kb(tmp_path / "kb", today=TODAY)
    (e,) = kb.entries
    assert e.id == "gdpr-legitimate-interest"
    assert e.jurisdiction == ("EU",)
    assert e.last_verified == dt.date(2026, 11, 20)
    assert e.paraphrases["zh"] == ("正当利益够不够？",)
    assert kb.get("gdpr-legitimate-interest") is e and kb.get("nope") is None
    assert e.file.endswith("legal.yaml")


@pytest.mark.parametrize(
    ("changes", "field", "fix"),
    [
        ({"answer": {"en": "Yes."}}, "answer.zh", "non-empty string"),
        ({"question": {"en": "Q?", "zh": "  "}}, "question.zh", "non-empty string"),
        ({"paraphrases": {"en": ["P?"], "zh": []}}, "paraphrases.zh", "add a paraphrase"),
        ({"paraphrases": {"en": ["P?"]}}, "paraphrases.zh", "add a paraphrase"),
        ({"citations": []}, "citations", "at least one citation"),
        ({"topic": "weather"}, "topic", "unknown topic"),
        ({"jurisdiction": ["EU", "MARS"]}, "jurisdiction", "unknown code 'MARS'"),
        ({"last_verified": "2030-01-01"}, "last_verified", "in the future"),
        ({"last_verified": "20 Nov 2026"}, "last_verified", "YYYY-MM-DD"),
        ({"answer": {"en": "a", "zh": "b", "fr": "c"}}, "answer", "use only 'en' and 'zh'"),
        ({"notes": "x"}, "notes", "unknown field"),
    ],
)
def test_bad_entry_error_names_file_entry_and_field(
    tmp_path: Path, changes: dict, field: str, fix: str
) -> None:
    message = load_error(tmp_path, [entry(**changes)])
    assert "legal.yaml" in message
    assert "entry 'gdpr-legitimate-interest'" in message
    assert f"field '{field}'" in message
    assert fix in message


def test_future_date_allows_one_day_for_time_zones(tmp_path: Path) -> None:
    write(tmp_path / "kb", "legal.yaml", [entry(last_verified="2026-11-25")])
    assert load_kb(tmp_path / "kb", today=TODAY).entries[0].last_verified.day == 25
    assert "in the future" in load_error(tmp_path, [entry(last_verified="2026-11-26")])


def test_missing_field_is_named(tmp_path: Path) -> None:
    bad = entry()
    del bad["citations"]
    assert "field 'citations': is missing" in load_error(tmp_path, [bad])


def test_bad_id_is_reported_by_position(tmp_path: Path) -> None:
    message = load_error(tmp_path, [entry(), entry(id="Bad Id")])
    assert "entry #2" in message and "field 'id'" in message


def test_duplicate_id_across_files(tmp_path: Path) -> None:
    write(tmp_path / "kb", "a.yaml", [entry()])
    write(tmp_path / "kb", "b.yaml", [entry()])
    with pytest.raises(KBError, match=r"b\.yaml: entry 'gdpr-legitimate-interest'.*duplicate"):
        load_kb(tmp_path / "kb", today=TODAY)


def test_invalid_yaml_and_wrong_shape(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "broken.yaml").write_text("- id: x\n  topic: [unclosed\n", encoding="utf-8")
    with pytest.raises(KBError, match=r"broken\.yaml: invalid YAML at line \d+"):
        load_kb(kb, today=TODAY)
    with pytest.raises(KBError, match="must contain a YAML list"):
        parse_entries("id: x\n", "single.yaml", TODAY)


def test_missing_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(KBError, match="does not exist"):
        load_kb(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KBError, match=r"no \*\.yaml files"):
        load_kb(tmp_path / "empty")


def test_digest_changes_with_content(tmp_path: Path) -> None:
    write(tmp_path / "kb", "legal.yaml", [entry()])
    first = load_kb(tmp_path / "kb", today=TODAY).digest
    write(tmp_path / "kb", "legal.yaml", [entry(citations=["GDPR Art. 6"])])
    assert load_kb(tmp_path / "kb", today=TODAY).digest != first


# --- the real knowledge base -------------------------------------------------------------

REAL_FILES = sorted(DEFAULT_KB_DIR.glob("*.yaml"))


def test_the_knowledge_base_ships_with_the_product() -> None:
    """A missing KB must fail loudly, not skip every check below."""
    assert len(REAL_FILES) >= 19  # one file per topic


def test_real_kb_loads_and_every_entry_is_complete() -> None:
    kb = load_kb()  # raises a KBError naming file, entry and field if anything is wrong
    today = dt.date.today()
    assert len(kb) >= 1
    for e in kb:
        where = f"{e.file}: {e.id}"
        assert e.topic in TOPICS, where
        assert set(e.jurisdiction) <= JURISDICTIONS, where
        assert e.citations and all(c.strip() for c in e.citations), where
        assert e.last_verified <= today + dt.timedelta(days=1), where
        for lang in ("en", "zh"):
            assert e.question[lang].strip() and e.answer[lang].strip(), f"{where} {lang}"
            assert e.paraphrases[lang], f"{where}: no {lang} paraphrase"


def test_real_kb_ids_are_unique_across_files() -> None:
    ids = []
    for path in REAL_FILES:
        ids += [raw["id"] for raw in yaml.safe_load(path.read_text(encoding="utf-8")) or []]
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicates, f"duplicate ids: {duplicates}"


def test_real_kb_texts_are_in_the_language_they_claim() -> None:
    """Catches swapped or untranslated fields (an English sentence under `zh`)."""
    for e in load_kb():
        texts = {
            "question": e.question,
            "answer": e.answer,
            "paraphrases": {lang: " ".join(p) for lang, p in e.paraphrases.items()},
        }
        for field, by_lang in texts.items():
            for lang in ("en", "zh"):
                assert detect_language(by_lang[lang]) == lang, f"{e.file}: {e.id}: {field}.{lang}"


# --- freshness: renumbered articles and "check for updates" notes --------------------------

def parsed(**changes: object) -> Entry:
    text = yaml.safe_dump([entry(**changes)], allow_unicode=True)
    (e,) = parse_entries(text, "t.yaml", dt.date(2030, 1, 1))  # any date we pass is allowed
    return e


def test_real_kb_cites_no_article_by_a_replaced_number() -> None:
    problems = [p for e in load_kb() for p in outdated_numbering(e)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("citation", "outdated"),
    [
        ("网络安全法 (Cybersecurity Law) Art. 21(3)", True),
        ("Cybersecurity Law Art. 37", True),
        ("网络安全法 第二十一条", True),
        ("网络安全法 (Cybersecurity Law) Art. 23", False),
        ("Cybersecurity Law Art. 23 as amended (Art. 21 in the 2016 text)", False),
        ("Cybersecurity Law Art. 21, numbering in force since 1 Jan 2026", False),
        ("PIPL Art. 21 (entrusted processing)", False),  # another law's Art. 21
        ("Data Security Law (数据安全法) Art. 21, 31", False),
        ("Cybersecurity Law Art. 210", False),
        ("专利法 (Patent Law) Art. 15", True),
        ("专利法 (Patent Law of the PRC, 2020 amendment) Art. 14", False),
    ],
)
def test_outdated_numbering_flags_only_replaced_article_numbers(
    citation: str, outdated: bool
) -> None:
    problems = outdated_numbering(parsed(citations=[citation]))
    assert bool(problems) is outdated, problems
    if outdated:
        assert "t.yaml: entry 'gdpr-legitimate-interest': citation" in problems[0]
        assert "renumbered" in problems[0] and "\n" not in problems[0]


def test_outdated_numbering_reads_answer_sentences_too() -> None:
    old = {"en": "Operators keep logs (Cybersecurity Law Art. 21). Done.",
           "zh": "见网络安全法第二十一条。"}  # fmt: skip
    problems = outdated_numbering(parsed(answer=old))
    assert [p.split(": ")[2].split(" ")[0] for p in problems] == ["answer.zh", "answer.en"]
    moved = {"en": "The MLPS article moved from Art. 21 to Art. 23 of the Cybersecurity Law.",
             "zh": "网络安全法第二十一条现为第二十三条。"}  # fmt: skip
    assert outdated_numbering(parsed(answer=moved)) == []


def test_update_note_for_an_entry_verified_more_than_a_year_ago() -> None:
    e = parsed(citations=["Dwork & Roth 2014"], last_verified="2025-06-30")
    assert update_note(e, "en", e.last_verified + STALE_AFTER) == ""  # exactly one year: current
    note = update_note(e, "en", e.last_verified + STALE_AFTER + dt.timedelta(days=1))
    assert note == (
        "Check for updates: this entry was last verified on 2025-06-30, more than a year ago."
    )
    zh = update_note(e, "zh", dt.date(2026, 12, 1))
    assert zh.startswith("请核实是否有更新：") and "2025-06-30" in zh and zh.endswith("。")


def test_update_note_for_a_law_with_a_pending_or_recent_change() -> None:
    today = dt.date(2026, 12, 1)
    gdpr = parsed(citations=["GDPR Art. 6(1)(f)"], last_verified="2026-11-20")
    assert "Digital Omnibus" in update_note(gdpr, "en", today)
    plain = parsed(citations=["Dwork & Roth 2014"], last_verified="2026-11-20")
    assert update_note(plain, "en", today) == ""
    # A dated change: pending before it applies, then only for entries verified before it.
    (pld,) = [c for c in PENDING_CHANGES if c.cites.search("Directive (EU) 2024/2853")]
    old = parsed(citations=["Directive (EU) 2024/2853"], last_verified="2026-11-20")
    new = parsed(citations=["Directive (EU) 2024/2853"], last_verified="2026-12-10")
    assert pld.affects(old, dt.date(2026, 12, 8))
    assert pld.affects(old, dt.date(2027, 1, 5))
    assert not pld.affects(new, dt.date(2027, 1, 5))
    assert update_reasons(new, "en", dt.date(2027, 1, 5)) == []


def test_every_pending_change_has_both_languages_and_a_source() -> None:
    for change in PENDING_CHANGES:
        assert change.note["en"] and change.note["zh"] and change.source
        assert detect_language(change.note["zh"]) == "zh"
        assert change.checked <= dt.date.today()


def test_new_sector_topics_have_entries() -> None:
    topics = load_kb().topics()
    for topic in ("health", "finance", "accountability"):
        assert topic in topics and topic in TOPICS
