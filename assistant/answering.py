"""The assistant's public entry point: `Assistant().ask(question) -> Answer`.

Routing: live questions about the running system go to the LiveSource; everything else is
answered from the single best knowledge-base entry, in the question's language, with that
entry's citations. When retrieval is not confident (or the question is off topic) the assistant
abstains and suggests related topics instead of guessing: a wrong legal answer is worse than none.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from assistant.freshness import update_note
from assistant.knowledge_base import Entry, KnowledgeBase, load_kb
from assistant.language import Lang, detect_language, normalise_lang
from assistant.live_intents import LiveSource, answer_live, detect_live_intent
from assistant.llm_rewrite import LLMRewriter
from assistant.retrieval import Hit, get_index

MAX_QUESTION_CHARS = 2000

# Confidence = logistic(w . features + bias) over `confidence_features` of the top hit:
#   coverage           idf-weighted share of the question's content words the entry mentions
#   question_coverage  the same, counting only the entry's questions/paraphrases (a question
#                      whose words occur only in some answer is usually off topic)
#   log1p(strength)    absolute evidence: BM25 score over the largest idf (KB-size independent)
#   margin             relative lead over the runner-up
#   is_zh              Chinese questions yield more tokens, so their scores run higher
# Fitted (logistic regression, C=1) on tests/data/assistant_eval.yaml with
# `scripts/eval_assistant.py --fit`, which prints the leave-one-out accuracy (0.942 at fit time,
# 2026-12-01, 131 entries, after the issue-14 re-ranking). THRESHOLD 0.5 is the natural cut for
# a probability: ambiguous near-domain questions ("how do I make my model more accurate?") score
# below it and get no legal answer, because abstaining beats guessing.
CONF_WEIGHTS = (1.65, 1.32, 2.1, 0.88, -0.67)
CONF_BIAS = -4.47
THRESHOLD = 0.5

DISCLAIMER: dict[Lang, str] = {
    "en": "General information, not legal advice: check the cited sources and ask counsel "
    "about your own case.",
    "zh": "以上为一般性信息，不构成法律意见；请核对所引来源，具体情况请咨询专业律师。",
}
TOPIC_LABELS: dict[str, dict[Lang, str]] = {
    "personal-data": {"en": "personal vs anonymised data", "zh": "个人信息与匿名化"},
    "legal-bases": {"en": "legal bases and consent", "zh": "合法性基础与同意"},
    "sensitive-data": {"en": "sensitive data and minors", "zh": "敏感个人信息与未成年人"},
    "impact-assessment": {"en": "DPIA / PIPIA impact assessments", "zh": "个人信息保护影响评估"},
    "cross-border": {"en": "cross-border data transfers", "zh": "数据出境"},
    "retention": {"en": "retention, erasure and unlearning", "zh": "存储期限、删除与遗忘"},
    "security": {"en": "security of processing", "zh": "数据安全措施"},
    "anonymisation": {"en": "whether DP or FL anonymise data", "zh": "隐私技术能否匿名化"},
    "cn-genai": {"en": "China's generative-AI rules", "zh": "中国生成式人工智能规定"},
    "eu-ai-act": {"en": "the EU AI Act", "zh": "欧盟《人工智能法》"},
    "copyright": {"en": "copyright and training data", "zh": "著作权与训练数据"},
    "ai-output-ownership": {"en": "who owns AI output", "zh": "AI 生成内容的权属"},
    "patents": {"en": "patents and AI inventions", "zh": "专利与 AI 发明"},
    "trade-secrets": {"en": "trade secrets and model weights", "zh": "商业秘密与模型权重"},
    "licences": {"en": "model and dataset licences", "zh": "模型与数据集许可证"},
    "differential-privacy": {"en": "differential privacy in plain words", "zh": "差分隐私通俗解释"},
    "automated-decisions": {"en": "automated decision-making", "zh": "自动化决策"},
    "roles": {"en": "controller and processor roles", "zh": "数据处理中的角色分工"},
    "fedguard": {"en": "how fedguard's privacy controls work", "zh": "fedguard 的隐私控制"},
    "health": {"en": "hospitals and health data", "zh": "医院与健康数据"},
    "finance": {"en": "banks and financial data", "zh": "银行与金融数据"},
    "accountability": {"en": "officers, records, audits and liability", "zh": "负责人、记录与责任"},
}
# Suggested when nothing in the knowledge base is even close to the question.
DEFAULT_TOPICS = ("personal-data", "cross-border", "differential-privacy", "copyright")
_ABSTAIN_HEAD: dict[Lang, str] = {
    "en": "I don't know: the knowledge base has no reliable answer to that question, and I will "
    "not guess on legal matters.",
    "zh": "抱歉，我不知道：知识库中没有这个问题的可靠答案，法律问题我不做猜测。",
}
_ABSTAIN_TAIL: dict[Lang, str] = {"en": "You could ask about:", "zh": "您可以问问这些主题："}


class AskError(ValueError):
    """The question itself is unusable (empty, too long, wrong type)."""


@dataclass(frozen=True)
class Source:
    """One citation backing an answer, with the KB entry (or live source) it comes from."""

    id: str
    title: str
    citation: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "citation": self.citation}


@dataclass(frozen=True)
class Answer:
    """What `ask` returns; `to_dict`/`to_json` give the stable five-key public shape."""

    answer: str
    lang: Lang
    confidence: float
    abstained: bool
    sources: tuple[Source, ...] = ()
    disclaimer: str = ""
    related_topics: tuple[str, ...] = ()  # topic ids; label them with topic_label()
    entry_id: str | None = None  # the KB entry answered from (None when abstaining or live)
    jurisdiction: tuple[str, ...] = ()
    last_verified: str | None = None
    kind: str = "kb"  # kb | live | abstain
    rewritten: bool = False  # True when an LLM reworded the entry's answer
    alternatives: tuple[str, ...] = field(default=(), repr=False)  # next-best entry ids
    update_note: str = ""  # "check for updates" note when the entry may be out of date

    def full_text(self) -> str:
        """The answer followed by its update note, if any (what a plain reader should see)."""
        return f"{self.answer}\n\n{self.update_note}" if self.update_note else self.answer

    def to_dict(self) -> dict[str, Any]:
        """Exactly {"answer", "lang", "confidence", "abstained", "sources"}; the answer text
        includes the update note, so JSON readers see it too."""
        return {
            "answer": self.full_text(),
            "lang": self.lang,
            "confidence": round(self.confidence, 3),
            "abstained": self.abstained,
            "sources": [s.to_dict() for s in self.sources],
        }

    def to_json(self) -> str:
        """`to_dict` as one line of JSON (UTF-8 text, Chinese not escaped)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)


