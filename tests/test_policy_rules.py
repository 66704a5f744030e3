"""Every shipped rule gets a concrete passing and failing case (tests/data/policy/cases.toml),
plus the headline scenarios: NC data in a commercial run, PIPL legitimate interest, delta >= 1/n."""

from __future__ import annotations

import copy
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.compliance.manifest import Manifest, parse_manifest
from privacy.compliance.policy import (
    BUILTIN_PACKS,
    PolicyError,
    PolicyReport,
    evaluate,
    load_packs,
    load_run_config,
)

DATA = Path(__file__).parent / "data" / "policy"
TODAY = date(2026, 11, 24)
CASES: list[dict[str, Any]] = tomllib.loads((DATA / "cases.toml").read_text("utf-8"))["case"]
BASE_RUN = load_run_config(DATA / "good-run.toml")
BASE_MANIFEST = tomllib.loads((DATA / "good-manifest.toml").read_text("utf-8"))
ALL_PACKS = load_packs(list(BUILTIN_PACKS))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _unset(data: dict[str, Any], dotted: str) -> None:
    section, _, key = dotted.partition(".")
    del data[section][key]


def build(case: dict[str, Any]) -> tuple[dict[str, Any], Manifest]:
    run = {**BASE_RUN, **case.get("run", {})}
    for key in case.get("unset-run", []):
        del run[key]
    raw = _merge(BASE_MANIFEST, case.get("manifest", {}))
    for dotted in case.get("unset", []):
        _unset(raw, dotted)
    return run, parse_manifest(raw)


def report_for(case: dict[str, Any]) -> PolicyReport:
    run, manifest = build(case)
    return evaluate(run, {"n1": manifest}, ALL_PACKS, today=TODAY)


def verdict(report: PolicyReport, rule_id: str) -> Any:
    found = [v for v in report.verdicts if v.rule_id == rule_id]
    assert len(found) == 1, f"{rule_id}: expected one verdict, got {len(found)}"
    return found[0]


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c['rule']}-{c['expect']}" for c in CASES]
)
def test_rule_case(case: dict[str, Any]) -> None:
    v = verdict(report_for(case), case["rule"])
    assert v.status == case["expect"], (v.status, v.evidence, v.note)
    assert v.evidence, "a verdict must show the facts it looked at"
    if case["expect"] != "pass":
        assert v.status == v.severity


def test_every_shipped_rule_has_a_pass_and_a_fail_case() -> None:
    shipped = {r.id: r.severity for p in ALL_PACKS for r in p.rules}
    covered: dict[str, set[str]] = {}
    for case in CASES:
        covered.setdefault(case["rule"], set()).add(case["expect"])
    assert set(covered) == set(shipped)
    for rule_id, severity in shipped.items():
        assert covered[rule_id] == {"pass", severity}, rule_id


def test_shipped_packs_cover_p1_to_p23() -> None:
    pids = {r.pid for p in ALL_PACKS for r in p.rules}
    assert pids == {f"P{i}" for i in range(1, 24)}


def test_good_case_passes_every_applicable_rule() -> None:
    report = report_for({})
    assert not report.run_failed
    assert {v.status for v in report.verdicts} == {"pass", "not-applicable"}


def test_nc_licensed_dataset_in_commercial_run_fails_p9() -> None:
    report = report_for(
        {"run": {"purpose": "commercial"}, "manifest": {"dataset": {"licence": "cc-by-nc-sa-4.0"}}}
    )
    assert report.run_failed
    assert "P9.noncommercial-licence" in report.failing_nodes["n1"]
    # The same data in a research run is fine under P9.
    research = report_for({"manifest": {"dataset": {"licence": "CC-BY-NC-4.0"}}})
    assert verdict(research, "P9.noncommercial-licence").status == "not-applicable"


def test_pipl_node_with_only_legitimate_interest_fails_p10() -> None:
    case = {
        "run": {"server-country": "CN"},
        "manifest": {"dataset": {"country": "CN"},
                     "legal-basis": {"gdpr": "legitimate-interests"}},
        "unset": ["legal-basis.pipl"],
    }
    report = report_for(case)
    assert "P10.pipl-legal-basis" in report.failing_nodes["n1"]
    v = verdict(report, "P10.pipl-legal-basis")
    assert v.evidence["manifest.pipl_basis"] is None
    assert "legitimate" in v.explain["en"]


