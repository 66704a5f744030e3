"""Evaluate the assistant on tests/data/assistant_eval.yaml: accuracy and abstention, per language.

    python scripts/eval_assistant.py [--kb DIR] [--eval FILE] [--min-accuracy 0.9]
                                     [--min-abstention 0.9] [--threshold T] [--sweep] [--errors]

Top-1 accuracy: share of in-scope questions answered (not abstained) from an acceptable entry
(`ids`; questions without ids fall back to the expected topic and are counted separately).
Abstention rate: share of off-topic questions on which the assistant abstained. False
abstentions: in-scope questions it abstained on. Exits 1 below the minimums, 2 on bad input.
`--sweep` prints both rates over a range of thresholds, which is how THRESHOLD was chosen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from assistant.answering import Assistant, confidence_features  # noqa: E402
from assistant.knowledge_base import TOPICS, KBError, KnowledgeBase, load_kb  # noqa: E402

DEFAULT_EVAL = ROOT / "tests" / "data" / "assistant_eval.yaml"


class EvalSetError(ValueError):
    """The evaluation file is malformed (one-line message naming the item and the fix)."""


@dataclass(frozen=True)
class EvalItem:
    question: str
    lang: str
    in_scope: bool
    topic: str | None = None
    ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalResult:
    item: EvalItem
    entry_id: str | None
    topic: str | None
    confidence: float
    abstained: bool

    @property
    def correct(self) -> bool:
        """In scope: answered from an acceptable entry. Off topic: abstained."""
        if not self.item.in_scope:
            return self.abstained
        if self.abstained:
            return False
        if self.item.ids:
            return self.entry_id in self.item.ids
        return self.topic == self.item.topic


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

    def abstention(self, lang: str | None = None) -> float:
        rows = self._subset(False, lang)
        return sum(r.abstained for r in rows) / len(rows) if rows else 0.0

    def false_abstentions(self, lang: str | None = None) -> int:
        return sum(r.abstained for r in self._subset(True, lang))

    def count(self, in_scope: bool, lang: str | None = None) -> int:
        return len(self._subset(in_scope, lang))

    def unlabelled(self) -> int:
        """In-scope questions scored by topic only, because no entry id was filled in."""
        return sum(1 for r in self.results if r.item.in_scope and not r.item.ids)

    def errors(self) -> list[EvalResult]:
        return [r for r in self.results if not r.correct]


def load_eval_set(path: str | Path = DEFAULT_EVAL) -> list[EvalItem]:
    """Parse and check the evaluation YAML (in_scope / off_topic lists)."""
    path = Path(path)
    if not path.is_file():
        raise EvalSetError(f"evaluation file {path} not found; pass --eval FILE")
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
            items.append(EvalItem(raw["q"], raw["lang"], in_scope, topic, tuple(ids)))
    return items


def evaluate(assistant: Assistant, items: Iterable[EvalItem]) -> EvalReport:
    """Ask every question once and score the answers."""
    results = []
    for item in items:
        answer = assistant.ask(item.question)
        entry = assistant.kb.get(answer.entry_id) if answer.entry_id else None
        results.append(
            EvalResult(
                item,
                answer.entry_id,
                entry.topic if entry else None,
                answer.confidence,
                answer.abstained,
            )
        )
    return EvalReport(tuple(results))


def check_ids(assistant: Assistant, items: Sequence[EvalItem]) -> list[str]:
    """Expected ids that do not exist in the KB (a renamed entry must not pass silently)."""
    return sorted({i for item in items for i in item.ids if assistant.kb.get(i) is None})


def _print_report(report: EvalReport, show_errors: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="fedguard assistant evaluation")
    for col in ("lang", "in-scope", "top-1 accuracy", "false abstentions", "off-topic",
                "abstention rate"):  # fmt: skip
        table.add_column(col, justify="right")
    for lang in ("en", "zh", None):
        table.add_row(
            lang or "all",
            str(report.count(True, lang)),
            f"{report.accuracy(lang):.1%}",
            str(report.false_abstentions(lang)),
            str(report.count(False, lang)),
            f"{report.abstention(lang):.1%}",
        )
    console.print(table)
    if report.unlabelled():
        console.print(f"[yellow]{report.unlabelled()} in-scope questions have no expected ids "
                      "and were scored by topic only[/yellow]")  # fmt: skip
    if show_errors:
        for r in report.errors():
            got = "ABSTAINED" if r.abstained else r.entry_id
            want = ", ".join(r.item.ids) if r.item.in_scope else "abstain"
            console.print(
                f"[red]x[/red] {r.item.question}\n    got {got} (conf {r.confidence:.2f}), "
                f"want {want or r.item.topic}",
                markup=True,
                highlight=False,
            )


def _sweep(kb: KnowledgeBase, items: Sequence[EvalItem]) -> None:
    """Accuracy and abstention rate over thresholds 0.05..0.95 (how THRESHOLD was chosen)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="threshold sweep")
    for col in ("threshold", "top-1 accuracy", "abstention rate"):
        table.add_column(col, justify="right")
    for t in [x / 20 for x in range(1, 20)]:
        report = evaluate(Assistant(kb, threshold=t, use_env_llm=False), items)
        table.add_row(f"{t:.2f}", f"{report.accuracy():.1%}", f"{report.abstention():.1%}")
    Console().print(table)


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
    parser.add_argument("--eval", default=str(DEFAULT_EVAL), help="evaluation YAML")
    parser.add_argument("--min-accuracy", type=float, default=0.0)
    parser.add_argument("--min-abstention", type=float, default=0.0)
    parser.add_argument("--threshold", type=float, help="override the abstention threshold")
    parser.add_argument("--sweep", action="store_true", help="print rates over thresholds")
    parser.add_argument("--errors", action="store_true", help="list every miss")
    parser.add_argument("--fit", action="store_true", help="refit the confidence weights")
    args = parser.parse_args(argv)
    try:
        kb = load_kb(args.kb)
        items = load_eval_set(args.eval)
    except (KBError, EvalSetError) as exc:
        print(f"eval_assistant: error: {exc}", file=sys.stderr)
        return 2
    kwargs = {} if args.threshold is None else {"threshold": args.threshold}
    assistant = Assistant(kb, use_env_llm=False, **kwargs)
    missing = check_ids(assistant, items)
    if missing:
        print(f"eval_assistant: error: expected ids not in the KB: {', '.join(missing)}; "
              "update tests/data/assistant_eval.yaml", file=sys.stderr)  # fmt: skip
        return 2
    if args.fit:
        fit_confidence(assistant, items)
    if args.sweep:
        _sweep(kb, items)
    report = evaluate(assistant, items)
    _print_report(report, args.errors)
    ok = report.accuracy() >= args.min_accuracy and report.abstention() >= args.min_abstention
    if not ok:
        print(
            f"eval_assistant: below target: accuracy {report.accuracy():.1%} "
            f"(min {args.min_accuracy:.0%}), abstention {report.abstention():.1%} "
            f"(min {args.min_abstention:.0%})",
            file=sys.stderr,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
