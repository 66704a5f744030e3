"""Questions about the running system ("how much budget has node 3 spent?", "本轮准确率？").

These are answered from live data, never from the knowledge base: a static answer to "is the
latest run compliant?" would be a made-up fact. Detection is keyword/regex based and needs an
*anchor* (a node id, or "latest/this run/round", "本轮/最近一次…") plus a *metric*, so general
questions such as "what is a privacy budget?" still go to the knowledge base.

`LiveSource` is the read-only interface the run store adapter implements. Its methods return
small dicts (keys documented on each method) or None when there is no data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from assistant.language import Lang

IntentKind = Literal["node_privacy", "run_privacy", "compliance", "accuracy", "run_status"]


@runtime_checkable
class LiveSource(Protocol):
    """Read-only view of the run store and privacy ledger for the assistant."""

    def latest_run_summary(self) -> Mapping[str, Any] | None:
        """Latest run, or None if no run was recorded.

        Keys (all optional except run_id): run_id, status (running|completed|failed|stopped),
        round (last finished round), num_rounds, accuracy (0..1, latest round), loss,
        epsilon (largest per-node epsilon so far), delta, nodes (number of nodes).
        """

    def node_privacy(self, node: str) -> Mapping[str, Any] | None:
        """Privacy spent by one node (as named by the user, e.g. "3"), or None if unknown.

        Keys: node, epsilon (spent), delta, budget (epsilon cap, optional), releases (optional),
        accountant (optional), run_id (optional).
        """

    def latest_compliance(self, pack: str | None) -> Mapping[str, Any] | None:
        """Policy verdict of the latest run for a pack ("gdpr", "pipl", "eu-ai-act",
        "cn-genai"; None = the run's own packs), or None if none was recorded.

        Keys: run_id, pack, verdict (pass|warn|fail), failed (rule ids), warnings (rule ids).
        """


@dataclass(frozen=True)
class LiveIntent:
    """What the user asked about the running system."""

    kind: IntentKind
    node: str | None = None
    pack: str | None = None


@dataclass(frozen=True)
class LiveReply:
    """Composed answer text; `found` is False when there was no data to answer from."""

    text: str
    found: bool
    sources: list[dict[str, str]] = field(default_factory=list)


# Canonical pack names passed to LiveSource.latest_compliance, with the words that select them.
PACK_ALIASES: dict[str, tuple[str, ...]] = {
    "gdpr": ("gdpr", "通用数据保护条例", "欧盟数据保护"),
    "pipl": ("pipl", "个人信息保护法", "个保法"),
    "eu-ai-act": ("ai act", "ai-act", "人工智能法", "人工智能法案"),
    "cn-genai": ("genai measures", "generative ai measures", "生成式人工智能", "生成式ai"),
}
PACK_NAMES: dict[str, dict[str, str]] = {
    "gdpr": {"en": "GDPR", "zh": "GDPR"},
    "pipl": {"en": "PIPL", "zh": "《个人信息保护法》"},
    "eu-ai-act": {"en": "EU AI Act", "zh": "欧盟《人工智能法》"},
    "cn-genai": {"en": "China GenAI Measures", "zh": "《生成式人工智能服务管理暂行办法》"},
}

_ZH_NUM = "零一二三四五六七八九十"
_NUM = r"[0-9]+|[零一二三四五六七八九十]+"
_NODE_PATTERNS = (
    re.compile(
        r"\b(?:node|client|site)[\s_#-]*(?:no\.?\s*|number\s*|id\s*)?([A-Za-z]*[0-9][\w-]*)\b",
        re.I,
    ),
    re.compile(r"(?:节点|客户端|参与方)\s*[#＃]?\s*(" + _NUM + r"|[A-Za-z]*[0-9][\w-]*)"),
    re.compile(r"第?\s*(" + _NUM + r")\s*(?:号|个)?\s*(?:节点|客户端|参与方)"),
)
_RUN_ANCHOR = re.compile(
    r"\b(?:latest|last|current|most\s+recent|this|ongoing|running)\s+"
    r"(?:(?:training|federated|fl)\s+)?(?:run|round|training|experiment|job)s?\b"
    r"|本轮|这一?轮|上一轮|最近一轮|最新一轮|最后一轮|当前轮|最近一次|最新一次|上一次|上次|这次|本次"
    r"|当前的?(?:训练|运行|任务)|目前的?(?:训练|运行)|最新的?(?:训练|运行)|最近的?(?:训练|运行)",
    re.I,
)
_PRIVACY = re.compile(
    r"privacy\s+budget|budget|epsilon|ε|privacy\s+loss|\bspent\b|\bspend|\bused\s+up"
    r"|隐私预算|预算|隐私损失|花费|消耗|花了多少|用了多少|用掉",
    re.I,
)
_COMPLIANCE = re.compile(
    r"complian|\bpass(?:ed|es)?\b|\bfail(?:ed|s)?\b|violat|verdict|\blawful"
    r"|合规|违规|符合|通过|策略检查|政策检查|合法",
    re.I,
)
_ACCURACY = re.compile(
    r"accura|\bloss\b|performance|how\s+well|准确率|准确度|精度|正确率|损失|效果", re.I
)
_STATUS = re.compile(
    r"status|finished|complete[d]?\b|running|progress|how\s+many\s+rounds"
    r"|状态|进度|完成|多少轮|几轮|结束",
    re.I,
)


def _zh_number(text: str) -> str:
    """ "三" -> "3", "十二" -> "12"; digits pass through (enough for node numbers up to 99)."""
    if text.isdigit() or not all(c in _ZH_NUM for c in text):
        return text
    if "十" not in text:
        return "".join(str(_ZH_NUM.index(c)) for c in text)
    tens, _, ones = text.partition("十")
    value = (_ZH_NUM.index(tens) if tens else 1) * 10 + (_ZH_NUM.index(ones) if ones else 0)
    return str(value)


def _node(question: str) -> str | None:
    for pattern in _NODE_PATTERNS:
        match = pattern.search(question)
        if match:
            return _zh_number(match.group(1))
    return None


def _pack(question: str) -> str | None:
    low = question.lower()
    for pack, aliases in PACK_ALIASES.items():
        if any(alias in low for alias in aliases):
            return pack
    return None


def detect_live_intent(question: str) -> LiveIntent | None:
    """The live intent of a question, or None if it is a knowledge question."""
    node = _node(question)
    if node is not None and (_PRIVACY.search(question) or not _COMPLIANCE.search(question)):
        return LiveIntent("node_privacy", node=node)
    if node is None and not _RUN_ANCHOR.search(question):
        return None
    if _COMPLIANCE.search(question):
        return LiveIntent("compliance", pack=_pack(question))
    if _ACCURACY.search(question):
        return LiveIntent("accuracy")
    if _PRIVACY.search(question):
        return LiveIntent("run_privacy")
    if _STATUS.search(question):
        return LiveIntent("run_status")
    return None


# --- composing answers -------------------------------------------------------------------

_NO_SOURCE = {
    "en": "I cannot see a running system: no run store is connected to this assistant. "
    "Start a run with `make demo`, then ask again in the fedguard UI.",
    "zh": "我看不到正在运行的系统：本助手没有连接运行记录库。请先用 `make demo` 启动一次训练，"
    "再在 fedguard 界面中提问。",
}
_NO_RUN = {
    "en": "No run recorded yet; start one with `make demo`.",
    "zh": "还没有任何训练记录；请先运行 `make demo` 启动一次训练。",
}
_SOURCE_ERROR = {
    "en": "I could not read the run store ({error}); check that the run store path is right.",
    "zh": "无法读取运行记录库（{error}）；请检查运行记录库的路径是否正确。",
}
_VERDICT = {
    "pass": {"en": "PASS", "zh": "通过"},
    "warn": {"en": "PASS WITH WARNINGS", "zh": "通过（有警告）"},
    "fail": {"en": "FAIL", "zh": "不通过"},
}


def _pct(value: Any) -> str:
    number = float(value)
    return f"{number * 100:.1f}%" if number <= 1.0 else f"{number:.1f}%"


def _num(value: Any) -> str:
    number = float(value)
    return f"{number:.3g}" if abs(number) < 1e-3 else f"{number:.2f}"


def _run_ref(data: Mapping[str, Any], lang: Lang) -> str:
    run_id = data.get("run_id")
    if not run_id:
        return ""
    return f" (run {run_id})" if lang == "en" else f"（运行 {run_id}）"


def _node_privacy(data: Mapping[str, Any], node: str, lang: Lang) -> str:
    eps, delta, budget = data.get("epsilon"), data.get("delta"), data.get("budget")
    releases = data.get("releases")
    if eps is None:
        raise KeyError("epsilon")
    if lang == "en":
        text = f"Node {node} has spent ε = {_num(eps)}"
        if delta is not None:
            text += f" at δ = {float(delta):.0e}"
        if budget:
            text += f", {_pct(float(eps) / float(budget))} of its budget of ε = {_num(budget)}"
        if releases:
            text += f", over {int(releases)} training releases"
        return text + ". Lower ε means stronger privacy."
    text = f"节点 {node} 已消耗隐私预算 ε = {_num(eps)}"
    if delta is not None:
        text += f"（δ = {float(delta):.0e}）"
    if budget:
        text += f"，占其预算 ε = {_num(budget)} 的 {_pct(float(eps) / float(budget))}"
    if releases:
        text += f"，共 {int(releases)} 次训练发布"
    return text + "。ε 越小，隐私保护越强。"


def _compliance(data: Mapping[str, Any], pack: str | None, lang: Lang) -> str:
    verdict = str(data.get("verdict", "")).lower()
    label = _VERDICT.get(verdict, {"en": verdict.upper() or "UNKNOWN", "zh": verdict or "未知"})
    pack_key = str(data.get("pack") or pack or "")
    pack_name = PACK_NAMES.get(pack_key, {"en": pack_key, "zh": pack_key})[lang]
    failed = [str(r) for r in data.get("failed") or []]
    warnings = [str(r) for r in data.get("warnings") or []]
    if lang == "en":
        scope = f" against the {pack_name} policy pack" if pack_name else ""
        text = f"The latest run{_run_ref(data, lang)}{scope}: {label[lang]}."
        if failed:
            text += f" Failed rules: {', '.join(failed)}."
        if warnings:
            text += f" Warnings: {', '.join(warnings)}."
        return text + " A verdict checks fedguard's configured rules; it is not a legal opinion."
    scope = f"在 {pack_name} 策略包下" if pack_name else ""
    text = f"最近一次运行{_run_ref(data, lang)}{scope}的结论：{label[lang]}。"
    if failed:
        text += f"未通过的规则：{'、'.join(failed)}。"
    if warnings:
        text += f"警告：{'、'.join(warnings)}。"
    return text + "策略结论只检查 fedguard 配置的规则，不构成法律意见。"


def _accuracy(data: Mapping[str, Any], lang: Lang) -> str | None:
    acc, loss, rnd = data.get("accuracy"), data.get("loss"), data.get("round")
    if acc is None and loss is None:
        return None
    if lang == "en":
        parts = [f"accuracy {_pct(acc)}"] if acc is not None else []
        parts += [f"loss {_num(loss)}"] if loss is not None else []
        where = f"round {rnd} of the latest run" if rnd else "the latest run"
        return f"In {where}{_run_ref(data, lang)}: {', '.join(parts)}."
    parts = [f"准确率 {_pct(acc)}"] if acc is not None else []
    parts += [f"损失 {_num(loss)}"] if loss is not None else []
    where = f"最近一次运行的第 {rnd} 轮" if rnd else "最近一次运行"
    return f"{where}{_run_ref(data, lang)}：{'，'.join(parts)}。"


def _run_privacy(data: Mapping[str, Any], lang: Lang) -> str | None:
    eps = data.get("epsilon")
    if eps is None:
        return None
    if lang == "en":
        return (
            f"The latest run{_run_ref(data, lang)} has spent up to ε = {_num(eps)} per node. "
            "Ask about a specific node (e.g. 'node 3') for its own ledger."
        )
    return (
        f"最近一次运行{_run_ref(data, lang)}中，单个节点最多已消耗 ε = {_num(eps)}。"
        "可以询问具体节点（例如“节点 3”）查看其隐私账本。"
    )


def _status(data: Mapping[str, Any], lang: Lang) -> str:
    status, rnd, total = data.get("status", "?"), data.get("round"), data.get("num_rounds")
    done = "?" if rnd is None else str(rnd)
    progress = f"{done}/{total}" if total else done
    if lang == "en":
        return f"The latest run{_run_ref(data, lang)} is {status}; rounds finished: {progress}."
    return f"最近一次运行{_run_ref(data, lang)}状态：{status}；已完成轮次：{progress}。"


def answer_live(intent: LiveIntent, source: LiveSource | None, lang: Lang) -> LiveReply:
    """Answer a live question from `source`, or explain helpfully why there is no data."""
    if source is None:
        return LiveReply(_NO_SOURCE[lang], found=False)
    try:
        return _answer_live(intent, source, lang)
    except Exception as exc:  # noqa: BLE001 - a broken store must not crash the assistant
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return LiveReply(_SOURCE_ERROR[lang].format(error=error), found=False)


def _answer_live(intent: LiveIntent, source: LiveSource, lang: Lang) -> LiveReply:
    if intent.kind == "node_privacy":
        node = intent.node or "?"
        data = source.node_privacy(node)
        if not data:
            text = {
                "en": f"No privacy ledger entries for node {node} yet. Check the node id, or "
                "train a round first (`make demo`).",
                "zh": f"节点 {node} 还没有隐私账本记录。请检查节点编号，"
                "或先训练一轮（`make demo`）。",
            }[lang]
            return LiveReply(text, found=False)
        title = {"en": f"Privacy ledger, node {node}", "zh": f"隐私账本：节点 {node}"}[lang]
        return LiveReply(
            _node_privacy(data, node, lang),
            found=True,
            sources=[_source("live:privacy-ledger", title, data)],
        )
    if intent.kind == "compliance":
        data = source.latest_compliance(intent.pack)
        if not data:
            text = {
                "en": "No policy verdict recorded for the latest run yet; start a run with "
                "`make demo` (or check it with `fedguard-policy`).",
                "zh": "最近一次运行还没有策略检查结论；请用 `make demo` 启动训练"
                "（或用 `fedguard-policy` 检查）。",
            }[lang]
            return LiveReply(text, found=False)
        title = {"en": "Policy verdict, latest run", "zh": "策略结论：最近一次运行"}[lang]
        return LiveReply(
            _compliance(data, intent.pack, lang),
            found=True,
            sources=[_source("live:policy-verdict", title, data)],
        )
    data = source.latest_run_summary()
    if not data:
        return LiveReply(_NO_RUN[lang], found=False)
    if intent.kind == "accuracy":
        text = _accuracy(data, lang)
    elif intent.kind == "run_privacy":
        text = _run_privacy(data, lang)
    else:
        text = _status(data, lang)
    if text is None:
        text = {
            "en": "The latest run has not reported that yet; wait for a round to finish.",
            "zh": "最近一次运行还没有报告该指标；请等待一轮训练结束。",
        }[lang]
        return LiveReply(text, found=False)
    title = {"en": "Run store, latest run", "zh": "运行记录：最近一次运行"}[lang]
    return LiveReply(text, found=True, sources=[_source("live:run-store", title, data)])


def _source(source_id: str, title: str, data: Mapping[str, Any]) -> dict[str, str]:
    run_id = data.get("run_id")
    return {"id": source_id, "title": title, "citation": f"run {run_id}" if run_id else "run store"}
