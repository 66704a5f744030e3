"""What a question says beyond its topic words: which legal system it is about, which fact it asks.

Two kinds of cue steer the ranking in `retrieval`, because word overlap alone cannot see them:
  * jurisdiction: "PIPL", "China", "个人信息保护法", "CAC" point to Chinese law; "GDPR", "EU",
    "EDPB", "欧盟" to EU law. A question that names one legal system is rarely answered well by
    an entry about another one, even when both use the same words (consent, impact assessment).
  * asked fact: "when", "how long", "what age", "which article", "how many"... A question asking
    for a date wants the entry that states the date, not the one on the same topic that does not.
    Each entry gets a profile of the kinds of fact its answer states (dates, periods, ages...).
Both are small, readable pattern tables in English and Chinese; they are matched on the raw text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from assistant.knowledge_base import Entry

# Jurisdiction codes that name a legal system (INTL and FEDGUARD are neutral for ranking).
LEGAL_SYSTEMS: frozenset[str] = frozenset({"EU", "CN", "US", "UK", "JP", "DE"})


def _rx(*alternatives: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile("|".join(alternatives), flags)


# Acronyms such as US, EU, CAC are matched case-sensitively ("us" is a pronoun); names that
# users type in lower case too are wrapped in (?i:...).


_JURISDICTION_CUES: dict[str, re.Pattern[str]] = {
    "CN": _rx(
        r"(?i:\bPIPL\b)",
        r"\bPRC\b",
        r"(?i:\bChina\b)",
        r"(?i:\bChinese\b)",
        r"\bCAC\b",
        r"\bCSL\b",
        r"\bDSL\b",
        r"\bCIIOs?\b",
        r"\bMLPS\b",
        r"\bCNIPA\b",
        r"\bNFRA\b",
        r"\bPBoC\b",
        r"\bSAMR\b",
        r"\bTC260\b",
        r"\bGB/?T\b",
        r"\bInterim Measures\b",
        r"\bBeijing\b",
        r"\bShanghai\b",
        r"\bGuangzhou\b",
        r"\bShenzhen\b",
        r"\bHangzhou\b",
        "个人信息保护法",
        "个保法",
        "网信",
        "中国",
        "我国",
        "国内",
        "境内",
        "出境",
        "中华人民共和国",
        "数据安全法",
        "网络安全法",
        "人民法院",
        "暂行办法",
        "国家标准",
        "国家知识产权局",
        "人民银行",
        "金融监管总局",
        "国务院",
        "国家卫生健康委",
        "科技部",
        "关键信息基础设施",
        "北京",
        "上海",
        "广州",
        "深圳",
        "杭州",
        "江苏",
        "个人信息处理者",
    ),
    "EU": _rx(
        r"(?i:\bGDPR\b)",
        r"\bEU\b",
        r"(?i:\bEurope(an)?\b)",
        r"\bEDPB\b",
        r"\bEDPS\b",
        r"\bCJEU\b",
        r"\bEEA\b",
        r"\bAI Act\b",
        r"\bDSM\b",
        r"\bDORA\b",
        r"\bEHDS\b",
        r"\bMDR\b",
        r"\bIVDR\b",
        r"\bmember states?\b",
        r"\bBrussels\b",
        r"\bCommission\b",
        r"\bSCCs?\b",
        r"\bArticle 29 Working Party\b",
        r"\bWP29\b",
        "欧盟",
        "欧洲",
        "成员国",
        "欧盟法院",
        "人工智能法",
        "数据保护影响评估",
        "欧洲经济区",
    ),
    "DE": _rx(
        r"(?i:\bGerman[ys]?\b)",
        r"\bHamburg\b",
        r"\bMunich\b",
        r"\bBGH\b",
        r"\bUrhG\b",
        r"\bBDSG\b",
        "德国",
        "汉堡",
        "慕尼黑",
    ),
    "US": _rx(
        r"\bUS\b",
        r"\bU\.S\.",
        r"\bUSA\b",
        r"\bUnited States\b",
        r"\bAmerican?\b",
        r"\bUSPTO\b",
        r"\bUSCO\b",
        r"\bCopyright Office\b",
        r"\bfair use\b",
        r"\bCalifornia\b",
        r"\bDelaware\b",
        r"\bCircuit\b",
        "美国",
        "合理使用",
    ),
    "UK": _rx(
        r"\bUK\b",
        r"\bUnited Kingdom\b",
        r"\bBritish\b",
        r"\bBritain\b",
        r"\bEngland\b",
        r"\bEnglish\b",
        r"\bHigh Court\b",
        r"\bCDPA\b",
        "英国",
    ),
    "JP": _rx(r"(?i:\bJapan(ese)?\b)", "日本"),
}
# A question about German law is also about EU law (GDPR, DSM Directive).
_IMPLIES: dict[str, frozenset[str]] = {"DE": frozenset({"DE", "EU"})}


def jurisdiction_cues(question: str) -> frozenset[str]:
    """Legal systems the question names (empty when it names none)."""
    found: set[str] = set()
    for code, pattern in _JURISDICTION_CUES.items():
        if pattern.search(question):
            found |= _IMPLIES.get(code, frozenset({code}))
    return frozenset(found)


def jurisdiction_fit(cues: frozenset[str], entry_codes: frozenset[str]) -> tuple[float, float]:
    """(recall, precision) of an entry's legal systems against the question's cues.

    recall: share of the cued systems the entry covers; precision: share of the entry's own
    legal systems that were cued. Both are 0 when the entry covers none; neutral entries (no
    legal system, e.g. INTL or FEDGUARD only) get 0.5 for both, so they are neither pushed up
    nor pushed below entries of the wrong jurisdiction.
    """
    own = entry_codes & LEGAL_SYSTEMS
    if not own:
        return 0.5, 0.5
    shared = own & cues
    return len(shared) / len(cues), len(shared) / len(own)


# --- the fact a question asks for, and the facts an answer states ---------------------------

_I = re.IGNORECASE
_ASKS: dict[str, re.Pattern[str]] = {
    "date": _rx(
        r"\bwhen\b",
        r"\bwhat date\b",
        r"\bwhich (day|date|year)\b",
        r"\bsince when\b",
        r"\bfrom (which|what) (day|date)\b",
        r"\bstarting when\b",
        r"\bdeadlines?\b",
        r"\b(start|begin)s? to apply\b",
        r"\bapply from\b",
        r"\btake effect\b",
        r"\bin force\b",
        r"\bentered into force\b",
        r"\bapplication dates?\b",
        r"\btimeline\b",
        "什么时候",
        "何时",
        "哪天",
        "哪一天",
        "哪一年",
        "几月",
        "日期",
        "施行",
        "生效",
        "开始适用",
        "适用时间",
        "截止",
        "时间表",
        "时间节点",
        flags=_I,
    ),
    "duration": _rx(
        r"\bhow long\b",
        r"\bhow many (years|months|days|hours|weeks)\b",
        r"\bhow soon\b",
        r"\bhow (quickly|fast)\b",
        r"\bwithin how\b",
        r"\bfor how long\b",
        r"\bretention period\b",
        "多久",
        "多长时间",
        "几年",
        "几个月",
        "几天",
        "多少年",
        "多少天",
        "多少小时",
        "几个小时",
        "几个工作日",
        "保存期限",
        "保存多",
        "时限",
        "最迟",
        flags=_I,
    ),
    "age": _rx(
        r"\bwhat age\b",
        r"\bage limit\b",
        r"\bhow old\b",
        r"\byears old\b",
        r"\bage of\b",
        r"\bunder what age\b",
        r"\bbelow what age\b",
        r"\byoungest age\b",
        r"\bminimum age\b",
        "几岁",
        "多大",
        "年龄",
        "周岁",
        flags=_I,
    ),
    "number": _rx(
        r"\bhow many\b",
        r"\bhow much\b",
        r"\bwhat (share|proportion|percentage|threshold|number)\b",
        r"\bthresholds?\b",
        r"\bwhat volume\b",
        r"\bat what (level|number|scale)\b",
        r"\bper ?cent\b",
        r"%",
        "多少",
        "几个",
        "比例",
        "门槛",
        "数量",
        "人数",
        "百分之",
        "量级",
        "万人",
        flags=_I,
    ),
    "article": _rx(
        r"\bwhich (article|provision|section|clause|rule|law|standard|standards)\b",
        r"\bwhat (article|provision|section)\b",
        r"\barticle number\b",
        r"\bwhich articles\b",
        "哪一条",
        "哪条",
        "第几条",
        "哪个条款",
        "哪项规定",
        "哪部法",
        "哪些国家标准",
        "哪一项",
        "哪些条",
        flags=_I,
    ),
    "case": _rx(
        r"\bcase\b",
        r"\bjudg(e)?ment\b",
        r"\bruling\b",
        r"\bcourt\b",
        r"\bappeal\b",
        r"\bv\.? ",
        "诉.{0,12}案",
        "案中",
        "案件",
        "法院",
        "判决",
        "裁定",
        "上诉",
        flags=_I,
    ),
    "who": _rx(
        r"\bwho\b",
        r"\bwhom\b",
        r"\bwhose\b",
        r"\bwhich (party|parties|partner|member|authority|body|regulator)\b",
        "谁",
        "哪一方",
        "哪方",
        "哪个机构",
        "哪个部门",
        flags=_I,
    ),
}

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?"
_CN_NUM = "[一二两三四五六七八九十百千]"
_STATES: dict[str, re.Pattern[str]] = {
    "date": re.compile(
        rf"\b\d{{1,2}} {_MONTH} \d{{4}}\b|\b{_MONTH} \d{{4}}\b|\d{{4}}年\d{{1,2}}月(?:\d{{1,2}}日)?"
    ),
    "duration": re.compile(
        r"\b\d{1,3} (?:years?|months?|weeks?|days?|hours?|working days)\b"
        r"|\b(?:one|two|three|four|five|six|ten|twelve) (?:years?|months?|weeks?|days?|hours?)\b"
        rf"|(?<!\d)(?:\d{{1,3}}|{_CN_NUM}+)(?:个月|年(?![\d一二三四五六七八九十])|周|天|日内|小时|个工作日)"
    ),
    "age": re.compile(
        r"\bunder (?:the age of )?\d{1,2}\b|\b\d{1,2} years? old\b|\bbelow \d{1,2}\b"
        rf"|(?:\d{{1,2}}|{_CN_NUM}+)周?岁"
    ),
    "number": re.compile(
        r"\b\d{1,3}(?:,\d{3})+\b|\b\d+(?:\.\d+)?\s?%|\b\d+(?:\.\d+)? (?:million|billion)\b"
        r"|10\^\d+|\d+(?:\.\d+)?万|百分之|次方"
    ),
    "article": re.compile(r"\bArt(?:icle)?s?\.? ?\d+|第[一二三四五六七八九十百零\d]+条"),
    "case": re.compile(r"\bv\.? [A-Z]|\bC-\d+/\d+|\d{4}\)?[^\s]{0,3}民初|诉"),
    "who": re.compile(
        r"\b(?:joint controllers?|controllers?|processors?|providers?|deployers?|manufacturers?"
        r"|operators?|lead partner|each node|each party|responsible|liable)\b"
        r"|控制者|处理者|提供者|部署者|制造商|运营者|牵头|负责|承担|委托方|受托方|主管部门"
    ),
}
# How many statements of a kind make an answer a full source of that kind of fact.
_SATURATION: dict[str, int] = {
    "date": 3, "duration": 2, "age": 2, "number": 2, "article": 4, "case": 2, "who": 6,
}  # fmt: skip


def asked_facts(question: str) -> frozenset[str]:
    """Kinds of fact the question asks for (empty for a plain "what about X" question)."""
    return frozenset(kind for kind, pattern in _ASKS.items() if pattern.search(question))


@dataclass(frozen=True)
class FactProfile:
    """How fully an entry's answer states each kind of fact, in [0, 1] per kind."""

    strength: Mapping[str, float]

    def support(self, kinds: frozenset[str]) -> float:
        """Mean strength over the asked kinds (0 when none is asked)."""
        if not kinds:
            return 0.0
        return sum(self.strength.get(k, 0.0) for k in kinds) / len(kinds)


def fact_profile(entry: Entry) -> FactProfile:
    """Count each kind of fact in the entry's answers (both languages, the larger count)."""
    strength = {}
    for kind, pattern in _STATES.items():
        count = max(len(pattern.findall(text)) for text in entry.answer.values())
        strength[kind] = min(1.0, count / _SATURATION[kind])
    return FactProfile(strength)
