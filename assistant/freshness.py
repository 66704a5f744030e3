"""Is a knowledge-base entry still current? Its age, known pending changes, renumbered articles.

An answer drawn from an entry verified more than a year ago, or from an entry that cites a law or
case with a known pending change, carries a "check for updates" note: the law may have moved on
since the entry was written. The tables below are the maintained list of such changes; each row
records its source and the day it was last confirmed, so a reviewer can re-check it.

RENUMBERINGS lists articles that moved when a law was amended. `outdated_numbering` finds
citations (and answer sentences) that still use the old number, which a test turns into a
failure; a citation may keep the old number only next to the new one or with a marker of the
current numbering (e.g. "as amended", "2026"), as in "Art. 23 (Art. 21 in the 2016 text)".
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from assistant.knowledge_base import Entry
from assistant.language import LANGS, Lang

STALE_AFTER = dt.timedelta(days=365)


@dataclass(frozen=True)
class PendingChange:
    """A change to a law or case that an entry citing it may not reflect yet."""

    cites: re.Pattern[str]  # matched against each of the entry's citations
    note: Mapping[Lang, str]
    effective: dt.date | None  # when the change takes or took effect; None: no date known
    checked: dt.date
    source: str

    def affects(self, entry: Entry, today: dt.date) -> bool:
        """Pending (no date yet, or a future one), or it took effect after the entry's check."""
        if not any(self.cites.search(c) for c in entry.citations):
            return False
        if self.effective is None or self.effective > today:
            return True
        return entry.last_verified < self.effective


def _change(
    cites: str, en: str, zh: str, effective: str | None, source: str, checked: str = "2026-12-01"
) -> PendingChange:
    return PendingChange(
        re.compile(cites),
        {"en": en, "zh": zh},
        dt.date.fromisoformat(effective) if effective else None,
        dt.date.fromisoformat(checked),
        source,
    )


PENDING_CHANGES: tuple[PendingChange, ...] = (
    _change(
        r"\bGDPR\b|2016/679",
        "the Commission's Digital Omnibus proposal of 19 Nov 2025 would amend parts of the GDPR "
        "(the definition of personal data, processing for AI, breach notification, Art. 22) and "
        "was still being negotiated at our last check",
        "欧盟委员会2025年11月19日提出的“数字综合法案”拟修改GDPR的部分内容（个人数据定义、"
        "为人工智能处理数据、泄露通知、第22条），截至我们最近一次核实仍在审议中",
        None,
        "Commission Digital Omnibus proposal (19 Nov 2025); EDPB-EDPS Joint Opinion 2/2026; "
        "Council compromise text of Feb 2026 (reported)",
    ),
    _change(
        r"2024/1689|\bAI Act\b",
        "the Commission's guidelines on high-risk classification and the harmonised standards "
        "for the AI Act were still being prepared at our last check",
        "截至我们最近一次核实，委员会关于高风险分类的指南和《人工智能法》的协调标准仍在制定中",
        None,
        "Commission draft guidelines on Art. 6 (May 2026, reported); CEN-CENELEC JTC 21 work "
        "programme",
    ),
    _change(
        r"2024/2853",
        "member states must transpose the Product Liability Directive by 9 Dec 2026; check the "
        "national law that implements it",
        "成员国须在2026年12月9日前转化产品责任指令，请核对各国的转化法律",
        "2026-12-09",
        "Directive (EU) 2024/2853, OJ L 18 Nov 2024",
    ),
    _change(
        r"2025/327",
        "the European Health Data Space applies from 26 Mar 2027 and its secondary-use rules "
        "from 26 Mar 2029; implementing acts are still due",
        "欧洲健康数据空间自2027年3月26日起适用，二次利用规则自2029年3月26日起适用，"
        "实施细则尚待出台",
        "2027-03-26",
        "Regulation (EU) 2025/327 Art. 105",
    ),
    _change(
        r"2023/2225",
        "the Consumer Credit Directive applies through national laws from 20 Nov 2026",
        "消费者信贷指令自2026年11月20日起通过各国法律适用",
        "2026-11-20",
        "Directive (EU) 2023/2225 Art. 48",
    ),
    _change(
        r"Ross Intelligence",
        "the Third Circuit's decision in Thomson Reuters v. Ross was still pending at our last "
        "check",
        "截至我们最近一次核实，第三巡回上诉法院尚未就Thomson Reuters诉Ross案作出判决",
        None,
        "3d Cir. oral argument of 11 Jun 2026 (reported)",
    ),
    _change(
        r"New York Times|MDL No\. 3143",
        "the New York Times case against OpenAI and Microsoft had no ruling on fair use at our "
        "last check",
        "截至我们最近一次核实，纽约时报诉OpenAI和微软案尚未就合理使用作出裁决",
        None,
        "In re OpenAI, Inc. Copyright Infringement Litigation, MDL No. 3143 (S.D.N.Y.) docket "
        "reports",
    ),
    _change(
        r"5 U 104/24",
        "a further appeal in Kneschke v. LAION to the Federal Court of Justice was allowed",
        "Kneschke诉LAION案已获准向德国联邦最高法院上诉",
        None,
        "OLG Hamburg, 5 U 104/24 (10 Dec 2025)",
    ),
    _change(
        r"42 O 14139/24",
        "the GEMA v. OpenAI judgment is first-instance and not final",
        "GEMA诉OpenAI案为一审判决，尚未生效",
        None,
        "LG München I, 42 O 14139/24 (11 Nov 2025)",
    ),
    _change(
        r"Getty Images",
        "Getty Images v. Stability AI is on appeal to the Court of Appeal",
        "Getty Images诉Stability AI案正在上诉法院审理",
        None,
        "[2025] EWHC 3343 (Ch) (permission to appeal)",
    ),
    _change(
        r"C-703/25",
        "the appeal against the General Court's Latombe judgment on the Data Privacy Framework "
        "is pending at the Court of Justice",
        "针对普通法院Latombe案（数据隐私框架）判决的上诉仍在欧盟法院审理中",
        None,
        "Case C-703/25 P (lodged 31 Oct 2025)",
    ),
)


