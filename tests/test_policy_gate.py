"""The server's one-call gate: packs from the run config and the data dir, verdicts audited."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from privacy.compliance.audit import AuditLog
from privacy.compliance.manifest import load_manifest, parse_manifest
from privacy.compliance.policy import PolicyError, load_run_config, run_policy_gate
from privacy.compliance.policy.loader import ENV_VAR

DATA = Path(__file__).parent / "data" / "policy"
TODAY = date(2026, 11, 24)


@pytest.fixture(autouse=True)
def _no_env_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_gate_uses_config_packs_data_dir_packs_and_audits(tmp_path: Path) -> None:
    (tmp_path / "policy-packs").mkdir()
    shutil.copy(DATA / "user-packs" / "hospital.toml", tmp_path / "policy-packs")
    good = load_manifest(DATA / "good-manifest.toml")
    tiny = parse_manifest({**good.to_dict(), "dataset": {**good.to_dict()["dataset"],
                                                         "records": 100}})
    config = {**load_run_config(DATA / "good-run.toml"),
              "policy-params": "gdpr.dpia-max-age-days=30"}
    log = AuditLog(tmp_path / "audit.jsonl")
    report = run_policy_gate(config, {1: good, 2: tiny}, tmp_path, log, "run-1", today=TODAY)
    assert {p["name"] for p in report.packs} == {"baseline", "gdpr", "hospital"}
    assert report.failing_nodes == {"2": ["H1.enough-records"]}
    assert report.find("P13.gdpr-dpia-current", "1").status == "warn"  # 176 days > 30
    assert report.summary() == "policy check failed: 2: H1.enough-records"
    entries = list(log.entries())
    assert len(entries) == len(report.verdicts) + 1
    assert entries[-1]["payload"]["run_id"] == "run-1" and log.verify(None).ok


def test_gate_passes_and_says_so(tmp_path: Path) -> None:
    config = load_run_config(DATA / "good-run.toml")
    report = run_policy_gate(config, {"a": load_manifest(DATA / "good-manifest.toml")},
                             tmp_path, today=TODAY)
    assert not report.run_failed
    assert report.summary() == "policy check passed (0 warnings)"


def test_gate_that_writes_the_audit_log_declares_it(tmp_path: Path) -> None:
    config = {k: v for k, v in load_run_config(DATA / "good-run.toml").items()
              if k != "audit-log"}
    good = {"a": load_manifest(DATA / "good-manifest.toml")}
    offline = run_policy_gate(config, good, tmp_path, today=TODAY)
    assert offline.failing_run_rules == ["P23.audit-log"]  # nobody said a log is kept
    logged = run_policy_gate({**config, "audit-log": False}, good, tmp_path,
                             AuditLog(tmp_path / "audit.jsonl"), "run-2", today=TODAY)
    assert logged.find("P23.audit-log").status == "pass"  # the gate is writing it
    entry = next(e for e in AuditLog(tmp_path / "audit.jsonl").entries()
                 if e["payload"].get("rule") == "P23.audit-log")
    assert entry["payload"]["verified"] == "2026-12-01"


def test_gate_rejects_bad_config(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="parameter override"):
        run_policy_gate({"policy-params": "oops"}, {}, tmp_path)
    with pytest.raises(PolicyError, match="unknown policy pack"):
        run_policy_gate({"policy-packs": "baseline,nope"}, {}, tmp_path)


def test_by_default_every_law_applies_where_its_trigger_holds(tmp_path: Path) -> None:
    """No policy-packs in the run config: a node in China exporting sensitive data to a server in
    Germany meets the PIPL rules without anyone selecting them; a node in the EEA is judged by
    the GDPR pack, and neither by the other's law."""
    config = load_run_config(DATA / "good-run.toml")
    del config["policy-packs"]
    good = load_manifest(DATA / "good-manifest.toml").to_dict()
    cn = {**good, "dataset": {**good["dataset"], "country": "CN"},
          "transfer": {**good.get("transfer", {}), "mechanism": "none",
                       "sensitive-people-per-year": 20_000}}
    report = run_policy_gate(config, {"eu": load_manifest(DATA / "good-manifest.toml"),
                                      "cn": parse_manifest(cn)}, tmp_path, today=TODAY)
    assert {p["name"] for p in report.packs} == {"baseline", "gdpr", "pipl", "cn-genai",
                                                 "eu-ai-act"}
    assert report.find("P16.cn-export-route", "cn").status == "fail"
    assert "P16.cn-export-route" in report.failing_nodes["cn"]
    assert report.find("P16.cn-export-route", "eu").status == "not-applicable"
    assert "eu" not in report.failing_nodes
    named = run_policy_gate({**config, "policy-packs": "baseline"}, {"cn": parse_manifest(cn)},
                            tmp_path, today=TODAY)
    assert {p["name"] for p in named.packs} == {"baseline"}  # naming packs still narrows
