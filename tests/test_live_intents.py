"""Questions about the running system are routed to the LiveSource, never answered from the KB."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from assistant.answering import Assistant
from assistant.knowledge_base import load_kb
from assistant.live_intents import LiveIntent, LiveSource, answer_live, detect_live_intent

KB = [
    {
        "id": "dp-privacy-budget",
        "topic": "differential-privacy",
        "jurisdiction": ["INTL"],
        "question": {"en": "What is a privacy budget?", "zh": "什么是隐私预算？"},
        "paraphrases": {
            "en": ["What does the privacy budget epsilon measure?"],
            "zh": ["隐私预算epsilon衡量的是什么？"],
        },
        "answer": {"en": "A cap on total privacy loss.", "zh": "隐私损失总量的上限。"},
        "citations": ["Dwork & Roth 2014"],
        "last_verified": "2026-11-20",
    }
]


class FakeLiveSource:
    """Records what it was asked and returns canned data (or None / an error)."""

    def __init__(
        self,
        run: Mapping[str, Any] | None = None,
        nodes: Mapping[str, Mapping[str, Any]] | None = None,
        compliance: Mapping[str, Any] | None = None,
        error: Exception | None = None,
    ) -> None:
        self.run, self.nodes, self.compliance, self.error = run, nodes or {}, compliance, error
        self.calls: list[tuple[str, Any]] = []

    def latest_run_summary(self) -> Mapping[str, Any] | None:
        self.calls.append(("latest_run_summary", None))
        if self.error:
            raise self.error
        return self.run

    def node_privacy(self, node: str) -> Mapping[str, Any] | None:
        self.calls.append(("node_privacy", node))
        return self.nodes.get(node)

    def latest_compliance(self, pack: str | None) -> Mapping[str, Any] | None:
        self.calls.append(("latest_compliance", pack))
        return self.compliance


RUN = {"run_id": "r-42", "status": "completed", "round": 10, "num_rounds": 10,
       "accuracy": 0.9137, "loss": 0.31, "epsilon": 3.2}  # fmt: skip
NODE3 = {"node": "3", "epsilon": 2.5, "delta": 1e-5, "budget": 10.0, "releases": 12}
VERDICT = {"run_id": "r-42", "pack": "pipl", "verdict": "fail", "failed": ["P10", "P16"],
           "warnings": ["P3"]}  # fmt: skip


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDGUARD_LLM_BASE_URL", raising=False)


@pytest.fixture
def kb(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "dp.yaml").write_text(yaml.safe_dump(KB, allow_unicode=True), "utf-8")
    return load_kb(tmp_path / "kb")


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How much privacy budget has node 3 spent?", LiveIntent("node_privacy", node="3")),
        ("What epsilon has node-7 used up so far?", LiveIntent("node_privacy", node="7")),
        ("Has client 12 exceeded its privacy budget?", LiveIntent("node_privacy", node="12")),
        ("节点3消耗了多少隐私预算？", LiveIntent("node_privacy", node="3")),
        ("三号节点的隐私预算还剩多少？", LiveIntent("node_privacy", node="3")),
        ("Is the latest run compliant with PIPL?", LiveIntent("compliance", pack="pipl")),
        ("Did the last run pass the GDPR checks?", LiveIntent("compliance", pack="gdpr")),
        ("最近一次训练符合个人信息保护法吗？", LiveIntent("compliance", pack="pipl")),
        ("本轮训练的准确率是多少？", LiveIntent("accuracy")),
        ("What is the accuracy of the latest round?", LiveIntent("accuracy")),
        ("How much privacy budget has the current run spent?", LiveIntent("run_privacy")),
        ("What is the status of the latest run?", LiveIntent("run_status")),
        ("最近一次训练进度如何？", LiveIntent("run_status")),
    ],
)
def test_live_questions_are_detected(question: str, expected: LiveIntent) -> None:
    assert detect_live_intent(question) == expected


@pytest.mark.parametrize(
    "question",
    [
        "What is a privacy budget?",
        "差分隐私中的隐私预算是什么意思？",
        "Is federated learning compliant with the GDPR by default?",
        "How should a node choose epsilon?",
        "Does the EU AI Act require logs to be kept for six months?",
        "个人信息出境需要什么程序？",
    ],
)
def test_knowledge_questions_are_not_live(question: str) -> None:
    assert detect_live_intent(question) is None


def test_fake_satisfies_the_protocol() -> None:
    assert isinstance(FakeLiveSource(), LiveSource)


def test_node_privacy_routed_and_answered_in_both_languages(kb) -> None:  # type: ignore[no-untyped-def]
    live = FakeLiveSource(nodes={"3": NODE3})
    assistant = Assistant(kb, live=live)
    en = assistant.ask("How much privacy budget has node 3 spent?")
    assert live.calls == [("node_privacy", "3")]
    assert en.kind == "live" and not en.abstained and en.confidence == 1.0
    assert "Node 3" in en.answer and "ε = 2.50" in en.answer and "25.0%" in en.answer
    assert en.sources[0].id == "live:privacy-ledger" and en.sources[0].citation == "run store"
    zh = assistant.ask("节点3消耗了多少隐私预算？")
    assert zh.lang == "zh" and "节点 3" in zh.answer and "ε = 2.50" in zh.answer


def test_compliance_verdict_lists_failed_rules(kb) -> None:  # type: ignore[no-untyped-def]
    live = FakeLiveSource(compliance=VERDICT)
    answer = Assistant(kb, live=live).ask("Is the latest run compliant with PIPL?")
    assert live.calls == [("latest_compliance", "pipl")]
    assert "FAIL" in answer.answer and "P10, P16" in answer.answer and "P3" in answer.answer
    assert "PIPL" in answer.answer and "r-42" in answer.answer
    zh = Assistant(kb, live=live).ask("最近一次训练符合个人信息保护法吗？")
    assert "不通过" in zh.answer and "P10、P16" in zh.answer


def test_accuracy_from_latest_run_summary(kb) -> None:  # type: ignore[no-untyped-def]
    answer = Assistant(kb, live=FakeLiveSource(run=RUN)).ask("本轮训练的准确率是多少？")
    assert answer.lang == "zh" and "91.4%" in answer.answer and "第 10 轮" in answer.answer
    status = Assistant(kb, live=FakeLiveSource(run=RUN)).ask(
        "What is the status of the latest run?"
    )
    assert "completed" in status.answer and "10/10" in status.answer


def test_no_live_source_explains_how_to_start_a_run(kb) -> None:  # type: ignore[no-untyped-def]
    answer = Assistant(kb).ask("How much privacy budget has node 3 spent?")
    assert answer.kind == "live" and answer.abstained and "make demo" in answer.answer
    assert "make demo" in Assistant(kb).ask("本轮训练的准确率是多少？").answer


def test_source_without_data_says_so(kb) -> None:  # type: ignore[no-untyped-def]
    live = FakeLiveSource()
    assistant = Assistant(kb, live=live)
    assert (
        "No run recorded yet" in assistant.ask("What is the accuracy of the latest round?").answer
    )
    node = assistant.ask("How much budget has node 9 spent?")
    assert node.abstained and "node 9" in node.answer
    assert "No policy verdict" in assistant.ask("Is the latest run compliant with GDPR?").answer


def test_summary_without_the_metric_is_not_invented(kb) -> None:  # type: ignore[no-untyped-def]
    live = FakeLiveSource(run={"run_id": "r-1", "status": "running", "round": 0})
    answer = Assistant(kb, live=live).ask("What is the accuracy of the latest round?")
    assert answer.abstained and "%" not in answer.answer


def test_broken_source_gives_a_message_not_a_traceback() -> None:
    reply = answer_live(
        LiveIntent("accuracy"), FakeLiveSource(error=OSError("database is locked")), "en"
    )
    assert not reply.found and "database is locked" in reply.text


def test_knowledge_question_still_uses_the_kb_with_a_live_source(kb) -> None:  # type: ignore[no-untyped-def]
    live = FakeLiveSource(run=RUN)
    answer = Assistant(kb, live=live).ask("What is a privacy budget?")
    assert answer.kind != "live" and live.calls == []


def test_no_knowledge_base_question_is_mistaken_for_a_live_one() -> None:
    """Every KB question and paraphrase must reach the KB, not the run store."""
    misrouted = [
        (e.id, text)
        for e in load_kb()
        for text in [*e.question.values(), *e.paraphrases["en"], *e.paraphrases["zh"]]
        if detect_live_intent(text) is not None
    ]
    assert misrouted == []
