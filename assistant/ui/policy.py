"""Policy checks page: a recorded run's stored verdicts, or uploaded config + manifests evaluated
with chosen packs; verdicts in English or Chinese, reports downloadable as Markdown and JSON.

Uploads are parsed by `privacy.compliance.policy` / `privacy.compliance.manifest`; any problem
is their one-line message, shown with the file name, never a traceback.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from assistant.ui.data import (
    StoreUnavailable,
    data_dir,
    pick_run,
    query,
    runs_or_message,
    show_unavailable,
    stored_path,
)
from assistant.ui.text import md_escape, one_line
from privacy.compliance.manifest import Manifest, ManifestError, loads_manifest
from privacy.compliance.policy import (
    PolicyError,
    PolicyReport,
    Verdict,
    available_packs,
    evaluate,
    load_packs,
    load_run_config,
)
from privacy.compliance.policy.report import STATUSES
from server.store.records import VerdictRecord

MAX_TOML_BYTES = 256 * 1024
LANGS = {"en": "English", "zh": "中文"}
RESULT_KEY = "policy_upload_report"
_L = {
    "en": {"run": "(run)", "verdict": "verdict", "rule": "rule", "pack": "pack", "node": "node",
           "check": "check", "citation": "citation", "explanation": "what it means"},
    "zh": {"run": "（整个训练）", "verdict": "结论", "rule": "规则", "pack": "策略包",
           "node": "节点", "check": "检查项", "citation": "依据", "explanation": "说明"},
}
_RESULT = {
    "en": {"fail": "FAIL — the run must not start.", "warn": "PASS with warnings.",
           "pass": "PASS — no failing rule.",
           "note": "Thresholds are configurable internal defaults, not legal requirements; "
                   "this report is not legal advice."},
    "zh": {"fail": "不通过：本次训练不得启动。", "warn": "通过（有警告）。",
           "pass": "通过：没有不通过的规则。",
           "note": "阈值为可配置的内部默认值，并非法律要求；本报告不构成法律意见。"},
}


def pack_dirs() -> list[Path]:
    """User pack directories, as the server uses them: <data dir>/policy-packs."""
    return [data_dir() / "policy-packs"]


def report_from_rows(rows: list[VerdictRecord]) -> PolicyReport:
    """Rebuild a PolicyReport from the stored verdicts, so stored runs download like fresh ones.

    Pack versions are read from the installed packs when they still exist (the run store keeps
    only pack names); an unknown status is reported as `info` with a note rather than dropped.
    """
    verdicts = []
    for r in rows:
        status, note = r.verdict, r.note
        if status not in STATUSES:
            note = "; ".join(n for n in (note, f"stored verdict {status!r}") if n)
            status = "info"
        title = r.title or {"en": r.rule_id}
        verdicts.append(Verdict(
            rule_id=r.rule_id, pid=r.pid, pack=r.pack, node=r.node_id or None, status=status,
            severity=r.severity, citation=r.citation,
            title={"en": title.get("en", ""), "zh": title.get("zh") or title.get("en", "")},
            explain={"en": r.explain.get("en", ""),
                     "zh": r.explain.get("zh") or r.explain.get("en", "")},
            evidence=r.evidence if isinstance(r.evidence, dict) else {}, note=note,
            verified=r.verified,
        ))
    names = sorted({v.pack for v in verdicts if v.pack})
    found = available_packs(pack_dirs())
    packs = []
    for name in names:
        version = "?"
        if name in found:
            with contextlib.suppress(PolicyError):
                version = load_packs([name], pack_dirs())[0].summary().get("version", "?")
        packs.append({"name": name, "version": version})
    return PolicyReport(verdicts, packs, "recorded")


def verdict_table(report: PolicyReport, lang: str) -> pd.DataFrame:
    t = _L[lang]
    return pd.DataFrame([
        {
            t["verdict"]: v.status,
            t["rule"]: v.rule_id,
            t["pack"]: v.pack,
            t["node"]: v.node or t["run"],
            t["check"]: v.title.get(lang, ""),
            t["citation"]: v.citation,
            t["explanation"]: v.explain.get(lang, "") if v.status in ("fail", "warn") else "",
        }
        for v in report.verdicts
    ])


def show_report(report: PolicyReport, lang: str, key: str) -> None:
    """Result line, counts, the verdict table and the two downloads."""
    counts = ", ".join(f"{n} {s}" for s, n in report.counts.items() if n)
    text = _RESULT[lang]
    if report.run_failed:
        st.error(f"{text['fail']} {counts}")
    elif report.counts.get("warn"):
        st.warning(f"{text['warn']} {counts}")
    else:
        st.success(f"{text['pass']} {counts}")
    st.dataframe(verdict_table(report, lang), hide_index=True)
    st.caption(text["note"])
    left, right = st.columns(2)
    left.download_button(
        "Download Markdown report", report.to_markdown(lang), file_name=f"policy-report-{lang}.md",
        mime="text/markdown", key=f"{key}-md", on_click="ignore",
    )
    right.download_button(
        "Download JSON report", report.to_json(lang), file_name=f"policy-report-{lang}.json",
        mime="application/json", key=f"{key}-json", on_click="ignore",
    )


def _recorded(lang: str) -> None:
    runs = runs_or_message()
    if runs is None:
        return
    run_id = pick_run(runs, key="policy_run")
    try:
        rows = query("verdicts", run_id)
        artifacts = query("artifacts", run_id)
    except StoreUnavailable as exc:
        show_unavailable(exc)
        return
    if not rows:
        st.info("This run has no stored verdicts; upload its run config and manifests in the "
                "“Upload files” tab to check it.")
        return
    show_report(report_from_rows(rows), lang, key=f"recorded-{run_id}")
    stored = [(k, stored_path(a["path"])) for k, a in sorted(artifacts.items())
              if k.startswith("report-")]
    stored = [(k, p) for k, p in stored if p.is_file()]
    if stored:
        st.caption("Report files the server stored with the run:")
        for kind, path in stored:
            st.download_button(
                f"Stored {kind}", path.read_bytes(), file_name=path.name, key=f"stored-{kind}",
                on_click="ignore",
            )


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name)[:80].strip("._")
    return stem or "upload"


def parse_run_config(data: bytes, name: str) -> dict[str, Any]:
    """Run-config TOML bytes via `load_run_config`; PolicyError names the upload, not a temp."""
    if len(data) > MAX_TOML_BYTES:
        raise PolicyError(f"{name}: larger than {MAX_TOML_BYTES // 1024} KiB; is it a run config?")
    with tempfile.TemporaryDirectory(prefix="fedguard-ui-") as tmp:
        path = Path(tmp) / _safe_name(name)
        path.write_bytes(data)
        try:
            return load_run_config(path)
        except PolicyError as exc:
            raise PolicyError(str(exc).replace(str(path), name)) from None


def parse_manifests(files: list[tuple[str, bytes]]) -> dict[str, Manifest]:
    """Node id (file stem, made unique) -> Manifest; ManifestError names the bad file."""
    out: dict[str, Manifest] = {}
    for name, data in files:
        if len(data) > MAX_TOML_BYTES:
            raise ManifestError(f"{name}: larger than {MAX_TOML_BYTES // 1024} KiB")
        node = Path(_safe_name(name)).stem or "node"
        base, i = node, 2
        while node in out:
            node, i = f"{base}-{i}", i + 1
        out[node] = loads_manifest(data, name)
    return out


def evaluate_uploads(
    config: tuple[str, bytes], manifests: list[tuple[str, bytes]], packs: list[str]
) -> PolicyReport:
    """Evaluate uploaded files; raises PolicyError/ManifestError with a one-line message."""
    if not packs:
        raise PolicyError("choose at least one policy pack")
    run = parse_run_config(config[1], config[0])
    parsed = parse_manifests(manifests)
    return evaluate(run, parsed, load_packs(packs, pack_dirs()))


def _upload(lang: str) -> None:
    st.caption("A run config is the flat kebab-case TOML (or a pyproject with "
               "[tool.flwr.app.config]); each manifest file is one node, named after the file.")
    config = st.file_uploader("Run config (TOML)", type=["toml"], key="policy_config")
    manifests = st.file_uploader("Node manifests (TOML)", type=["toml"],
                                 accept_multiple_files=True, key="policy_manifests")
    names = sorted(available_packs(pack_dirs()))
    default = names  # every pack: each applies only where its law's trigger holds
    packs = st.multiselect("Policy packs", names, default=default, key="policy_packs")
    if st.button("Evaluate", type="primary", key="policy_evaluate"):
        st.session_state.pop(RESULT_KEY, None)
        if config is None:
            st.error("Upload a run config TOML first.")
            return
        files = [(f.name, f.getvalue()) for f in manifests or []]
        try:
            report = evaluate_uploads((config.name, config.getvalue()), files, packs)
        except (PolicyError, ManifestError) as exc:
            st.error(md_escape(one_line(exc)))
            return
        st.session_state[RESULT_KEY] = (report, bool(files))
    result = st.session_state.get(RESULT_KEY)
    if result is not None:
        report, had_manifests = result
        if not had_manifests:
            st.info("No manifests uploaded: node-level rules were not checked.")
        show_report(report, lang, key="upload")


def render() -> None:
    """The Policy checks page."""
    st.title("Policy checks")
    lang = st.radio("Language / 语言", list(LANGS), format_func=LANGS.__getitem__,
                    horizontal=True, key="policy_lang")
    recorded, upload = st.tabs(["Recorded run", "Upload files"])
    with recorded:
        _recorded(lang)
    with upload:
        _upload(lang)
