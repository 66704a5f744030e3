"""The Streamlit pages, run headless with `streamlit.testing.v1.AppTest` over a recorded run."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from streamlit.testing.v1 import AppTest

from assistant.ui.policy import evaluate_uploads, report_from_rows
from assistant.ui.provenance import NOT_CHECKED
from assistant.ui.text import md_escape, strip_control
from privacy.compliance.provenance import load_record, sign_record, write_record
from privacy.compliance.signing import (
    PUBLIC_KEY_FILENAME,
    key_id,
    load_or_create_key,
    public_key_b64,
    read_public_key,
)
from server.store import RunStore
from tests.conftest import ROOT
from tests.ui_fixtures import (
    MANIFEST_TOML,
    NODES,
    RUN_ID,
    RUN_TOML,
    RecordedRun,
    build_recorded_run,
)

TIMEOUT = 60


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    return build_recorded_run(tmp_path_factory.mktemp("store"))


@pytest.fixture
def home(recorded: RecordedRun, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordedRun]:
    monkeypatch.setenv("FEDGUARD_HOME", str(recorded.data_dir))
    monkeypatch.delenv("FEDGUARD_LLM_BASE_URL", raising=False)
    yield recorded


def page(name: str, run: str | None = None) -> AppTest:
    """One page's `render()` as a tiny script, so each page is tested on its own."""
    at = AppTest.from_string(
        f"from assistant.ui.{name} import render\nrender()\n", default_timeout=TIMEOUT
    )
    if run is not None:
        at.query_params["run"] = run
    return at.run()


def texts(at: AppTest) -> str:
    """Everything the page shows as text (markdown, captions, alerts, titles)."""
    parts = []
    for kind in ("title", "subheader", "markdown", "caption", "info", "warning", "error",
                 "success"):
        parts += [str(el.value) for el in getattr(at, kind)]
    return "\n".join(parts)


def ask(at: AppTest, question: str) -> AppTest:
    at.chat_input[0].set_value(question).run()
    assert not at.exception, at.exception
    return at


# --- the whole app ---------------------------------------------------------------------------


