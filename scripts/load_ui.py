"""Load test of the web UI: N concurrent chat sessions against the running app on loopback.

Each session speaks Streamlit's own browser protocol (protobuf over the `/_stcore/stream`
websocket), exactly what a browser tab sends: it loads the Assistant page, then submits
questions through the page's `st.chat_input` and times each one from submission to the
server's "script finished" message, checking that an answer (with sources, or an explicit
abstention) arrived and that no error or exception was rendered. A browser would add its own
rendering time on top; this measures what the server adds, for 20 users without 20 Chromiums.

    .venv/bin/python scripts/load_ui.py --start                 # start the app, 20 users, 60 s
    .venv/bin/python scripts/load_ui.py --url http://127.0.0.1:8501 --sessions 20 --duration 30

Bounded: at most --duration seconds of asking and --max-requests questions in total, and only
loopback addresses are accepted. Exit status 0 when there were no errors, 1 otherwise, 2 on bad
arguments or when the app cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
QUESTIONS = (
    "Do I need a DPIA for federated learning?",
    "What is differential privacy in plain words?",
    "Can model updates be personal data?",
    "训练数据跨境传输需要做什么？",
    "模型更新会被视为个人信息吗？",
    "Who owns the output of an AI model?",
    "What is the status of the latest run?",
    "How much privacy budget has node 1 spent?",
    "Is the latest run GDPR compliant?",
    "What is the best pizza topping?",
)
ANSWER_MARKERS = ("Sources", "来源", "I don't know", "抱歉", "From the run store", "来自运行记录库")


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    page_loads: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    issued: int = 0


@dataclass
class RunResult:
    """What one script run sent back: rendered texts and how it ended."""

    texts: list[str] = field(default_factory=list)
    error_alerts: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    chat_input_id: str | None = None
    page_hash: str = ""
    finished: bool = False


async def _read_run(ws: ClientConnection, timeout: float) -> RunResult:
    """Collect ForwardMsgs until the script run finishes (or `timeout` passes)."""
    out = RunResult()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return out
        raw = await asyncio.wait_for(ws.recv(), remaining)
        msg = ForwardMsg()
        msg.ParseFromString(raw if isinstance(raw, bytes) else raw.encode())
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            out.page_hash = msg.new_session.page_script_hash or out.page_hash
        elif kind == "navigation":
            out.page_hash = msg.navigation.page_script_hash or out.page_hash
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            el = msg.delta.new_element
            which = el.WhichOneof("type")
            if which == "chat_input":
                out.chat_input_id = el.chat_input.id
            elif which == "markdown":
                out.texts.append(el.markdown.body)
            elif which == "alert":
                out.texts.append(el.alert.body)
                if el.alert.format == el.alert.ERROR:
                    out.error_alerts.append(el.alert.body)
            elif which == "exception":
                out.exceptions.append(f"{el.exception.type}: {el.exception.message}")
        elif kind == "script_finished":
            out.finished = True
            return out


def _rerun(page_hash: str, widget_id: str | None = None, question: str = "") -> bytes:
    back = BackMsg()
    state = back.rerun_script
    state.query_string = ""
    state.page_script_hash = page_hash
    if widget_id is not None:
        widget = state.widget_states.widgets.add()
        widget.id = widget_id
        widget.chat_input_value.data = question
    return back.SerializeToString()


def _unescape(text: str) -> str:
    """The UI escapes Markdown punctuation; undo it to look for markers."""
    return text.replace("\\", "")


async def session(
    n: int, ws_url: str, stop_at: float, budget: Iterator[int], args: argparse.Namespace,
    stats: Stats,
) -> None:
    rng = random.Random(n)
    try:
        start = time.monotonic()
        async with connect(ws_url, subprotocols=["streamlit"], max_size=None,  # type: ignore[list-item]
                           open_timeout=args.timeout) as ws:
            await ws.send(_rerun(""))
            first = await _read_run(ws, args.timeout)
            if not first.finished or first.chat_input_id is None:
                stats.errors["page did not load (no chat input)"] += 1
                return
            stats.page_loads.append(time.monotonic() - start)
            page_hash, chat_id = first.page_hash, first.chat_input_id
            while time.monotonic() < stop_at and next(budget) < args.max_requests:
                question = QUESTIONS[rng.randrange(len(QUESTIONS))]
                stats.issued += 1
                sent = time.monotonic()
                await ws.send(_rerun(page_hash, chat_id, question))
                result = await _read_run(ws, args.timeout)
                took = time.monotonic() - sent
                error = _check(result, question)
                if error:
                    stats.errors[error] += 1
                else:
                    stats.latencies.append(took)
                chat_id = result.chat_input_id or chat_id
                await asyncio.sleep(rng.uniform(0, args.think))
    except (OSError, TimeoutError) as exc:
        stats.errors[f"connection: {type(exc).__name__}"] += 1
    except Exception as exc:  # noqa: BLE001 - count every failure, keep the other sessions going
        stats.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1


def _check(result: RunResult, question: str) -> str:
    """'' if the run ended with this question echoed and answered after it, else why not."""
    if not result.finished:
        return "timed out waiting for the answer"
    if result.exceptions:
        return f"exception shown: {result.exceptions[0][:80]}"
    if result.error_alerts:
        return f"error shown: {_unescape(result.error_alerts[0])[:80]}"
    texts = [_unescape(t) for t in result.texts]
    echoed = [i for i, t in enumerate(texts) if t == question]
    if not echoed:
        return "question not shown back"
    if not any(m in t for t in texts[echoed[-1] + 1:] for m in ANSWER_MARKERS):
        return "no answer after the question"
    return ""


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def run_load(url: str, args: argparse.Namespace) -> dict[str, object]:
    parsed = urlparse(url)
    ws_url = f"ws://{parsed.netloc}/_stcore/stream"
    stats = Stats()
    counter = itertools.count()
    began = time.monotonic()
    stop_at = began + args.duration
    await asyncio.gather(*(
        session(i, ws_url, stop_at, counter, args, stats) for i in range(args.sessions)
    ))
    elapsed = time.monotonic() - began
    lat = sorted(stats.latencies)
    return {
        "url": url,
        "sessions": args.sessions,
        "duration_s": round(elapsed, 1),
        "questions": stats.issued,
        "answered": len(lat),
        "errors": sum(stats.errors.values()),
        "error_kinds": dict(stats.errors),
        "throughput_per_s": round(len(lat) / elapsed, 2) if elapsed else 0.0,
        "latency_s": {
            "p50": round(_p(lat, 50), 3), "p95": round(_p(lat, 95), 3),
            "max": round(lat[-1], 3) if lat else None,
        },
        "page_load_s": {"p95": round(_p(sorted(stats.page_loads), 95), 3)},
    }


# --- optional: start the app ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def started_app(home: str | None) -> Iterator[str]:
    """`streamlit run assistant/app.py` on a free loopback port, stopped on exit."""
    port = _free_port()
    env = dict(os.environ)
    if home:
        env["FEDGUARD_HOME"] = home
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "assistant" / "app.py"),
        "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
                raise SystemExit(f"load_ui: the app exited ({proc.returncode}): {err[-500:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("load_ui: the app did not start within 90 s") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8501", help="running app (loopback only)")
    p.add_argument("--start", action="store_true", help="start the app itself on a free port")
    p.add_argument("--home", help="FEDGUARD_HOME for --start (default: the environment's)")
    p.add_argument("--sessions", type=int, default=20, help="concurrent chat sessions (20)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of asking (60)")
    p.add_argument("--max-requests", type=int, default=2000, help="total question cap (2000)")
    p.add_argument("--think", type=float, default=1.0,
                   help="max random pause between a session's questions, s (1.0)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-answer timeout, s (60)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.sessions <= 200 or not 0 < args.duration <= 600:
        print("load_ui: --sessions must be 1..200 and --duration 0..600 s", file=sys.stderr)
        return 2
    if args.max_requests < 1 or args.think < 0 or args.timeout <= 0:
        print("load_ui: --max-requests >= 1, --think >= 0 and --timeout > 0", file=sys.stderr)
        return 2
    if not args.start and urlparse(args.url).hostname not in LOOPBACK:
        print(f"load_ui: {args.url} is not a loopback address; refusing", file=sys.stderr)
        return 2
    try:
        if args.start:
            with started_app(args.home) as url:
                summary = asyncio.run(run_load(url, args))
        else:
            summary = asyncio.run(run_load(args.url, args))
    except KeyboardInterrupt:
        return 1
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        lat = summary["latency_s"]
        print(f"{summary['sessions']} sessions, {summary['duration_s']} s: "
              f"{summary['answered']}/{summary['questions']} answered, "
              f"{summary['errors']} errors, {summary['throughput_per_s']} answers/s")
        print(f"latency p50 {lat['p50']} s, p95 {lat['p95']} s, max {lat['max']} s; "  # type: ignore[index]
              f"page load p95 {summary['page_load_s']['p95']} s")  # type: ignore[index]
        for kind, count in summary["error_kinds"].items():  # type: ignore[attr-defined]
            print(f"  error x{count}: {kind}")
    return 0 if summary["errors"] == 0 and summary["answered"] else 1


if __name__ == "__main__":
    sys.exit(main())
