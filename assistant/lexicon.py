"""A small bilingual lexicon of compliance terms that are written in several ways.

The same concept appears as an abbreviation, its expansion or a Chinese term ("DPIA", "data
protection impact assessment", "数据保护影响评估"), and Chinese answers often keep the English
abbreviation. Word overlap misses these matches, so both the knowledge base and the question get
one extra token per concept they mention. The list is deliberately short: only terms with more
than one common spelling in this domain, and no everyday words whose meaning shifts with context.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache

CONCEPT_PREFIX = "\u2237"  # keeps concept tokens apart from words and bigrams in the index

# concept id -> surface forms. ALL-CAPS forms match case-sensitively on word boundaries, other
# Latin forms case-insensitively; Chinese forms as substrings.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "dpia": ("DPIA", "DPIAs", "data protection impact assessment", "数据保护影响评估"),
    "pipia": (
        "PIPIA", "personal information protection impact assessment", "个人信息保护影响评估",
        "个人信息影响评估",
    ),
    "fria": ("FRIA", "fundamental rights impact assessment", "基本权利影响评估"),
    "gpai": (
        "GPAI", "general-purpose AI", "general purpose AI", "通用人工智能", "通用目的人工智能",
    ),
    "tdm": (
        "TDM", "text and data mining", "text-and-data mining", "data mining", "文本与数据挖掘",
        "文本和数据挖掘", "数据挖掘",
    ),
    "tdm-reservation": (
        "opt-out", "opt out", "opted out", "opting out", "reservation", "reservations",
        "选择退出", "权利保留", "保留权利",
    ),
    "dp": ("DP", "differential privacy", "differentially private", "差分隐私"),
    "secagg": ("SecAgg", "SecAgg+", "secure aggregation", "安全聚合"),
    "epsilon": ("epsilon", "privacy budget", "隐私预算"),
    "gdpr": ("GDPR", "General Data Protection Regulation", "通用数据保护条例"),
    "pipl": ("PIPL", "Personal Information Protection Law", "个人信息保护法", "个保法"),
    "csl": ("CSL", "Cybersecurity Law", "网络安全法"),
    "dsl": ("DSL", "Data Security Law", "数据安全法"),
    "ai-act": ("AI Act", "Artificial Intelligence Act", "人工智能法"),
    "cac": ("CAC", "Cyberspace Administration", "网信办", "网信部门"),
    "ciio": (
        "CIIO", "CIIOs", "critical information infrastructure operator",
        "critical information infrastructure operators", "关键信息基础设施运营者",
    ),
    "edpb": ("EDPB", "European Data Protection Board", "欧洲数据保护委员会"),
    "cjeu": (
        "CJEU", "Court of Justice of the European Union", "European Court of Justice",
        "EU Court of Justice", "欧盟法院",
    ),
    "sccs": ("SCC", "SCCs", "standard contractual clauses", "标准合同条款"),
    "dpo": ("DPO", "DPOs", "data protection officer", "数据保护官"),
    "ehds": ("EHDS", "European Health Data Space", "欧洲健康数据空间"),
    "dora": ("DORA", "Digital Operational Resilience Act", "数字运营韧性法"),
    "mdr": ("MDR", "Medical Device Regulation", "医疗器械条例"),
    "adm": (
        "automated decision", "automated decisions", "automated decision-making",
        "automated decision making", "solely automated", "自动化决策",
    ),
    "sensitive-data": (
        "sensitive data", "sensitive personal data", "sensitive personal information",
        "special category", "special categories", "special-category", "敏感个人信息", "敏感数据",
        "特殊类别",
    ),
    "legitimate-interest": (
        "legitimate interest", "legitimate interests", "正当利益", "合法利益",
    ),
    "legal-basis": (
        "legal basis", "lawful basis", "legal bases", "合法性基础", "法律依据", "合法依据",
    ),
    "anonymisation": (
        "anonymisation", "anonymization", "anonymised", "anonymized", "anonymise", "anonymize",
        "匿名化",
    ),
    "pseudonymisation": (
        "pseudonymisation", "pseudonymization", "pseudonymised", "pseudonymized", "去标识化",
        "假名化",
    ),
    "erasure": (
        "erasure", "erase", "right to be forgotten", "deletion", "delete", "删除", "擦除",
        "被遗忘权",
    ),
    "breach": ("data breach", "personal data breach", "数据泄露", "个人信息泄露"),
    "minors": (
        "child", "children", "minors", "kid", "kids", "儿童", "未成年人", "孩子", "小孩",
    ),
    "research-org": (
        "research organisation", "research organisations", "research organization",
        "research organizations", "research institution", "research institutions",
        "university", "universities", "科研机构", "研究机构", "高等学校", "高校", "大学",
    ),
    "health-data": (
        "health data", "medical data", "medical records", "patient records", "health records",
        "patient data", "健康数据", "医疗数据", "病历", "医疗健康信息", "健康医疗数据", "健康记录",
    ),
    "hospital": ("hospital", "hospitals", "clinic", "clinics", "医院", "医疗机构", "诊所"),
    "credit-scoring": (
        "credit score", "credit scoring", "creditworthiness", "信用评分", "信用评估",
    ),
    "aggregator": (
        "aggregator", "aggregation server", "聚合方", "聚合服务器",
    ),
    "export-cn": ("出境", "向境外提供", "跨境传输", "跨境流动"),
    "copyright": ("copyright", "著作权", "版权"),
    "model-update": ("model update", "model updates", "gradient", "gradients", "模型更新", "梯度"),
}  # fmt: skip


_HAN = re.compile(r"[\u3400-\u9fff]")


def _key(surface: str) -> str:
    """How a matched surface is looked up: lower case, hyphens and spaces alike."""
    return re.sub(r"[\s-]+", " ", surface.lower())


def _is_acronym(form: str) -> bool:
    """DPIA, SecAgg, DP: matched with their case, since "dp" or "dora" are other words."""
    return form.isupper() or re.fullmatch(r"[A-Z][a-z]+[A-Z][A-Za-z]*\+?", form) is not None


def _scanner(forms: list[str], flags: int = 0, edges: bool = True) -> re.Pattern[str]:
    # Longest first, so "数据保护影响评估" wins over parts of it; spaces also match hyphens.
    ordered = sorted(forms, key=len, reverse=True)
    body = "|".join(re.escape(f).replace(r"\ ", r"[\s-]+") for f in ordered)
    if edges:
        body = rf"(?<![A-Za-z0-9])(?:{body})(?![A-Za-z0-9])"
    return re.compile(body, flags)


_CONCEPT_OF = {_key(form): concept for concept, forms in CONCEPTS.items() for form in forms}
_ALL_FORMS = [form for forms in CONCEPTS.values() for form in forms]
_LATIN = [f for f in _ALL_FORMS if not _HAN.search(f)]
# Three scans (Chinese forms, case-sensitive acronyms, other Latin forms) are much faster than
# one alternation that checks a look-behind for every form at every position.
_SCANNERS = (
    _scanner([f for f in _ALL_FORMS if _HAN.search(f)], edges=False),
    _scanner([f for f in _LATIN if _is_acronym(f)]),
    _scanner([f for f in _LATIN if not _is_acronym(f)], re.IGNORECASE),
)


@lru_cache(maxsize=4096)
def _mentions(text: str) -> tuple[tuple[str, int, int], ...]:
    found = sorted((m.start(), -m.end(), m.group()) for sc in _SCANNERS for m in sc.finditer(text))
    out: list[tuple[str, int, int]] = []
    last = -1
    for start, neg_end, surface in found:  # leftmost first, then longest; overlaps dropped
        if start >= last:
            out.append((_CONCEPT_OF[_key(surface)], start, -neg_end))
            last = -neg_end
    return tuple(out)


def find_concepts(text: str) -> Iterator[tuple[str, int, int]]:
    """(concept id, start, end) of every concept mention, left to right, non-overlapping."""
    return iter(_mentions(text))


def concept_tokens(text: str) -> list[str]:
    """One index token per concept mention."""
    return [CONCEPT_PREFIX + concept for concept, _, _ in find_concepts(text)]


def without_concepts(text: str) -> tuple[str, list[str]]:
    """The text with concept mentions blanked out, and the concept tokens found in it."""
    parts, tokens, last = [], [], 0
    for concept, start, end in find_concepts(text):
        parts.append(text[last:start])
        parts.append(" ")
        tokens.append(CONCEPT_PREFIX + concept)
        last = end
    parts.append(text[last:])
    return "".join(parts), tokens