@dataclass(frozen=True)
class Renumbering:
    """An article of a law that moved to a new number when the law was amended."""

    law: re.Pattern[str]  # how citations name the law
    old: int
    new: int
    since: dt.date
    current: re.Pattern[str]  # a marker that the text already uses (or names) the new numbering
    source: str

    def outdated(self, text: str) -> bool:
        """Whether `text` cites the old article of this law without the new number or a marker."""
        for match in self.law.finditer(text):
            window = text[match.end() :]
            if _article(self.old).search(window) and not (
                _article(self.new).search(window) or self.current.search(window)
            ):
                return True
        return False


_CN_DIGITS = "零一二三四五六七八九"


def _cn_number(n: int) -> str:
    """1..99 in Chinese numerals, as in 第二十三条."""
    tens, units = divmod(n, 10)
    head = "" if tens == 0 else ("十" if tens == 1 else _CN_DIGITS[tens] + "十")
    return head + (_CN_DIGITS[units] if units else "")


def _article(n: int) -> re.Pattern[str]:
    return re.compile(rf"(?:\bArt(?:icle|\.)?\s*{n}(?!\d))|(?:第{_cn_number(n)}条)")


_CSL = re.compile(r"Cybersecurity Law|网络安全法|\bCSL\b")
_CSL_2026 = re.compile(r"2026|as amended|修正")
_PATENT = re.compile(r"Patent Law|专利法")
_PATENT_2020 = re.compile(r"2020|2021|as amended|修正")

RENUMBERINGS: tuple[Renumbering, ...] = (
    Renumbering(
        _CSL, 21, 23, dt.date(2026, 1, 1), _CSL_2026,
        "NPCSC decision of 28 Oct 2025 amending the Cybersecurity Law, in force 1 Jan 2026 "
        "(a new Art. 3 and an AI article inserted before the former Art. 21)",
    ),
    Renumbering(
        _CSL, 37, 39, dt.date(2026, 1, 1), _CSL_2026,
        "same amendment; CIIO localisation, used by cross-border-important-data-ciio",
    ),
    Renumbering(
        _PATENT, 15, 14, dt.date(2021, 6, 1), _PATENT_2020,
        "2020 amendment of the Patent Law (in force 1 Jun 2021): co-ownership moved to Art. 14",
    ),
)  # fmt: skip

# Sentence ends in answers; "Art. 21" must not split, so a full stop only ends a sentence when
# a capital letter follows.
_SENTENCES = re.compile(r"[。；;]|\.\s+(?=[A-Z])")


def outdated_numbering(entry: Entry) -> list[str]:
    """Citations and answer sentences that cite an article by a replaced number (one line each)."""
    texts = [("citation", c) for c in entry.citations]
    for lang in LANGS:
        texts += [(f"answer.{lang}", s) for s in _SENTENCES.split(entry.answer[lang])]
    problems = []
    for field, text in texts:
        for r in RENUMBERINGS:
            if r.outdated(text):
                problems.append(
                    f"{entry.file}: entry '{entry.id}': {field} {text.strip()!r} cites Art. "
                    f"{r.old}, renumbered Art. {r.new} since {r.since}; cite Art. {r.new}"
                )
    return problems


_HEAD: dict[Lang, str] = {"en": "Check for updates: ", "zh": "请核实是否有更新："}
_STALE: dict[Lang, str] = {
    "en": "this entry was last verified on {date}, more than a year ago",
    "zh": "本条目最后核实于{date}，已超过一年",
}
_JOIN: dict[Lang, str] = {"en": "; ", "zh": "；"}
_END: dict[Lang, str] = {"en": ".", "zh": "。"}


def update_reasons(
    entry: Entry, lang: Lang, today: dt.date, changes: Iterable[PendingChange] = PENDING_CHANGES
) -> list[str]:
    """Why the entry may be out of date, in `lang` (empty when it is current)."""
    reasons = []
    if today - entry.last_verified > STALE_AFTER:
        reasons.append(_STALE[lang].format(date=entry.last_verified.isoformat()))
    reasons += [c.note[lang] for c in changes if c.affects(entry, today)]
    return reasons


def update_note(entry: Entry, lang: Lang, today: dt.date) -> str:
    """The "check for updates" note shown with an answer, or "" when the entry is current."""
    reasons = update_reasons(entry, lang, today)
    return _HEAD[lang] + _JOIN[lang].join(reasons) + _END[lang] if reasons else ""
