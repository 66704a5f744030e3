"""Reports: every verdict with evidence and citation, in English and Chinese; audit trail (P23)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from privacy.compliance.audit import AuditLog
from privacy.compliance.manifest import load_manifest, parse_manifest
from privacy.compliance.policy import (
    BUILTIN_PACKS,
    PolicyError,
    PolicyReport,
    audit_verdicts,
    evaluate,
    load_packs,
    load_run_config,
)

DATA = Path(__file__).parent / "data" / "policy"
TODAY = date(2026, 11, 24)


@pytest.fixture(scope="module")
def report() -> PolicyReport:
    good = load_manifest(DATA / "good-manifest.toml")
    nc = parse_manifest({**good.to_dict(), "dataset": {**good.to_dict()["dataset"],
                                                     "licence": "CC-BY-NC-4.0"}})
    run = {**load_run_config(DATA / "good-run.toml"), "purpose": "commercial", "min-nodes": 2}
    return evaluate(run, {"a": good, "b": nc}, load_packs(list(BUILTIN_PACKS)), today=TODAY)


def test_failure_helpers(report: PolicyReport) -> None:
    assert report.run_failed
    assert report.failing_nodes == {"b": ["P9.noncommercial-licence"]}
    assert report.failing_run_rules == ["P6.secagg-min-nodes"]
    assert report.counts["fail"] == 2
    assert sum(report.counts.values()) == len(report.verdicts)


def test_markdown_lists_every_verdict_with_citation_and_evidence(report: PolicyReport) -> None:
    md = report.to_markdown("en")
    table = [line for line in md.splitlines() if line.startswith("| ") and "`" in line]
    assert len(table) == len(report.verdicts)
    for v in report.verdicts:
        assert v.rule_id in md and v.citation in md
    assert "manifest.licence_noncommercial=true" in md
    assert "FAIL: the run must not start" in md
    fix = md.split("## What to fix", 1)[1]
    assert "CC NonCommercial" in fix and "P6.secagg-min-nodes" in fix


def test_chinese_markdown(report: PolicyReport) -> None:
    md = report.to_markdown("zh")
    assert "不通过：本次训练不得启动" in md
    assert "商业训练不得使用非商业（NC）许可的数据" in md
    assert "Differential privacy is on" not in md  # titles are translated, not mixed


def test_unsupported_language(report: PolicyReport) -> None:
    with pytest.raises(PolicyError, match="use en or zh"):
        report.to_markdown("fr")


def test_json_round_trips_and_can_be_reduced_to_one_language(report: PolicyReport) -> None:
    data = json.loads(report.to_json())
    assert len(data["verdicts"]) == len(report.verdicts)
    assert data["failing_nodes"] == {"b": ["P9.noncommercial-licence"]}
    again = PolicyReport.from_dict(data)
    assert again.verdicts == report.verdicts and again.sha256() == report.sha256()
    zh = json.loads(report.to_json("zh"))
    assert zh["lang"] == "zh" and isinstance(zh["verdicts"][0]["title"], str)
    with pytest.raises(PolicyError, match="not a policy report"):
        PolicyReport.from_dict({"verdicts": [{"x": 1}]})


def test_digest_changes_when_a_verdict_changes(report: PolicyReport) -> None:
    data = json.loads(report.to_json())
    data["verdicts"][0]["status"] = "fail"
    assert PolicyReport.from_dict(data).sha256() != report.sha256()


def test_audit_verdicts_writes_every_decision(tmp_path: Path, report: PolicyReport) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    written = audit_verdicts(log, report, run_id="run-7")
    assert len(written) == len(report.verdicts) + 1
    kinds = [e["kind"] for e in log.entries()]
    assert kinds.count("policy.verdict") == len(report.verdicts)
    summary = written[-1]["payload"]
    assert summary["report_sha256"] == report.sha256() and summary["run_failed"] is True
    fails = [e["payload"] for e in written if e["payload"].get("status") == "fail"]
    assert {(f["rule"], f["node"]) for f in fails} == {
        ("P9.noncommercial-licence", "b"), ("P6.secagg-min-nodes", None)
    }
    assert log.verify(None).ok


def test_markdown_escapes_table_pipes() -> None:
    from privacy.compliance.policy.report import Verdict

    v = Verdict("X1", None, "p", "n|1", "warn", "warn", "a|b", {"en": "t|t", "zh": "t"},
                {"en": "e", "zh": "e"}, {"k": "v|w"})
    md = PolicyReport([v], [{"name": "p", "version": "1"}], "2026-01-01").to_markdown()
    row = next(line for line in md.splitlines() if line.startswith("| warn"))
    assert row.count(" | ") == 6  # seven columns, the pipes inside cells escaped


def test_reports_show_when_each_rule_was_verified(report: PolicyReport) -> None:
    v = report.find("P15.eea-transfer", "a")
    assert v is not None and v.verified == "2026-12-01"
    md = report.to_markdown("en")
    assert "| Verified |" in md and "2026-12-01" in md
    assert "| 核实日期 |" in report.to_markdown("zh")
    data = json.loads(report.to_json())
    assert {x["rule_id"]: x["verified"] for x in data["verdicts"]}["P15.eea-transfer"] == (
        "2026-12-01")
    assert PolicyReport.from_dict(data).find("P15.eea-transfer", "a").verified == "2026-12-01"
    fix = md.split("## What to fix", 1)[1]
    assert "(Verified 2026-12-01)" in fix  # the failing NC rule names its check date


def test_stored_reports_without_verification_dates_still_load(report: PolicyReport) -> None:
    data = report.to_dict()
    for v in data["verdicts"]:
        del v["verified"]
    assert PolicyReport.from_dict(data).verdicts[0].verified == ""


def test_summary_is_one_line_naming_failures(report: PolicyReport) -> None:
    assert report.summary() == (
        "policy check failed: run: P6.secagg-min-nodes; b: P9.noncommercial-licence"
    )
