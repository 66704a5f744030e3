"""The real app in a real headless Chromium: chat with a citation, the training page of a
recorded run, and a screenshot of every page (to $FEDGUARD_SCREENSHOT_DIR, default tmp_path).

Uses Debian's /usr/bin/chromium through the Python playwright package (no browser download).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.store import RunStore
from tests.conftest import ROOT
from tests.ui_fixtures import LIVE_RUN_ID, RUN_ID, build_recorded_run, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recorded run plus a second run that is still `running` (no rounds yet)."""
    data_dir = tmp_path_factory.mktemp("ui-browser") / "store"
    build_recorded_run(data_dir, with_live_run=True)
    return data_dir


@pytest.fixture(scope="module")
def app_url(store_dir: Path) -> Iterator[str]:
    """One Streamlit server for the module."""
    with streamlit_server(store_dir, store_dir.parent / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing; `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})  # type: ignore[attr-defined]
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("FEDGUARD_SCREENSHOT_DIR")
    out = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _open(page: object, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")  # type: ignore[attr-defined]
    page.wait_for_selector('[data-testid="stAppViewContainer"]', timeout=WAIT_MS)  # type: ignore[attr-defined]


def _shot(page: object, shots: Path, name: str) -> Path:
    """Whole page: Streamlit scrolls inside its main pane, so grow the viewport to fit it."""
    path = shots / f"{name}.png"
    last = 0
    for _ in range(4):  # tables and charts size themselves after they are attached
        page.wait_for_timeout(600)  # type: ignore[attr-defined]
        height = int(page.evaluate(  # type: ignore[attr-defined]
            "() => Math.max(...Array.from(document.querySelectorAll("
            "'[data-testid=stMain], [data-testid=stAppViewContainer], body'), e => e.scrollHeight))"
        ))
        if height == last:
            break
        last = height
        page.set_viewport_size({"width": 1366, "height": min(height + 80, 8000)})  # type: ignore[attr-defined]
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    assert path.stat().st_size > 10_000
    return path


def test_chat_answers_with_a_citation(app_url: str, page: object, shots: Path) -> None:
    _open(page, app_url)
    box = page.locator('[data-testid="stChatInputTextArea"]')  # type: ignore[attr-defined]
    box.wait_for(timeout=WAIT_MS)
    box.fill("Do I need a DPIA for federated learning?")
    box.press("Enter")
    answer = page.locator('[data-testid="stChatMessage"]').nth(1)  # type: ignore[attr-defined]
    answer.get_by_text("Sources", exact=True).wait_for(timeout=WAIT_MS)
    text = answer.inner_text()
    assert "GDPR Art. 35" in text
    assert "Confidence" in text and "not legal advice" in text
    box.fill('<img src=x onerror="document.title=\'pwned\'"> what is a DPIA?')
    box.press("Enter")
    question = page.locator('[data-testid="stChatMessage"]').nth(2)  # type: ignore[attr-defined]
    question.get_by_text("<img src=x", exact=False).wait_for(timeout=WAIT_MS)
    assert page.title() != "pwned"  # type: ignore[attr-defined]
    assert page.locator('[data-testid="stChatMessage"] img[src="x"]').count() == 0  # type: ignore[attr-defined]
    page.locator('[data-testid="stChatMessage"]').nth(3).get_by_text(  # type: ignore[attr-defined]
        "Confidence"
    ).wait_for(timeout=WAIT_MS)
    _shot(page, shots, "assistant")


def test_training_page_of_the_recorded_run(app_url: str, page: object, shots: Path) -> None:
    _open(page, f"{app_url}/training?run={RUN_ID}")
    page.get_by_text("Node participation").wait_for(timeout=WAIT_MS)  # type: ignore[attr-defined]
    page.get_by_text("1 × node-excluded, 1 × node-refused").wait_for(timeout=WAIT_MS)  # type: ignore[attr-defined]
    charts = page.locator('[data-testid="stVegaLiteChart"]')  # type: ignore[attr-defined]
    charts.nth(2).wait_for(timeout=WAIT_MS)  # loss, accuracy, epsilon vs budget
    body = page.inner_text("body")  # type: ignore[attr-defined]
    assert "3/3" in body and "completed" in body and "87.0%" in body
    assert f"run={RUN_ID}" in page.url  # type: ignore[attr-defined]
    _shot(page, shots, "training")


def test_training_page_refreshes_a_running_run(
    app_url: str, store_dir: Path, page: object
) -> None:
    _open(page, f"{app_url}/training?run={LIVE_RUN_ID}")
    page.get_by_text("No round has finished yet").wait_for(timeout=WAIT_MS)  # type: ignore[attr-defined]
    page.get_by_test_id("stMetricValue").get_by_text("0/5", exact=True).wait_for(timeout=WAIT_MS)  # type: ignore[attr-defined]
    store = RunStore.in_dir(store_dir)
    try:
        # as FederatedRun.end_round writes a round: the row, then its named metrics
        store.record_round(LIVE_RUN_ID, 1, time.time(), 3, {"server_loss": 1.5,
                           "server_accuracy": 0.42}, "round-0001.pt", "0" * 64)
        store.record_round_metrics(LIVE_RUN_ID, 1, "server", {"loss": 1.5, "accuracy": 0.42})
    finally:
        store.close()
    # No reload: the page's fragment re-reads the store every few seconds while running.
    page.get_by_text("42.0%", exact=True).wait_for(timeout=30_000)  # type: ignore[attr-defined]
    page.get_by_test_id("stMetricValue").get_by_text("1/5", exact=True).wait_for(timeout=WAIT_MS)  # type: ignore[attr-defined]


def test_policy_page(app_url: str, page: object, shots: Path) -> None:
    _open(page, f"{app_url}/policy?run={RUN_ID}")
    page.get_by_text("PASS with warnings").wait_for(timeout=WAIT_MS)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Download Markdown report").wait_for(timeout=WAIT_MS)  # type: ignore[attr-defined]
    _shot(page, shots, "policy")


def test_provenance_page_verifies(app_url: str, page: object, shots: Path) -> None:
    _open(page, f"{app_url}/provenance?run={RUN_ID}")
    page.get_by_role("button", name="Verify", exact=True).click(timeout=WAIT_MS)  # type: ignore[attr-defined]
    page.get_by_text("Verified: the signature is valid").wait_for(timeout=WAIT_MS)  # type: ignore[attr-defined]
    page.get_by_text("Full record (JSON)").wait_for(timeout=WAIT_MS)  # type: ignore[attr-defined]
    _shot(page, shots, "provenance")


def test_load_script_against_the_running_app(app_url: str) -> None:
    """scripts/load_ui.py, small: concurrent chat sessions all get answers, no errors."""
    spec = importlib.util.spec_from_file_location("load_ui", ROOT / "scripts" / "load_ui.py")
    assert spec is not None and spec.loader is not None
    load_ui = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = load_ui  # dataclasses look their module up by name
    spec.loader.exec_module(load_ui)
    args = load_ui.build_parser().parse_args(
        ["--url", app_url, "--sessions", "4", "--duration", "4", "--max-requests", "12",
         "--think", "0.1"]
    )
    # Playwright's sync API keeps an event loop on this thread; run the load on its own.
    with ThreadPoolExecutor(1) as pool:
        summary = pool.submit(asyncio.run, load_ui.run_load(app_url, args)).result(timeout=120)
    assert summary["errors"] == 0, summary["error_kinds"]
    assert 4 <= summary["answered"] <= 12  # every session answered; the request cap holds
    assert summary["latency_s"]["p95"] > 0
    assert load_ui.main(["--url", "http://192.0.2.1:8501"]) == 2  # loopback only