def test_delta_at_or_above_one_over_n_fails_p3() -> None:
    for delta in (1e-3, 1e-4):  # n = 10000: 1/n = 1e-4
        case = {"run": {"dp-delta": delta}, "manifest": {"dataset": {"records": 10000}}}
        assert verdict(report_for(case), "P3.delta-below-inverse-n").status == "fail"
    ok = {"run": {"dp-delta": 9e-5}, "manifest": {"dataset": {"records": 10000}}}
    assert verdict(report_for(ok), "P3.delta-below-inverse-n").status == "pass"


def test_undeclared_record_count_never_passes_p3() -> None:
    report = report_for({"unset": ["dataset.records"]})
    assert verdict(report, "P3.delta-below-inverse-n").status == "fail"


def test_node_epsilon_from_ledger_overrides_run_target() -> None:
    from privacy.compliance.policy import RunFacts

    run, manifest = build({})
    facts = RunFacts.from_config(run, node_epsilon={"n1": 11.0, "n2": 0.5})
    report = evaluate(facts, {"n1": manifest, "n2": manifest}, ALL_PACKS, today=TODAY)
    assert report.failing_nodes == {"n1": ["P2.epsilon-cap"]}


def test_node_without_manifest_fails_completeness() -> None:
    run, manifest = build({})
    report = evaluate(run, {"n1": manifest, "ghost": None}, ALL_PACKS, today=TODAY)
    assert "P8.manifest-complete" in report.failing_nodes["ghost"]
    assert "n1" not in report.failing_nodes


def test_simulation_needs_no_tls_and_has_no_transfer() -> None:
    case = {"run": {"mode": "simulation", "tls": False, "server-country": "US"}}
    report = report_for(case)
    assert verdict(report, "P5.transport-security").status == "not-applicable"
    assert verdict(report, "P15.eea-transfer").status == "not-applicable"


def test_undeclared_server_country_counts_as_leaving_the_eea() -> None:
    report = report_for({"unset-run": ["server-country"]})
    assert verdict(report, "P15.eea-transfer").status == "fail"


def test_cac_route_thresholds() -> None:
    def route(**transfer: Any) -> str:
        case = {"manifest": {"dataset": {"country": "CN"}, "transfer": transfer}}
        return verdict(report_for(case), "P16.cn-export-route").status

    assert route(**{"people-per-year": 99_999}) == "pass"  # exempt
    assert route(**{"people-per-year": 100_000}) == "fail"  # needs contract
    assert route(**{"people-per-year": 100_000, "mechanism": "cn-standard-contract"}) == "pass"
    assert route(**{"sensitive-people-per-year": 5, "mechanism": "cn-certification"}) == "pass"
    assert route(**{"sensitive-people-per-year": 5}) == "fail"
    big = {"people-per-year": 1_000_000, "mechanism": "cn-standard-contract"}
    assert route(**big) == "fail"  # needs a security assessment
    assert route(**{**big, "mechanism": "cac-security-assessment"}) == "pass"
    assert route(ciio=True, mechanism="cn-standard-contract") == "fail"


def test_pyproject_style_run_config_is_read(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.flwr.app.config]\ndp = true\ndp-epsilon = 2.0\nlr = 0.1\n')
    assert load_run_config(path) == {"dp": True, "dp-epsilon": 2.0, "lr": 0.1}
    path.write_text("tool = 3\ndp = false\n")
    assert load_run_config(path)["dp"] is False


_config_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(), st.text(max_size=8),
    st.sampled_from(["research", "commercial", "simulation", "deployment", "krum"]),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(
    st.sampled_from(["dp", "dp-epsilon", "dp-delta", "purpose", "mode", "secagg", "min-nodes",
                     "aggregation", "server-country", "tls", "log-retention-days", "lr"]),
    _config_values,
))
def test_random_run_configs_evaluate_or_fail_cleanly(config: dict[str, Any]) -> None:
    _, manifest = build({})
    try:
        report = evaluate(config, {"n1": manifest}, ALL_PACKS, today=TODAY)
    except PolicyError as exc:
        assert "\n" not in str(exc) and "run config" in str(exc)
    else:
        assert len(report.verdicts) == sum(len(p.rules) for p in ALL_PACKS)  # one node


def test_integer_node_ids_are_reported_as_strings() -> None:
    run, manifest = build({"run": {"dp": False}})
    report = evaluate(run, {7: manifest}, ALL_PACKS, today=TODAY)
    assert "7" in report.failing_nodes
    assert PolicyReport.from_dict(report.to_dict()).failing_nodes == report.failing_nodes
