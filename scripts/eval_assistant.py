"""Evaluate the assistant on the development set and the held-out set, side by side.

    python scripts/eval_assistant.py [--kb DIR] [--eval FILE] [--heldout FILE | --no-heldout]
        [--cold-runs 3] [--min-accuracy 0.9] [--min-heldout-accuracy 0.9]
        [--min-abstention 0.9] [--threshold T] [--errors] [--heldout-errors] [--sweep] [--fit]

Accuracy: share of in-scope questions answered (not abstained) from an acceptable entry (`ids`;
questions without ids fall back to the expected topic) whose answer states every key fact
(`facts`, held-out set). Abstention: share of off-topic questions the assistant abstained on.
Latency: each question is timed once in process after a warm-up (p95 reported). Cold start: wall
time of `python -m assistant "<question>" --json` in a fresh process, median of --cold-runs, for
the set's first English and first Chinese question (the larger is shown).

tests/data/assistant_eval.yaml is the development set: `--sweep` and `--fit` use it only.
tests/data/assistant_heldout.yaml was written before retrieval was tuned and is only measured;
never tune on it. Exits 1 below a minimum, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))
SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from bench_assistant import cold_start_s, percentile  # noqa: E402

from assistant.answering import Assistant, confidence_features  # noqa: E402
from assistant.knowledge_base import TOPICS, KBError, KnowledgeBase, load_kb  # noqa: E402

DEFAULT_EVAL = ROOT / "tests" / "data" / "assistant_eval.yaml"
DEFAULT_HELDOUT = ROOT / "tests" / "data" / "assistant_heldout.yaml"


class EvalSetError(ValueError):
    """The evaluation file is malformed (one-line message naming the item and the fix)."""


@dataclass(frozen=True)
class EvalItem:
    question: str
    lang: str
    in_scope: bool
    topic: str | None = None
    ids: tuple[str, ...] = ()
    facts: tuple[tuple[str, ...], ...] = ()  # each fact: alternatives, any one must be stated


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def states_facts(answer: str, facts: Sequence[Sequence[str]]) -> bool:
    """Whether the answer states every fact (one of its alternatives, case and spacing aside)."""
    text = _norm(answer)
    return all(any(_norm(alt) in text for alt in fact) for fact in facts)


@dataclass(frozen=True)
class EvalResult:
    item: EvalItem
    entry_id: str | None
    topic: str | None
    confidence: float
    abstained: bool
    answer: str = ""
    latency_ms: float = 0.0

    @property
    def right_entry(self) -> bool:
        """In scope: answered from an acceptable entry. Off topic: abstained."""
        if not self.item.in_scope:
            return self.abstained
        if self.abstained:
            return False
        if self.item.ids:
            return self.entry_id in self.item.ids
        return self.topic == self.item.topic

    @property
    def correct(self) -> bool:
        """The right entry and, in scope, an answer that states the key facts."""
        return self.right_entry and states_facts(self.answer, self.item.facts)


@dataclass(frozen=True)
class EvalReport:
    results: tuple[EvalResult, ...]

    def _subset(self, in_scope: bool, lang: str | None) -> list[EvalResult]:
        return [
            r
            for r in self.results
            if r.item.in_scope == in_scope and (lang is None or r.item.lang == lang)
        ]

    def accuracy(self, lang: str | None = None) -> float:
        rows = self._subset(True, lang)
        return sum(r.correct for r in rows) / len(rows) if rows else 0.0

    def entry_accuracy(self, lang: str | None = None) -> float:
        """Like accuracy, without the key-fact check (retrieval alone)."""
        rows = self._subset(True, lang)
        return sum(r.right_entry for r in rows) / len(rows) if rows else 0.0

    def abstention(self, lang: str | None = None) -> float:
        rows = self._subset(False, lang)
        return sum(r.abstained for r in rows) / len(rows) if rows else 0.0

    def false_abstentions(self, lang: str | None = None) -> int:
        return sum(r.abstained for r in self._subset(True, lang))

    def count(self, in_scope: bool, lang: str | None = None) -> int:
        return len(self._subset(in_scope, lang))

    def p95_ms(self) -> float:
        return percentile([r.latency_ms for r in self.results], 95) if self.results else 0.0

    def unlabelled(self) -> int:
        """In-scope questions scored by topic only, because no entry id was filled in."""
        return sum(1 for r in self.results if r.item.in_scope and not r.item.ids)

    def errors(self) -> list[EvalResult]:
        return [r for r in self.results if not r.correct]


def _facts(raw: object, where: str) -> tuple[tuple[str, ...], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise EvalSetError(f"{where}: 'facts' must be a list of strings (or lists of strings)")
    out = []
    for fact in raw:
        alts = fact if isinstance(fact, list) else [fact]
        if not alts or not all(isinstance(a, str) and a.strip() for a in alts):
            raise EvalSetError(f"{where}: each fact must be a non-empty string or list of them")
        out.append(tuple(alts))
    return tuple(out)


def load_eval_set(path: str | Path = DEFAULT_EVAL) -> list[EvalItem]:
    """Parse and check an evaluation YAML (in_scope / off_topic lists)."""
    path = Path(path)
    if not path.is_file():
        raise EvalSetError(f"evaluation file {path} not found; pass an existing file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise EvalSetError(f"{path}: invalid YAML; fix the syntax") from None
    if not isinstance(data, dict) or not {"in_scope", "off_topic"} <= set(data):
        raise EvalSetError(f"{path}: needs two lists, 'in_scope' and 'off_topic'")
    items: list[EvalItem] = []
    for section, in_scope in (("in_scope", True), ("off_topic", False)):
        for i, raw in enumerate(data[section] or []):
            where = f"{path}: {section}[{i}]"
            if not isinstance(raw, dict) or not isinstance(raw.get("q"), str) or not raw["q"]:
                raise EvalSetError(f"{where}: needs a non-empty 'q' question")
            if raw.get("lang") not in ("zh", "en"):
                raise EvalSetError(f"{where}: 'lang' must be zh or en")
            topic, ids = raw.get("topic"), raw.get("ids") or []
            if in_scope and topic not in TOPICS:
                raise EvalSetError(f"{where}: unknown topic {topic!r}; use a KB topic")
            if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
                raise EvalSetError(f"{where}: 'ids' must be a list of entry ids")
            facts = _facts(raw.get("facts"), where)
            items.append(EvalItem(raw["q"], raw["lang"], in_scope, topic, tuple(ids), facts))
    return items


def evaluate(assistant: Assistant, items: Iterable[EvalItem]) -> EvalReport:
    """Ask every question once (after one warm-up question) and score and time the answers."""
    items = list(items)
    if items:
        assistant.ask(items[0].question)  # index, jieba and caches: not part of the latency
    results = []
    for item in items:
        start = time.perf_counter()
        answer = assistant.ask(item.question)
        elapsed = (time.perf_counter() - start) * 1000
        entry = assistant.kb.get(answer.entry_id) if answer.entry_id else None
        results.append(
            EvalResult(
                item,
                answer.entry_id,
                entry.topic if entry else None,
                answer.confidence,
                answer.abstained,
                answer.answer,
                elapsed,
            )
        )
    return EvalReport(tuple(results))


def check_ids(assistant: Assistant, items: Sequence[EvalItem]) -> list[str]:
    """Expected ids that do not exist in the KB (a renamed entry must not pass silently)."""
    return sorted({i for item in items for i in item.ids if assistant.kb.get(i) is None})


def check_facts(kb: KnowledgeBase, items: Sequence[EvalItem]) -> list[str]:
    """Items whose key facts no acceptable entry states in the item's language."""
    bad = []
    for item in items:
        entries = [e for e in (kb.get(i) for i in item.ids) if e is not None]
        if item.facts and not any(states_facts(e.answer[item.lang], item.facts) for e in entries):
            bad.append(f"{item.question} (facts {list(item.facts)}, ids {list(item.ids)})")
    return bad