def topic_label(topic: str, lang: Lang) -> str:
    """Human-readable name of a KB topic in the given language."""
    return TOPIC_LABELS.get(topic, {"en": topic, "zh": topic})[lang]


def confidence_features(hits: Sequence[Hit], lang: Lang) -> tuple[float, ...]:
    """(coverage, question_coverage, log1p(strength), margin, is_zh) of the top hit.

    All zero when nothing matched. See CONF_WEIGHTS for what each feature captures.
    """
    if not hits:
        return (0.0,) * len(CONF_WEIGHTS)
    top = hits[0]
    runner_up = hits[1].score if len(hits) > 1 else 0.0
    margin = (top.score - runner_up) / top.score if top.score > 0 else 0.0
    return (
        top.coverage,
        top.question_coverage,
        math.log1p(top.strength),
        margin,
        1.0 if lang == "zh" else 0.0,
    )


def confidence(hits: Sequence[Hit], lang: Lang) -> float:
    """Probability-like score in [0, 1] that the top entry answers the question."""
    if not hits:
        return 0.0
    features = confidence_features(hits, lang)
    z = CONF_BIAS + sum(w * f for w, f in zip(CONF_WEIGHTS, features, strict=True))
    return 1.0 / (1.0 + math.exp(-z))


class Assistant:
    """Answers compliance questions from the KB and run questions from a LiveSource.

    `ask` only reads the shared index, so one instance can serve many threads (Streamlit
    sessions). The index is cached per process, so creating more instances is cheap too.
    """

    def __init__(
        self,
        kb: KnowledgeBase | None = None,
        live: LiveSource | None = None,
        *,
        threshold: float = THRESHOLD,
        rewriter: LLMRewriter | None = None,
        use_env_llm: bool = True,
        today: dt.date | None = None,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is outside [0, 1]; use e.g. {THRESHOLD}")
        self.kb = kb if kb is not None else load_kb()
        self.live = live
        self.threshold = threshold
        self.rewriter = rewriter or (LLMRewriter.from_env() if use_env_llm else None)
        self.index = get_index(self.kb)
        self._today = today  # None: the current date at each question (a long-running UI)

    def ask(self, question: str, lang: str | None = None) -> Answer:
        """Answer `question`; `lang` ("zh"/"en") forces the answer language."""
        if not isinstance(question, str):
            raise AskError(f"question must be text, got {type(question).__name__}")
        question = question.strip()
        if not question:
            raise AskError("question is empty; type a question")
        if len(question) > MAX_QUESTION_CHARS:
            raise AskError(
                f"question is {len(question)} characters long; shorten it to at most "
                f"{MAX_QUESTION_CHARS}"
            )
        out_lang: Lang = normalise_lang(lang) or detect_language(question)
        intent = detect_live_intent(question)
        if intent is not None:
            reply = answer_live(intent, self.live, out_lang)
            return Answer(
                answer=reply.text,
                lang=out_lang,
                confidence=1.0 if reply.found else 0.0,
                abstained=not reply.found,
                sources=tuple(Source(**s) for s in reply.sources),
                disclaimer=DISCLAIMER[out_lang],
                kind="live",
            )
        hits = self.index.search(question, k=6)
        score = confidence(hits, detect_language(question))
        if score < self.threshold:
            return self._abstain(hits, score, out_lang)
        return self._answer(question, hits, score, out_lang)

    def _answer(self, question: str, hits: Sequence[Hit], score: float, lang: Lang) -> Answer:
        entry = hits[0].entry
        text, rewritten = entry.answer[lang], False
        if self.rewriter is not None:
            new = self.rewriter.rewrite(question, text, entry.citations, lang)
            if new is not None:
                text, rewritten = new, True
        related = [h.entry.topic for h in hits[1:] if h.entry.topic != entry.topic]
        return Answer(
            answer=text,
            lang=lang,
            confidence=score,
            abstained=False,
            sources=tuple(Source(entry.id, entry.title(lang), c) for c in entry.citations),
            disclaimer=DISCLAIMER[lang],
            related_topics=tuple(dict.fromkeys(related))[:3],
            entry_id=entry.id,
            jurisdiction=entry.jurisdiction,
            last_verified=entry.last_verified.isoformat(),
            kind="kb",
            rewritten=rewritten,
            alternatives=tuple(h.entry.id for h in hits[1:4]),
            update_note=update_note(entry, lang, self._today or dt.date.today()),
        )

    def _abstain(self, hits: Sequence[Hit], score: float, lang: Lang) -> Answer:
        topics = self._suggest_topics(hits)
        lines = [_ABSTAIN_HEAD[lang]]
        if topics:
            lines.append(_ABSTAIN_TAIL[lang])
            for topic in topics:
                example = self._example(topic, hits, lang)
                line = f"- {topic_label(topic, lang)}"
                if example:
                    line += f' (e.g. "{example}")' if lang == "en" else f"（例如：“{example}”）"
                lines.append(line)
        return Answer(
            answer="\n".join(lines),
            lang=lang,
            confidence=score,
            abstained=True,
            disclaimer=DISCLAIMER[lang],
            related_topics=tuple(topics),
            kind="abstain",
            alternatives=tuple(h.entry.id for h in hits[:3]),
        )

    def _suggest_topics(self, hits: Sequence[Hit]) -> list[str]:
        """2-3 topics: those of the nearest entries, topped up with common starting points."""
        present = set(self.kb.topics())
        near = [h.entry.topic for h in hits if h.coverage >= 0.2]
        ordered = list(dict.fromkeys([*near, *DEFAULT_TOPICS, *self.kb.topics()]))
        return [t for t in ordered if t in present][:3]

    def _example(self, topic: str, hits: Sequence[Hit], lang: Lang) -> str | None:
        """An example question for the topic: the nearest entry's, else the topic's first."""
        entry: Entry | None = next((h.entry for h in hits if h.entry.topic == topic), None)
        if entry is None:
            entry = next((e for e in self.kb if e.topic == topic), None)
        return None if entry is None else entry.question[lang]