def test_app_starts_on_the_assistant_page(home: RecordedRun) -> None:
    at = AppTest.from_file(str(ROOT / "assistant" / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.title[0].value == "Compliance assistant"
    assert len(at.chat_input) == 1
    assert md_escape(home.data_dir) in texts(at)  # the sidebar names the store


# --- Assistant -------------------------------------------------------------------------------


def test_chat_answers_with_citation_confidence_and_disclaimer(home: RecordedRun) -> None:
    at = ask(page("chat"), "Do I need a DPIA?")
    shown = texts(at)
    assert "**Sources**" in shown
    assert md_escape("GDPR Art. 35") in shown
    assert "Confidence" in shown
    assert "not legal advice" in shown
    assert len(at.chat_message) == 2
    history = at.session_state["chat_history"]
    assert [t["role"] for t in history] == ["user", "assistant"]
    assert history[1]["sources"] and not history[1]["abstained"]
    # A second question keeps the first exchange on screen.
    ask(at, "What is differential privacy?")
    assert len(at.chat_message) == 4


def test_chat_history_can_be_cleared(home: RecordedRun) -> None:
    at = ask(page("chat"), "What is differential privacy?")
    assert not any("Try:" in m.value for m in at.markdown)  # examples go once a question is asked
    at.sidebar.button(key="chat_clear").click().run()
    assert at.session_state["chat_history"] == []
    assert len(at.chat_message) == 0
    assert any("Try:" in m.value for m in at.markdown)


def test_chat_answers_in_the_language_of_the_question(home: RecordedRun) -> None:
    at = ask(page("chat"), "联邦学习需要做个人信息保护影响评估吗？")
    turn = at.session_state["chat_history"][-1]
    assert turn["lang"] == "zh" and not turn["abstained"]
    shown = texts(at)
    assert "**来源**" in shown and md_escape("PIPL Art. 55") in shown
    assert "置信度" in shown and "不构成法律意见" in shown


def test_chat_abstains_visibly_with_suggested_topics(home: RecordedRun) -> None:
    at = ask(page("chat"), "What is the best pizza topping in Naples?")
    assert at.session_state["chat_history"][-1]["abstained"]
    warning = at.warning[0].value
    assert md_escape("I don't know") in warning
    assert md_escape("You could ask about:") in warning
    assert "Abstained" in texts(at)


def test_chat_live_question_reads_the_run_store(home: RecordedRun) -> None:
    at = ask(page("chat"), "How much privacy budget has node 101 spent?")
    shown = texts(at)
    assert md_escape("ε = 2.70") in shown
    assert "From the run store" in shown
    assert md_escape(f"run {RUN_ID}") in shown


def test_chat_rejects_long_questions_with_a_message(home: RecordedRun) -> None:
    at = ask(page("chat"), "Is this lawful? " * 200)
    assert "shorten it to at most 2000 characters" in at.error[0].value
    assert at.session_state["chat_history"][-1]["role"] == "assistant"


def test_chat_shows_html_and_markdown_as_text(home: RecordedRun) -> None:
    hostile = '<script>alert("x")</script> ![img](http://example.invalid/a.png) :red[hi]'
    at = ask(page("chat"), hostile)
    question = at.chat_message[0].markdown[0].value
    assert question == md_escape(hostile)
    assert "<script>" not in question and "![img]" not in question and ":red[" not in question


def test_chat_strips_control_characters(home: RecordedRun) -> None:
    at = ask(page("chat"), "What is\x00 differential\x07 privacy?\x1b")
    user = at.session_state["chat_history"][0]
    assert user["text"] == "What is differential privacy?"
    assert "3 control character(s) removed" in texts(at)
    assert not at.error


def test_chat_empty_after_cleaning(home: RecordedRun) -> None:
    at = ask(page("chat"), "\x00\x01 ")
    assert "empty" in at.error[0].value


# --- Training --------------------------------------------------------------------------------


def test_training_shows_rounds_nodes_privacy_settings_and_events(home: RecordedRun) -> None:
    at = page("training", run=RUN_ID)
    assert not at.exception
    assert at.selectbox[0].value == RUN_ID
    assert [m.value for m in at.metric][:2] == ["completed", "3/3"]
    # every metric the task reported gets a chart, one a task named itself included
    assert {"loss", "accuracy", "recall-cancer", "Events"} <= {s.value for s in at.subheader}
    assert "examples" not in {s.value for s in at.subheader}
    assert at.metric[2].label == "Server accuracy" and at.metric[2].value == "87.0%"
    frames = {tuple(df.value.columns)[:2]: df.value for df in at.dataframe}
    nodes = frames[("node", "rounds trained")]
    assert list(nodes["node"]) == list(NODES)
    assert dict(zip(nodes["node"], nodes["rounds trained"], strict=True)) == {
        "101": 3, "102": 3, "103": 2,
    }
    assert dict(zip(nodes["node"], nodes["refused"], strict=True))["103"] == 1
    spend = next(df.value for df in at.dataframe if "epsilon spent" in df.value.columns)
    assert spend.set_index("node").loc["101", "epsilon spent"] == pytest.approx(2.7)
    assert spend.set_index("node").loc["101", "used"] == "90%"
    # Node 103's refused round still shows the DP settings of its last accepted update.
    assert spend.set_index("node").loc["103", "noise-multiplier"] == pytest.approx(1.1)
    settings = frames[("setting", "value")].set_index("setting")["value"]
    assert settings["dp-epsilon"] == "3.0" and settings["secagg"] == "True"
    secagg = frames[("round", "masked")].set_index("round")
    assert secagg.loc[2, "dropped"] == "102" and secagg.loc[2, "recovered"] == "102"
    events = frames[("time", "round")]
    assert {"node-refused", "node-excluded", "run-completed"} <= set(events["kind"])
    assert "node\\-refused" in at.warning[0].value


def test_training_run_from_query_param_and_unknown_run(home: RecordedRun) -> None:
    at = page("training", run="no-such-run")
    assert "is not in the run store" in at.warning[0].value
    assert at.selectbox[0].value == RUN_ID  # falls back to the latest run
    assert at.query_params["run"] == RUN_ID  # the URL now names the run shown


def test_training_live_run_without_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_recorded_run(tmp_path, with_live_run=True)
    monkeypatch.setenv("FEDGUARD_HOME", str(tmp_path))
    at = page("training")
    assert not at.exception
    assert at.metric[0].value == "running"
    shown = texts(at)
    assert "No round has finished yet" in shown
    assert "refreshing every" in shown


# --- Policy checks ---------------------------------------------------------------------------


def test_policy_shows_stored_verdicts_and_offers_downloads(home: RecordedRun) -> None:
    at = page("policy", run=RUN_ID)
    assert not at.exception
    assert "PASS with warnings" in at.warning[0].value
    table = at.dataframe[0].value
    assert "P1.dp-for-personal-data" in set(table["rule"])
    assert any("GDPR" in c for c in table["citation"])
    labels = {b.label for b in at.get("download_button")}
    assert {"Download Markdown report", "Download JSON report", "Stored report-md"} <= labels
    at.radio(key="policy_lang").set_value("zh").run()
    table = at.dataframe[0].value
    assert "规则" in table.columns and "依据" in table.columns
    assert "基础" in " ".join(table["检查项"]) or "差分隐私" in " ".join(table["检查项"])
    assert at.warning[0].value.startswith("通过（有警告）")


def test_policy_evaluates_uploaded_files(home: RecordedRun) -> None:
    at = page("policy")
    at.file_uploader(key="policy_config").set_value(("run.toml", RUN_TOML.encode(), "text/plain"))
    at.file_uploader(key="policy_manifests").set_value([
        ("clinic-a.toml", MANIFEST_TOML.encode(), "text/plain"),
        ("clinic-b.toml", MANIFEST_TOML.encode(), "text/plain"),
    ])
    at.multiselect(key="policy_packs").set_value(["baseline", "gdpr", "pipl"])
    at.button(key="policy_evaluate").click().run()
    assert not at.exception
    assert not at.error
    assert any("PASS" in s.value for s in at.success) or any("PASS" in w.value for w in at.warning)
    table = at.dataframe[-1].value
    assert {"clinic-a", "clinic-b"} <= set(table["node"])
    assert {"baseline", "gdpr", "pipl"} == set(table["pack"])
    assert len([b for b in at.get("download_button") if "upload" in str(b.key)]) == 2


@pytest.mark.parametrize(
    ("config", "manifest", "message"),
    [
        (b"dp = [unclosed", MANIFEST_TOML.encode(), "run.toml is not valid TOML"),
        (RUN_TOML.encode(), b"[dataset]\nnmae = 'x'\n", "bad.toml: manifest field dataset.nmae"),
        (b"dp-epsilon = 'lots'", MANIFEST_TOML.encode(), "dp-epsilon"),
        (b"\xff\xfe", MANIFEST_TOML.encode(), "run.toml"),
    ],
)
def test_policy_malformed_uploads_give_one_line_errors(
    home: RecordedRun, config: bytes, manifest: bytes, message: str
) -> None:
    at = page("policy")
    at.file_uploader(key="policy_config").set_value(("run.toml", config, "text/plain"))
    at.file_uploader(key="policy_manifests").set_value([("bad.toml", manifest, "text/plain")])
    at.button(key="policy_evaluate").click().run()
    assert not at.exception
    assert len(at.error) == 1
    error = at.error[0].value
    assert "\n" not in error and "Traceback" not in error
    assert md_escape(message) in error


def test_policy_report_round_trips_from_stored_rows(home: RecordedRun) -> None:
    store = RunStore.in_dir(home.data_dir, readonly=True)
    rows = store.verdicts(RUN_ID)
    store.close()
    report = report_from_rows(rows)
    assert len(report.verdicts) == len(rows)
    assert {p["name"] for p in report.packs} == {"baseline", "gdpr"}
    data = json.loads(report.to_json("zh"))
    assert data["lang"] == "zh" and data["counts"]["warn"] > 0
    assert "基础" in report.to_markdown("zh") or "差分隐私" in report.to_markdown("zh")
    fresh = evaluate_uploads(("run.toml", RUN_TOML.encode()),
                             [("n1.toml", MANIFEST_TOML.encode())], ["baseline"])
    assert not fresh.run_failed


# --- Provenance ------------------------------------------------------------------------------


def sign_as_other(run: RecordedRun) -> str:
    """Re-sign the run's record with a key other than the data dir's; returns that key."""
    other = Ed25519PrivateKey.generate()
    write_record(run.provenance, sign_record(load_record(run.provenance)["record"], other))
    return public_key_b64(other)


@pytest.fixture(scope="module")
def server_key(recorded: RecordedRun) -> str:
    """The fixture signs as the server does: with the data dir's key, published beside it."""
    return read_public_key(recorded.data_dir / PUBLIC_KEY_FILENAME)


def upload_record(at: AppTest, data: bytes, name: str = "provenance.json") -> None:
    at.file_uploader(key="provenance_record").set_value((name, data, "application/json"))


def test_provenance_verifies_the_runs_record_and_model(home: RecordedRun, server_key: str) -> None:
    at = page("provenance", run=RUN_ID)
    assert key_id(server_key) in texts(at)  # the page says which key it checks against
    at.button(key="provenance_verify_run").click().run()
    assert not at.exception
    assert "Verified" in at.success[0].value
    assert f"trusted server key {key_id(server_key)}" in at.success[0].value
    assert "model file matches" in at.success[0].value


def test_provenance_of_a_run_is_checked_against_the_published_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record in the store signed by any key but the data dir's does not pass."""
    run = build_recorded_run(tmp_path)
    signer = sign_as_other(run)
    monkeypatch.setenv("FEDGUARD_HOME", str(tmp_path))
    (tmp_path / PUBLIC_KEY_FILENAME).unlink(missing_ok=True)
    at = page("provenance", run=RUN_ID)
    assert "no published server key" in at.warning[0].value
    at.button(key="provenance_verify_run").click().run()
    assert not at.success and NOT_CHECKED in at.warning[-1].value
    published = public_key_b64(load_or_create_key(tmp_path))  # the server's key, not the signer
    at = page("provenance", run=RUN_ID)
    at.button(key="provenance_verify_run").click().run()
    assert not at.success
    error = at.error[0].value
    assert "signed by a key other than the trusted one" in error
    assert key_id(published) in error and key_id(signer) in error


def test_provenance_detects_a_different_model_and_untrusted_key(
    home: RecordedRun, server_key: str
) -> None:
    at = page("provenance")
    at.text_input(key="provenance_key").set_value("AAAA" + server_key[4:])
    upload_record(at, home.provenance.read_bytes())
    at.file_uploader(key="provenance_model").set_value(
        ("model.pt", home.checkpoints[0].read_bytes(), "application/octet-stream")
    )
    at.button(key="provenance_verify_upload").click().run()
    assert not at.exception
    error = at.error[0].value
    assert "signed by a key other than the trusted one" in error
    assert md_escape("model.pt does not match") in error


@pytest.mark.parametrize("how", ["paste", "upload"])
def test_provenance_upload_with_trusted_key_passes(
    home: RecordedRun, server_key: str, how: str
) -> None:
    at = page("provenance")
    if how == "paste":
        at.text_input(key="provenance_key").set_value(server_key)
    else:
        at.file_uploader(key="provenance_pubkey").set_value(
            (PUBLIC_KEY_FILENAME, (home.data_dir / PUBLIC_KEY_FILENAME).read_bytes(),
             "application/octet-stream")
        )
    upload_record(at, home.provenance.read_bytes())
    at.button(key="provenance_verify_upload").click().run()
    assert "Verified" in at.success[0].value
    assert "model file" not in at.success[0].value


def test_provenance_upload_without_a_key_is_not_a_pass(home: RecordedRun, server_key: str) -> None:
    at = page("provenance")
    upload_record(at, home.provenance.read_bytes())
    at.button(key="provenance_verify_upload").click().run()
    assert not at.exception and not at.success
    assert NOT_CHECKED in at.warning[0].value


def test_provenance_bad_or_conflicting_keys_are_one_line_errors(
    home: RecordedRun, server_key: str
) -> None:
    at = page("provenance")
    upload_record(at, home.provenance.read_bytes())
    at.text_input(key="provenance_key").set_value("not a key")
    at.button(key="provenance_verify_upload").click().run()
    assert not at.exception and "is not a base64 Ed25519 public key" in at.error[0].value
    at.text_input(key="provenance_key").set_value(server_key)
    other = public_key_b64(Ed25519PrivateKey.generate())
    at.file_uploader(key="provenance_pubkey").set_value(
        ("other.pub", other.encode(), "application/octet-stream")
    )
    at.button(key="provenance_verify_upload").click().run()
    assert not at.success and "differ" in at.error[0].value


def test_provenance_tampered_and_malformed_records(home: RecordedRun, server_key: str) -> None:
    signed = json.loads(home.provenance.read_text())
    signed["record"]["privacy"]["101"]["epsilon"] = 0.01  # claim less privacy loss
    at = page("provenance")
    at.text_input(key="provenance_key").set_value(server_key)
    upload_record(at, json.dumps(signed).encode(), "edited.json")
    at.button(key="provenance_verify_upload").click().run()
    assert "signature does not match" in at.error[0].value
    upload_record(at, b"{not json", "broken.json")
    at.button(key="provenance_verify_upload").click().run()
    assert not at.exception
    assert at.error[0].value == md_escape(
        "broken.json is not JSON; upload the provenance .json record"
    )


# --- empty or missing store ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["training", "policy", "provenance"])
def test_pages_explain_a_missing_store(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGUARD_HOME", str(tmp_path / "empty"))
    at = page(name)
    assert not at.exception
    assert "No runs yet" in at.info[0].value and "make demo" in at.info[0].value


def test_pages_explain_an_empty_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    RunStore.in_dir(tmp_path).close()
    monkeypatch.setenv("FEDGUARD_HOME", str(tmp_path))
    at = page("training")
    assert "No runs yet" in at.info[0].value


def test_pages_report_a_corrupt_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "runs.sqlite").write_bytes(b"garbage" * 200)
    monkeypatch.setenv("FEDGUARD_HOME", str(tmp_path))
    at = page("training")
    assert not at.exception
    assert "not a fedguard database" in at.error[0].value


def test_chat_works_without_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_HOME", str(tmp_path / "none"))
    at = ask(page("chat"), "What is the status of the latest run?")
    assert "No run recorded yet" in texts(at)


def test_text_helpers() -> None:
    assert strip_control("a\x00b\nc\u200bd") == ("ab\ncd", 2)
    assert md_escape("a*b*\n<i>") == "a\\*b\\*  \n\\<i\\>"
    assert md_escape("x" * 10, limit=3) == "xxx…"


def test_pages_read_a_store_from_before_verdicts_existed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores written before the verdicts/artifacts tables existed show "none", not an error.

    The run is recorded through the public API; only the two tables are dropped (the one place
    these tests touch the schema) to reproduce such an older store.
    """
    build_recorded_run(tmp_path)
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        db.execute("DROP TABLE verdicts")
        db.execute("DROP TABLE artifacts")
    monkeypatch.setenv("FEDGUARD_HOME", str(tmp_path))
    policy = page("policy", run=RUN_ID)
    assert not policy.exception and "no stored verdicts" in policy.info[0].value
    prov = page("provenance", run=RUN_ID)
    assert not prov.exception and "no provenance record" in prov.info[0].value
    # The assistant evaluates the run's stored manifests with its packs instead.
    chat = ask(page("chat"), "Is the latest run compliant?")
    assert md_escape("against the baseline, gdpr policy pack: PASS WITH WARNINGS") in texts(chat)


def test_policy_upload_uses_the_stores_own_packs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack dropped into <data dir>/policy-packs is offered and applied, as the server does."""
    packs = tmp_path / "policy-packs"
    packs.mkdir()
    (packs / "consortium.toml").write_text(
        '[pack]\nname = "consortium"\nversion = "1"\ntitle.en = "C"\ntitle.zh = "C"\n'
        '[[rule]]\nid = "C1.big-enough"\nseverity = "fail"\nscope = "node"\n'
        'check = "manifest.records >= 100000"\ncitation = "Consortium agreement s. 1"\n'
        'title.en = "Enough records"\ntitle.zh = "记录足够"\n'
        'explain.en = "Too few records."\nexplain.zh = "记录太少。"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("FEDGUARD_HOME", str(tmp_path))
    at = page("policy")
    assert "No runs yet" in at.info[0].value  # the recorded-run tab; uploads still work
    assert "consortium" in at.multiselect(key="policy_packs").options
    at.file_uploader(key="policy_config").set_value(("run.toml", RUN_TOML.encode(), "text/plain"))
    at.file_uploader(key="policy_manifests").set_value(
        [("clinic-a.toml", MANIFEST_TOML.encode(), "text/plain")]
    )
    at.multiselect(key="policy_packs").set_value(["consortium"])
    at.button(key="policy_evaluate").click().run()
    assert at.error[0].value.startswith("FAIL")  # 50 000 records < 100 000
    assert list(at.dataframe[-1].value["rule"]) == ["C1.big-enough"]


def test_chat_reports_a_bad_llm_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_HOME", str(tmp_path))  # a fresh store: a fresh cached Assistant
    monkeypatch.setenv("FEDGUARD_LLM_BASE_URL", "ftp://127.0.0.1/v1")
    at = ask(page("chat"), "What is differential privacy?")
    assert md_escape("is not an http(s) URL") in at.error[0].value


def test_provenance_of_a_run_whose_files_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = build_recorded_run(tmp_path)
    run.model.unlink()  # the final checkpoint is gone: the model check is off by default
    monkeypatch.setenv("FEDGUARD_HOME", str(tmp_path))
    at = page("provenance", run=RUN_ID)
    assert at.checkbox(key="provenance_use_model").value is False
    at.button(key="provenance_verify_run").click().run()
    assert "Verified" in at.success[0].value and "model file" not in at.success[0].value
    run.provenance.unlink()
    at.button(key="provenance_verify_run").click().run()
    assert not at.exception
    assert "not found" in at.error[0].value


@pytest.mark.parametrize(
    "record",
    [
        {"record": {"manifests": 5, "model": "x", "checkpoints": "y", "privacy": [1]}},
        {"record": {"privacy": {"n1": "not a table"}, "secagg": {"k": [1, None]}}},
        {"record": [], "signature": 3},
        {"alg": "Ed25519", "public_key": "AAAA", "signature": "AAAA", "record": {}},
    ],
)
def test_provenance_odd_records_fail_with_reasons(home: RecordedRun, record: dict) -> None:
    at = page("provenance")
    at.file_uploader(key="provenance_record").set_value(
        ("odd.json", json.dumps(record).encode(), "application/json")
    )
    at.button(key="provenance_verify_upload").click().run()
    assert not at.exception
    assert at.error[0].value.startswith("Verification failed")


def test_headline_values_read_as_people_read_them() -> None:
    from assistant.ui.training import shown_value

    assert shown_value("Server accuracy", 0.8734) == "87.3%"
    assert shown_value("Federated recall-cancer", 1.0) == "100.0%"
    assert shown_value("Server mae", 40.41) == "40.41"  # an error in the label's unit
    assert shown_value("Server accuracy", None) == "–"
