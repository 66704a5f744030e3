"""Assistant page: chat with the compliance assistant; every answer shows its sources.

History lives in `st.session_state` as plain dicts (not `Answer` objects) so a rerun only
re-draws it. User text and answers are shown escaped: a question containing Markdown or HTML
is displayed as typed and never rendered.
"""

from __future__ import annotations

import logging
from typing import Any

import streamlit as st

from assistant.answering import MAX_QUESTION_CHARS, Answer, AskError, Assistant, topic_label
from assistant.live_source import RunStoreLiveSource
from assistant.llm_rewrite import LLMConfigError
from assistant.ui.data import data_dir
from assistant.ui.text import md_escape, strip_control

log = logging.getLogger(__name__)
HISTORY_KEY = "chat_history"
MAX_TURNS = 50  # older turns are dropped so a long session stays fast
_LABELS = {
    "en": {"sources": "Sources", "confidence": "Confidence", "abstained": "Abstained",
           "live": "From the run store", "related": "Related topics"},
    "zh": {"sources": "来源", "confidence": "置信度", "abstained": "未作答",
           "live": "来自运行记录库", "related": "相关主题"},
}
EXAMPLES = (
    "Do I need a DPIA for federated learning?",
    "模型更新会被视为个人信息吗？",
    "How much privacy budget has node 1 spent?",
)


@st.cache_resource(show_spinner="Loading the knowledge base…")
def get_assistant(directory: str) -> Assistant:
    """One Assistant (knowledge base + index) per run store, shared by all sessions.

    One Chinese question warms the word segmenter and the caches, so no user pays for them.
    """
    assistant = Assistant(live=RunStoreLiveSource(directory))
    assistant.index.search("什么是差分隐私？", k=1)  # no answer composed: no LLM call
    return assistant


def _answer_turn(answer: Answer) -> dict[str, Any]:
    return {
        "role": "assistant",
        "text": answer.answer,
        "lang": answer.lang,
        "confidence": answer.confidence,
        "abstained": answer.abstained,
        "kind": answer.kind,
        "sources": [s.to_dict() for s in answer.sources],
        "related": [topic_label(t, answer.lang) for t in answer.related_topics],
        "disclaimer": answer.disclaimer,
        "update_note": answer.update_note,
    }


def _error_turn(message: str) -> dict[str, Any]:
    return {"role": "assistant", "error": message}


def respond(question: str) -> list[dict[str, Any]]:
    """The turns (user, assistant) a submitted question adds to the history."""
    cleaned, removed = strip_control(question)
    cleaned = cleaned.strip()
    user: dict[str, Any] = {"role": "user", "text": cleaned}
    if removed:
        user["note"] = f"{removed} control character(s) removed from the question."
    if not cleaned:
        return [user, _error_turn("The question is empty: type a question.")]
    if len(cleaned) > MAX_QUESTION_CHARS:
        return [user, _error_turn(
            f"The question is {len(cleaned)} characters long; please shorten it to at most "
            f"{MAX_QUESTION_CHARS} characters."
        )]
    try:
        answer = get_assistant(str(data_dir())).ask(cleaned)
    except (AskError, LLMConfigError) as exc:  # both carry a one-line message for the user
        return [user, _error_turn(str(exc))]
    except Exception as exc:  # noqa: BLE001 - the page must show a message, not a traceback
        log.exception("assistant failed")
        return [user, _error_turn(
            f"The assistant could not answer ({type(exc).__name__}); please try again or "
            "rephrase the question."
        )]
    return [user, _answer_turn(answer)]


def _show(turn: dict[str, Any]) -> None:
    if turn["role"] == "user":
        with st.chat_message("user"):
            st.markdown(md_escape(turn["text"], limit=600))
            if turn.get("note"):
                st.caption(turn["note"])
        return
    with st.chat_message("assistant"):
        if "error" in turn:
            st.error(md_escape(turn["error"]))
            return
        labels = _LABELS.get(turn["lang"], _LABELS["en"])
        if turn["abstained"]:
            st.warning(md_escape(turn["text"]))
        else:
            st.markdown(md_escape(turn["text"]))
        if turn.get("update_note"):
            st.info(md_escape(turn["update_note"]))
        if turn["sources"]:
            lines = [f"**{labels['sources']}**"]
            for i, src in enumerate(turn["sources"], 1):
                lines.append(
                    f"{i}\\. {md_escape(src['citation'])} — {md_escape(src['title'])} "
                    f"\\({md_escape(src['id'])}\\)"
                )
            st.markdown("  \n".join(lines))
        meta = [f"{labels['confidence']}: {turn['confidence']:.2f}"]
        if turn["abstained"]:
            meta.append(labels["abstained"])
        if turn["kind"] == "live":
            meta.append(labels["live"])
        if turn["related"] and not turn["abstained"]:
            meta.append(f"{labels['related']}: " + "; ".join(turn["related"]))
        st.caption(md_escape(" · ".join(meta)))
        st.caption(md_escape(turn["disclaimer"]))


def render() -> None:
    """The Assistant page."""
    st.title("Compliance assistant")
    st.caption(
        "Ask about data protection, IP and the running system, in English or 中文. "
        "Answers cite their sources; general information, not legal advice."
    )
    history: list[dict[str, Any]] = st.session_state.setdefault(HISTORY_KEY, [])
    # chat_input is pinned to the bottom wherever it is called; reading it first lets this run
    # draw the new exchange in order and drop the examples once a question was asked.
    question = st.chat_input(
        "Ask a question (English or 中文)", max_chars=MAX_QUESTION_CHARS * 2
    )
    if question is not None:
        history.extend(respond(question))
        del history[:-MAX_TURNS * 2]
    if not history:
        st.markdown("Try: " + " · ".join(f"*{md_escape(q)}*" for q in EXAMPLES))
    elif st.sidebar.button("Clear conversation", key="chat_clear"):
        history.clear()
        st.rerun()
    for turn in history:
        _show(turn)
