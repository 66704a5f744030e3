"""`fedguard-ask "question" [--lang zh|en] [--json] [--kb DIR] [--data-dir DIR]`: ask from a shell.

Questions about the running system ("how much budget has node 3 spent?") are answered from the
run store in --data-dir (default: fedguard's data directory) when the run-store adapter
(`assistant.live_source`) is installed; everything else comes from the knowledge base.

Exit status: 0 when answered (also when the assistant abstains; see "abstained" in --json),
2 on bad input or a broken knowledge base. Errors are one line on stderr, never a traceback.
With --json, stdout holds exactly one JSON object (nothing at all on error).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from assistant.answering import Answer, AskError, Assistant, topic_label
from assistant.knowledge_base import KBError, load_kb
from assistant.language import LanguageError
from assistant.live_intents import LiveSource, detect_live_intent
from assistant.llm_rewrite import LLMConfigError
from privacy.console import OneLineParser, fail

PROG = "fedguard-ask"


def _fail(message: str) -> NoReturn:
    fail(PROG, message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Answer IP and data-compliance questions (Chinese or English) with sources.",
        epilog="Exit status: 0 answered or abstained, 2 bad input.",
    )
    parser.add_argument("question", help='the question, in quotes: "Do I need a DPIA?"')
    parser.add_argument("--lang", choices=("zh", "en"), help="answer language (default: auto)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--kb", metavar="DIR", help="knowledge base directory (default: bundled)")
    parser.add_argument(
        "--data-dir", metavar="DIR", help="run store directory for questions about runs"
    )
    return parser


def render(answer: Answer) -> str:
    """Plain-text rendering: answer, update note, numbered sources, jurisdiction/date,
    confidence, disclaimer."""
    lang = answer.lang
    lines = [answer.full_text(), ""]
    if answer.sources:
        lines.append("Sources:" if lang == "en" else "来源：")
        for i, source in enumerate(answer.sources, 1):
            lines.append(f"  [{i}] {source.citation}  ({source.id})")
    if answer.jurisdiction:
        label = "Jurisdiction" if lang == "en" else "法域"
        verified = "last verified" if lang == "en" else "最后核实"
        lines.append(
            f"{label}: {', '.join(answer.jurisdiction)}; {verified} {answer.last_verified}"
        )
    if answer.related_topics and not answer.abstained:
        label = "Related" if lang == "en" else "相关主题"
        lines.append(f"{label}: " + "; ".join(topic_label(t, lang) for t in answer.related_topics))
    conf = "Confidence" if lang == "en" else "置信度"
    lines.append(f"{conf}: {answer.confidence:.2f}")
    lines.append(answer.disclaimer)
    return "\n".join(lines)


def live_source(data_dir: str | None) -> LiveSource | None:
    """The run-store LiveSource, or None while that adapter is not installed."""
    try:
        from assistant.live_source import RunStoreLiveSource
    except ImportError:
        return None
    return RunStoreLiveSource(data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        kb = load_kb(args.kb) if args.kb else load_kb()
        # Only live questions pay for importing the run store.
        live = live_source(args.data_dir) if detect_live_intent(args.question) else None
        answer = Assistant(kb, live=live).ask(args.question, lang=args.lang)
    except (KBError, AskError, LanguageError, LLMConfigError) as exc:
        _fail(str(exc))
    try:
        print(answer.to_json() if args.json else render(answer), flush=True)
    except BrokenPipeError:  # e.g. piped into `head`: the reader left, nothing to report
        sys.stdout = None  # type: ignore[assignment]  # no flush error at interpreter exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
