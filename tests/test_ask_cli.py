"""`fedguard-ask`: one JSON object with --json, one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from assistant.__main__ import main

ROOT = Path(__file__).resolve().parents[1]

ENTRY = {
    "id": "pipl-cross-border",
    "topic": "cross-border",
    "jurisdiction": ["CN"],
    "question": {
        "en": "How can personal information be transferred out of China?",
        "zh": "个人信息出境有哪些合法途径？",
    },
    "paraphrases": {
        "en": ["Which PIPL mechanisms allow exporting personal data from China?"],
        "zh": ["向境外提供个人信息需要安全评估还是标准合同？"],
    },
    "answer": {
        "en": "Through a CAC security assessment, certification or the standard contract.",
        "zh": "通过网信办安全评估、个人信息保护认证或标准合同。",
    },
    "citations": ["PIPL Art. 38", "CAC Provisions 2024"],
    "last_verified": "2026-11-20",
}
OTHER = {
    **ENTRY,
    "id": "dp-epsilon",
    "topic": "differential-privacy",
    "jurisdiction": ["INTL"],
    "question": {"en": "What does epsilon mean?", "zh": "epsilon是什么意思？"},
    "paraphrases": {"en": ["How do I read epsilon?"], "zh": ["怎么理解epsilon？"]},
    "answer": {"en": "A bound on privacy loss.", "zh": "隐私损失的上界。"},
    "citations": ["Dwork & Roth 2014"],
}


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDGUARD_LLM_BASE_URL", raising=False)


@pytest.fixture
def kb_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "kb"
    directory.mkdir()
    text = yaml.safe_dump([ENTRY, OTHER], allow_unicode=True)
    (directory / "kb.yaml").write_text(text, encoding="utf-8")
    return directory


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_prints_exactly_one_object(kb_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(
        capsys, "Which mechanisms let us export personal data from China?", "--json",
        "--kb", str(kb_dir),
    )  # fmt: skip
    assert code == 0 and err == ""
    assert out.count("\n") == 1
    data = json.loads(out)
    assert list(data) == ["answer", "lang", "confidence", "abstained", "sources"]
    assert data["lang"] == "en" and not data["abstained"]
    assert [s["citation"] for s in data["sources"]] == ["PIPL Art. 38", "CAC Provisions 2024"]


def test_lang_flag_and_text_output(kb_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(
        capsys, "How can personal data be exported from China?", "--lang", "zh", "--kb", str(kb_dir)
    )
    assert code == 0
    assert out.startswith("通过网信办安全评估")
    assert "[1] PIPL Art. 38" in out and "CN" in out and "2026-11-20" in out
    assert "不构成法律意见" in out


def test_off_topic_abstains_with_status_zero(
    kb_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_main(capsys, "红烧肉怎么做？", "--json", "--kb", str(kb_dir))
    data = json.loads(out)
    assert code == 0 and data["abstained"] and data["sources"] == [] and data["lang"] == "zh"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["   "], "question is empty"),
        (["x" * 2001], "shorten it"),
        (["epsilon?", "--lang", "fr"], "invalid choice: 'fr'"),
        ([], "the following arguments are required: question"),
        (["epsilon?", "--kb", "/nonexistent/kb"], "does not exist"),
        (["epsilon?", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    kb_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    if "--kb" not in argv and argv:
        argv = [*argv, "--kb", str(kb_dir)]
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("fedguard-ask: error: ") and err.count("\n") == 1
    assert needle in err and "Traceback" not in err


def test_broken_kb_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    broken = {**ENTRY, "answer": {"en": "only English"}}
    (bad / "broken.yaml").write_text(yaml.safe_dump([broken]), encoding="utf-8")
    code, _, err = run_main(capsys, "epsilon?", "--kb", str(bad))
    assert code == 2 and "broken.yaml" in err and "answer.zh" in err and err.count("\n") == 1


def test_bad_llm_env_is_a_one_line_error(
    kb_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDGUARD_LLM_BASE_URL", "not-a-url")
    code, _, err = run_main(capsys, "epsilon?", "--kb", str(kb_dir))
    assert code == 2 and "FEDGUARD_LLM_BASE_URL" in err and err.count("\n") == 1


@pytest.mark.slow
def test_module_in_a_fresh_process_prints_only_json(kb_dir: Path, tmp_path: Path) -> None:
    """A real process: jieba's start-up chatter must not reach stdout (or stderr)."""
    env = {
        **os.environ,
        "FEDGUARD_CACHE_DIR": str(tmp_path / "fresh-cache"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("FEDGUARD_LLM_BASE_URL", None)
    argv = [sys.executable, "-m", "assistant", "个人信息出境有哪些途径？", "--json"]
    proc = subprocess.run(
        [*argv, "--kb", str(kb_dir)], capture_output=True, text=True, env=env, cwd=tmp_path,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout)["lang"] == "zh"


def test_live_question_reads_the_run_store_in_data_dir(
    kb_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("assistant.live_source")
    empty = tmp_path / "no-runs"
    empty.mkdir()
    code, out, _ = run_main(
        capsys, "What is the accuracy of the latest round?", "--json", "--kb", str(kb_dir),
        "--data-dir", str(empty),
    )  # fmt: skip
    data = json.loads(out)
    assert code == 0 and data["abstained"] and "make demo" in data["answer"]
    assert list(empty.iterdir()) == []  # reading must not create a store


def test_live_question_without_adapter_says_no_store_is_connected(
    kb_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import assistant.__main__ as cli

    monkeypatch.setattr(cli, "live_source", lambda data_dir: None)
    code, out, _ = run_main(capsys, "节点3消耗了多少隐私预算？", "--json", "--kb", str(kb_dir))
    data = json.loads(out)
    assert code == 0 and data["lang"] == "zh" and "运行记录库" in data["answer"]


def test_out_of_date_entry_carries_the_update_note_in_text_and_json(
    kb_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old-kb"
    old.mkdir()
    stale = {**ENTRY, "last_verified": "2024-06-01"}  # more than a year before any test run
    (old / "kb.yaml").write_text(yaml.safe_dump([stale, OTHER], allow_unicode=True), "utf-8")
    question = "Which mechanisms let us export personal data from China?"
    code, out, _ = run_main(capsys, question, "--kb", str(old))
    answer, note = out.split("\n\n")[:2]
    assert code == 0 and answer == ENTRY["answer"]["en"]
    assert note == (
        "Check for updates: this entry was last verified on 2024-06-01, more than a year ago."
    )
    code, out, _ = run_main(capsys, question, "--json", "--kb", str(old))
    assert json.loads(out)["answer"] == f"{ENTRY['answer']['en']}\n\n{note}"
    code, out, _ = run_main(capsys, question, "--json", "--kb", str(kb_dir))
    assert "Check for updates" not in json.loads(out)["answer"]  # verified 2026-11-20: current
