"""One run-config schema: its defaults are the app's, its reference page is generated from it,
and every key is checked the same way wherever it is read."""

from __future__ import annotations

import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from clients.task.run_config import ConfigError, RunConfig, defaults, markdown_table
from server.compliance.policy_view import policy_config

ROOT = Path(__file__).resolve().parent.parent
APP = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]
BUNDLED_TASK_KEYS = {"model", "partition", "dirichlet-alpha", "test-fraction"}


def test_schema_defaults_equal_the_app_config() -> None:
    config = APP["config"]
    schema = defaults()
    assert set(config) - BUNDLED_TASK_KEYS == set(schema)
    for key, value in schema.items():
        assert config[key] == value or (isinstance(value, float) and math.isclose(
            config[key], value)), key


def test_docs_configuration_is_generated_from_the_schema() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert markdown_table() in page, "regenerate: python -m clients.task.run_config"
    out = subprocess.run([sys.executable, "-m", "clients.task.run_config"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    assert out == markdown_table()


def test_task_keys_pass_through_untouched() -> None:
    cfg = RunConfig.parse({"hidden-size": 128, "lr": 0.05})
    assert cfg.lr == 0.05 and not hasattr(cfg, "hidden_size")


def test_a_guarantee_the_config_cannot_give_is_refused() -> None:
    """Issue 12.1: user-level DP without secure aggregation would add only noise shares."""
    with pytest.raises(ConfigError, match="central-dp=true needs secagg=true"):
        RunConfig.parse({"central-dp": True})
    RunConfig.parse({"central-dp": True, "secagg": True})
    with pytest.raises(ConfigError, match="dp-secure-mode"):
        RunConfig.parse({"dp": True, "dp-secure-mode": True})


@pytest.mark.parametrize("key,value,needle", [
    ("deployer-public-service", "maybe", 'true or false, or "" while undecided'),
    ("gpai-training-flop", True, "a number"),
    ("aggregator-role", "owner", "use one of"),
    ("min-nodes", 0, "must be >= 1"),
    ("fraction-train", 0.0, "must be > 0"),
])
def test_bad_values_name_the_key_and_the_fix(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.parse({key: value})
    assert key in str(info.value) and needle in str(info.value)


def test_undecided_facts_stay_undecided_for_the_policy() -> None:
    view = policy_config({}, "deployment")
    assert view["gpai-systemic-risk"] == "" and view["gpai-training-flop"] == ""
    assert view["audit-log"] is True and view["mode"] == "deployment"
    assert RunConfig.parse({"gpai-training-flop": 2e25}).gpai_training_flop == 2e25


def test_offline_check_judges_exactly_what_the_server_judges(tmp_path: Path) -> None:
    """Issue 13: a partial run.toml (no batch-size, no min-nodes) used to fail P4 offline while
    the same run passed on the server, which fills in the app's defaults."""
    import json

    from privacy.compliance.manifest import load_manifest
    from privacy.compliance.policy import run_policy_gate
    from server.policy_cli import main as policy_main

    run_toml = tmp_path / "run.toml"
    run_toml.write_text('dp = true\nsecagg = true\ntls = true\nnode-auth = true\n'
                        'policy-packs = "baseline"\n', encoding="utf-8")
    manifest = ROOT / "clients" / "tasks" / "manifests" / "digits.toml"
    out = tmp_path / "report.json"
    policy_main(["check", "--run-config", str(run_toml), "--manifest", f"n1={manifest}",
                 "--json", "--out", str(out), "--today", "2026-12-01"])
    offline = {(v["rule_id"], v["node"]): v["status"]
               for v in json.loads(out.read_text(encoding="utf-8"))["verdicts"]}
    import tomllib
    from datetime import date

    server_view = policy_config(tomllib.loads(run_toml.read_text()), "deployment")
    report = run_policy_gate(server_view, {"n1": load_manifest(manifest)}, tmp_path,
                             today=date(2026, 12, 1))
    server = {(v.rule_id, v.node): v.status for v in report.verdicts}
    assert offline == server
    p4 = [status for (rule, _), status in offline.items() if rule.startswith("P4")]
    assert p4 and "fail" not in p4  # batch-size and the rest came from the schema's defaults