@dataclass(frozen=True)
class SetSummary:
    """One column of the side-by-side table."""

    name: str
    report: EvalReport
    cold_start_s: float | None


def cold_start(kb_dir: str | None, items: Sequence[EvalItem], runs: int) -> float | None:
    """The slower of the set's first English and first Chinese question, in a fresh process."""
    if runs < 1:
        return None
    firsts = [next((i.question for i in items if i.lang == lang), None) for lang in ("en", "zh")]
    return max(cold_start_s(kb_dir, q, runs)[0] for q in firsts if q is not None)


def _print_side_by_side(sets: Sequence[SetSummary]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fedguard assistant evaluation")
    table.add_column("measure")
    for s in sets:
        table.add_column(s.name, justify="right")

    def row(label: str, fn) -> None:  # type: ignore[no-untyped-def]
        table.add_row(label, *(fn(s.report) for s in sets))

    row(
        "in-scope questions (en / zh)",
        lambda r: f"{r.count(True)} ({r.count(True, 'en')} / {r.count(True, 'zh')})",
    )
    row("accuracy: right entry + key facts", lambda r: f"{r.accuracy():.1%}")
    row("  en / zh", lambda r: f"{r.accuracy('en'):.1%} / {r.accuracy('zh'):.1%}")
    row("right entry (retrieval only)", lambda r: f"{r.entry_accuracy():.1%}")
    row("false abstentions", lambda r: str(r.false_abstentions()))
    row("off-topic questions", lambda r: str(r.count(False)))
    row("abstention off topic", lambda r: f"{r.abstention():.1%}")
    row("p95 latency in process", lambda r: f"{r.p95_ms():.1f} ms")
    table.add_row(
        "cold start (process to answer)",
        *("-" if s.cold_start_s is None else f"{s.cold_start_s:.2f} s" for s in sets),
    )  # fmt: skip
    Console().print(table)


def _print_errors(name: str, report: EvalReport) -> None:
    for r in report.errors():
        got = "ABSTAINED" if r.abstained else r.entry_id
        want = ", ".join(r.item.ids) if r.item.in_scope else "abstain"
        if r.right_entry:
            why = f"right entry, but the answer lacks facts {[list(f) for f in r.item.facts]}"
        else:
            why = f"got {got}, want {want or r.item.topic}"
        print(f"[{name}] x {r.item.question}\n    {why} (conf {r.confidence:.2f})")


def _sweep(kb: KnowledgeBase, items: Sequence[EvalItem]) -> None:
    """Accuracy and abstention rate over thresholds 0.05..0.95 (how THRESHOLD was chosen)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="threshold sweep (development set)")
    for col in ("threshold", "accuracy", "abstention rate"):
        table.add_column(col, justify="right")
    for t in [x / 20 for x in range(1, 20)]:
        report = evaluate(Assistant(kb, threshold=t, use_env_llm=False), items)
        table.add_row(f"{t:.2f}", f"{report.accuracy():.1%}", f"{report.abstention():.1%}")
    Console().print(table)


GRID: dict[str, tuple[float, ...]] = {
    "COVERAGE_POWER": (0.0, 1.0, 1.5, 2.0, 3.0),
    "W_ANSWER_COVERAGE": (0.25, 0.5, 0.75),
    "W_JURISDICTION": (0.0, 1.0, 1.5, 2.0),
    "W_ASKED_FACT": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
}


def grid_search(kb: KnowledgeBase, items: Sequence[EvalItem], show: int = 10) -> None:
    """Top-1 retrieval accuracy and MRR over GRID for the re-ranking weights (development set).

    Abstention is ignored here (the confidence weights are refitted afterwards with --fit);
    the best settings are printed for pasting into assistant/retrieval.py.
    """
    import itertools

    from assistant import retrieval

    index = retrieval.get_index(kb)
    scoped = [i for i in items if i.in_scope and i.ids]
    saved = {name: getattr(retrieval, name) for name in GRID}
    rows = []
    try:
        for values in itertools.product(*GRID.values()):
            for name, value in zip(GRID, values, strict=True):
                setattr(retrieval, name, value)
            top1 = mrr = 0.0
            for item in scoped:
                ranked = [h.entry.id for h in index.search(item.question, k=10)]
                rank = next((r for r, e in enumerate(ranked, 1) if e in item.ids), None)
                top1 += rank == 1
                mrr += 1 / rank if rank else 0.0
            rows.append((top1 / len(scoped), mrr / len(scoped), values))
    finally:
        for name, value in saved.items():
            setattr(retrieval, name, value)
    rows.sort(key=lambda r: (-r[0], -r[1]))
    print(f"grid over {len(rows)} settings, {len(scoped)} in-scope development questions")
    print("top-1  MRR    " + "  ".join(GRID))
    for top1, mrr, values in rows[:show]:
        print(f"{top1:.3f}  {mrr:.3f}  " + "  ".join(f"{v:g}" for v in values))
    current = tuple(saved.values())
    for label, keep in (
        ("current", lambda v: v == current),
        ("no re-ranking", lambda v: not (v[0] or v[2] or v[3])),  # power, jurisdiction, fact
    ):
        match = [r for r in rows if keep(r[2])]
        if match:
            print(f"{label} {match[0][2]}: top-1 {match[0][0]:.3f}, MRR {match[0][1]:.3f}")


def fit_confidence(assistant: Assistant, items: Sequence[EvalItem], c: float = 1.0) -> None:
    """Fit the confidence weights (logistic regression) and print them with LOO accuracy.

    Label 1 = in scope and the top-ranked entry is acceptable; 0 = off topic or a wrong top
    entry. Paste the printed weights into assistant/answering.py (CONF_WEIGHTS, CONF_BIAS).
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import LeaveOneOut, cross_val_predict

    x, y = [], []
    for item in items:
        hits = assistant.index.search(item.question, k=6)
        x.append(confidence_features(hits, item.lang))
        top = hits[0].entry if hits else None
        ok = (
            item.in_scope
            and top is not None
            and (top.id in item.ids if item.ids else top.topic == item.topic)
        )
        y.append(int(ok))
    features, labels = np.array(x), np.array(y)
    model = LogisticRegression(C=c, max_iter=1000)
    loo = cross_val_predict(model, features, labels, cv=LeaveOneOut(), method="predict_proba")
    model.fit(features, labels)
    print(f"fit on {len(labels)} questions ({labels.sum()} positive), C={c}")
    loo_acc = ((loo[:, 1] >= 0.5) == labels).mean()
    print(f"leave-one-out accuracy of 'confidence >= 0.5': {loo_acc:.3f}")
    print(f"CONF_WEIGHTS = {tuple(round(float(w), 2) for w in model.coef_[0])}")
    print(f"CONF_BIAS = {float(model.intercept_[0]):.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", help="knowledge base directory (default: bundled)")
    parser.add_argument("--eval", default=str(DEFAULT_EVAL), help="development set YAML")
    parser.add_argument("--heldout", default=str(DEFAULT_HELDOUT), help="held-out set YAML")
    parser.add_argument("--no-heldout", action="store_true", help="development set only")
    parser.add_argument("--cold-runs", type=int, default=3, help="0 skips the cold start")
    parser.add_argument("--min-accuracy", type=float, default=0.0, help="development set")
    parser.add_argument("--min-heldout-accuracy", type=float, default=0.0)
    parser.add_argument("--min-abstention", type=float, default=0.0, help="both sets")
    parser.add_argument("--threshold", type=float, help="override the abstention threshold")
    parser.add_argument("--sweep", action="store_true", help="rates over thresholds (dev)")
    parser.add_argument("--errors", action="store_true", help="list development-set misses")
    parser.add_argument("--heldout-errors", action="store_true", help="list held-out misses")
    parser.add_argument("--fit", action="store_true", help="refit the confidence weights (dev)")
    parser.add_argument("--grid", action="store_true", help="grid over re-ranking weights (dev)")
    args = parser.parse_args(argv)
    try:
        kb = load_kb(args.kb)
        sets = {"development": load_eval_set(args.eval)}
        if not args.no_heldout:
            sets["held-out"] = load_eval_set(args.heldout)
    except (KBError, EvalSetError) as exc:
        print(f"eval_assistant: error: {exc}", file=sys.stderr)
        return 2
    kwargs = {} if args.threshold is None else {"threshold": args.threshold}
    assistant = Assistant(kb, use_env_llm=False, **kwargs)
    for name, items in sets.items():
        missing = check_ids(assistant, items)
        if missing:
            print(f"eval_assistant: error: {name} set expects ids not in the KB: "
                  f"{', '.join(missing)}; update the evaluation file", file=sys.stderr)  # fmt: skip
            return 2
        for problem in check_facts(kb, items):
            print(f"eval_assistant: warning: no expected entry states the key facts: {problem}",
                  file=sys.stderr)  # fmt: skip
    dev = sets["development"]
    if args.grid:
        grid_search(kb, dev)
    if args.fit:
        fit_confidence(assistant, dev)
    if args.sweep:
        _sweep(kb, dev)
    summaries = [
        SetSummary(name, evaluate(assistant, items), cold_start(args.kb, items, args.cold_runs))
        for name, items in sets.items()
    ]
    _print_side_by_side(summaries)
    for s in summaries:
        if (args.errors and s.name == "development") or (
            args.heldout_errors and s.name == "held-out"
        ):
            _print_errors(s.name, s.report)
    failures = []
    for s in summaries:
        floor = args.min_accuracy if s.name == "development" else args.min_heldout_accuracy
        if s.report.accuracy() < floor:
            failures.append(f"{s.name} accuracy {s.report.accuracy():.1%} < {floor:.0%}")
        if s.report.abstention() < args.min_abstention:
            failures.append(
                f"{s.name} abstention {s.report.abstention():.1%} < {args.min_abstention:.0%}"
            )
    if failures:
        print(f"eval_assistant: below target: {'; '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
