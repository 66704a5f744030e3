"""Benchmark the assistant: per-question latency (p50/p95) and cold start.

    python scripts/bench_assistant.py [--kb DIR] [--repeat 5] [--cold-runs 3] [--max-p95-ms 50]

Latency: every evaluation-set question is asked once to warm up (index build, jieba, caches),
then `--repeat` more times, each `ask` timed on its own. Cold start: wall time from launching
`python -m assistant "<question>" --json` in a fresh process to its exit (interpreter start,
imports, KB load, jieba, index build, first answer), median of `--cold-runs`, for the first
English and the first Chinese question, plus a breakdown measured inside a fresh process.
Exits 1 if p95 exceeds --max-p95-ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from assistant.answering import Assistant  # noqa: E402
from assistant.knowledge_base import KBError, load_kb  # noqa: E402

_BREAKDOWN = """
import json, sys, time
t0 = time.perf_counter()
from assistant.answering import Assistant
from assistant.knowledge_base import load_kb
t1 = time.perf_counter()
kb = load_kb(sys.argv[1] or None)
t2 = time.perf_counter()
assistant = Assistant(kb, use_env_llm=False)
t3 = time.perf_counter()
assistant.ask(sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_kb_s": t2 - t1, "index_s": t3 - t2,
                  "first_ask_s": t4 - t3, "entries": len(kb)}))
"""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_ms(assistant: Assistant, questions: Sequence[str], repeat: int) -> list[float]:
    for question in questions:  # warm-up
        assistant.ask(question)
    samples = []
    for _ in range(repeat):
        for question in questions:
            start = time.perf_counter()
            assistant.ask(question)
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def cold_start_s(kb: str | None, question: str, runs: int) -> tuple[float, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FEDGUARD_LLM_BASE_URL", None)
    argv = [sys.executable, "-m", "assistant", question, "--json"]
    if kb:
        argv += ["--kb", kb]
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    proc = subprocess.run(
        [sys.executable, "-c", _BREAKDOWN, kb or "", question],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return statistics.median(walls), json.loads(proc.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    from eval_assistant import DEFAULT_EVAL, EvalSetError, load_eval_set
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", help="knowledge base directory (default: bundled)")
    parser.add_argument("--eval", default=str(DEFAULT_EVAL), help="questions to time")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--max-p95-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.cold_runs < 1:
        print("bench_assistant: error: --repeat and --cold-runs must be >= 1", file=sys.stderr)
        return 2
    try:
        kb = load_kb(args.kb)
        items = load_eval_set(args.eval)
        questions = [item.question for item in items]
    except (KBError, EvalSetError) as exc:
        print(f"bench_assistant: error: {exc}", file=sys.stderr)
        return 2
    samples = latency_ms(Assistant(kb, use_env_llm=False), questions, args.repeat)
    p50, p95 = percentile(samples, 50), percentile(samples, 95)
    # Cold start per language: a Chinese question also loads the (small) jieba dictionary.
    first = {lang: next(i.question for i in items if i.lang == lang) for lang in ("en", "zh")}
    cold = {lang: cold_start_s(args.kb, q, args.cold_runs) for lang, q in first.items()}

    table = Table(title=f"fedguard assistant benchmark ({len(kb)} KB entries)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("questions x repeats", f"{len(questions)} x {args.repeat}")
    table.add_row("ask p50", f"{p50:.2f} ms")
    table.add_row("ask p95", f"{p95:.2f} ms")
    table.add_row("ask max", f"{max(samples):.2f} ms")
    for lang, (wall, parts) in cold.items():
        table.add_row(f"cold start, {lang} question (process to answer)", f"{wall:.2f} s")
        for key in ("import_s", "load_kb_s", "index_s", "first_ask_s"):
            table.add_row(f"  in-process {key[:-2]}", f"{parts[key]:.3f} s")
    Console().print(table)
    if p95 > args.max_p95_ms:
        print(f"bench_assistant: p95 {p95:.1f} ms exceeds {args.max_p95_ms} ms", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
