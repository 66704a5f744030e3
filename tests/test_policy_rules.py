"""Every shipped rule gets a concrete passing and failing case (tests/data/policy/cases.toml),
plus the headline scenarios: NC data in a commercial run, PIPL legitimate interest, delta >= 1/n,
EEA transfers, who owes a PIPIA, age bands, facts across nodes and undeclared run facts."""

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
    manifests = {"n1": manifest}
    if "peer" in case:
        manifests["n2"] = parse_manifest(_merge(BASE_MANIFEST, case["peer"]))
    return evaluate(run, manifests, ALL_PACKS, today=case.get("today", TODAY))


def verdict(report: PolicyReport, rule_id: str, node: str = "n1") -> Any:
    found = [v for v in report.verdicts if v.rule_id == rule_id and v.node in (None, node)]
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


def test_shipped_packs_cover_p1_to_p29() -> None:
    pids = {r.pid for p in ALL_PACKS for r in p.rules}
    assert pids == {f"P{i}" for i in range(1, 30)}


def test_every_verdict_carries_the_rules_verification_date() -> None:
    report = report_for({})
    dated = {v.rule_id: v.verified for v in report.verdicts}
    assert dated["P15.eea-transfer"] == "2026-12-01"
    assert all(d == "" or date.fromisoformat(d) <= date(2026, 12, 1) for d in dated.values())
    legal = [r for p in ALL_PACKS if p.name != "baseline" for r in p.rules]
    undated = [r.id for r in legal if not r.verified and not r.id.startswith("P16.cn-export-route")]
    assert undated == [], "every law-pack rule records when its citation was checked"


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


@pytest.mark.parametrize(
    ("server", "transfer", "run_extra", "expected"),
    [
        ("US", {"mechanism": "scc"}, {}, "fail"),  # SCCs without a transfer impact assessment
        ("US", {"mechanism": "bcr", "tia-ref": "TIA-1"}, {}, "pass"),
        ("US", {"mechanism": "derogation"}, {}, "fail"),  # not for a recurring pipeline
        ("US", {"mechanism": "adequacy"}, {}, "fail"),  # the US decision needs DPF certification
        ("US", {"mechanism": "adequacy"}, {"server-dpf-certified": True}, "pass"),
        ("JP", {"mechanism": "adequacy"}, {}, "pass"),
        ("CN", {"mechanism": "adequacy"}, {}, "fail"),
        ("CA", {"mechanism": "adequacy"}, {}, "fail"),  # commercial organisations only
        ("FR", {"mechanism": "none"}, {}, "not-applicable"),  # the server is in the EEA
    ],
)
def test_eea_transfer_mechanisms(
    server: str, transfer: dict[str, Any], run_extra: dict[str, Any], expected: str
) -> None:
    case = {"run": {"server-country": server, **run_extra}, "manifest": {"transfer": transfer}}
    assert verdict(report_for(case), "P15.eea-transfer").status == expected


def test_global_model_export_needs_eea_personal_data_on_another_node() -> None:
    us = {"dataset": {"country": "US"}, "transfer": {"import-mechanism": "none"}}
    rule = "P15.eea-model-to-third-country"
    assert verdict(report_for({"manifest": us, "peer": {}}), rule).status == "fail"
    assert verdict(report_for({"manifest": us}), rule).status == "not-applicable"  # alone
    no_personal = {"data": {"personal": False}}
    assert verdict(report_for({"manifest": us, "peer": no_personal}), rule).status == (
        "not-applicable")
    simulated = {"manifest": us, "peer": {}, "run": {"mode": "simulation"}}
    assert verdict(report_for(simulated), rule).status == "not-applicable"
    scc = {**us, "transfer": {"import-mechanism": "scc", "tia-ref": "TIA-9"}}
    assert verdict(report_for({"manifest": scc, "peer": {}}), rule).status == "pass"
    # The EEA node itself is not receiving a transfer.
    assert verdict(report_for({"manifest": us, "peer": {}}), rule, "n2").status == (
        "not-applicable")


@pytest.mark.parametrize(
    ("role", "run", "data", "applies"),
    [
        ("processor", {}, {}, False),  # an entrusted party owes no PIPIA
        ("controller", {"mode": "simulation"}, {}, False),  # nothing entrusted or provided
        ("controller", {}, {}, True),  # updates go to the aggregator (Art. 55(3))
        ("controller", {"mode": "simulation"}, {"sensitive": True}, True),
        ("controller", {"mode": "simulation", "automated-decisions": True}, {}, True),
        ("joint-controller", {"mode": "simulation"}, {"minors": True, "under-14": True}, True),
    ],
)
def test_who_owes_a_pipia(
    role: str, run: dict[str, Any], data: dict[str, Any], applies: bool
) -> None:
    case = {"run": {"server-country": "CN", **run},
            "manifest": {"dataset": {"country": "CN"}, "roles": {"role": role}, "data": data},
            "unset": ["impact-assessment.reference"]}
    status = verdict(report_for(case), "P13.pipl-pipia").status
    assert status == ("fail" if applies else "not-applicable")


def test_age_bands_are_separate_and_matter_only_on_consent() -> None:
    both = {"dataset": {"jurisdictions": ["pipl"]}}  # a DE node also under the PIPL
    fifteen = {**both, "data": {"minors": True, "under-14": False, "below-consent-age": True}}
    report = report_for({"manifest": fifteen})
    assert verdict(report, "P12.gdpr-minors").status == "fail"
    assert verdict(report, "P12.pipl-minors").status == "not-applicable"
    twelve_gdpr_contract = {
        "dataset": {"jurisdictions": ["pipl"]},
        "data": {"minors": True, "under-14": True, "below-consent-age": True},
        "legal-basis": {"gdpr": "contract"},
    }
    report = report_for({"manifest": twelve_gdpr_contract})
    assert verdict(report, "P12.gdpr-minors").status == "not-applicable"
    assert verdict(report, "P12.pipl-minors").status == "fail"  # pipl basis is still consent
    other_basis = {**twelve_gdpr_contract,
                   "legal-basis": {"gdpr": "contract", "pipl": "contract-or-hr"}}
    assert verdict(report_for({"manifest": other_basis}), "P12.pipl-minors").status == (
        "not-applicable")


def test_provision_to_aggregator_depends_on_its_role() -> None:
    cn = {"dataset": {"country": "CN"}}
    rule = "P14.pipl-provision-to-aggregator"
    for role, expected in (("processor", "not-applicable"), ("joint-controller",
                           "not-applicable"), ("controller", "fail")):
        case = {"run": {"server-country": "CN", "aggregator-role": role}, "manifest": cn}
        assert verdict(report_for(case), rule).status == expected, role
    undeclared = {"run": {"server-country": "CN"}, "manifest": cn, "unset-run": ["aggregator-role"]}
    assert verdict(report_for(undeclared), rule).status == "fail"


def test_sector_localisation_is_satisfied_by_a_server_in_china() -> None:
    health = {"dataset": {"country": "CN"}, "data": {"sensitive": True},
              "sector": {"health": True, "financial": True}}
    abroad = report_for({"manifest": health})
    at_home = report_for({"run": {"server-country": "CN"}, "manifest": health})
    for rule in ("P28.cn-health-data-localisation", "P28.cn-financial-data-localisation"):
        assert verdict(abroad, rule).status == "fail"
        assert verdict(at_home, rule).status == "not-applicable"


def test_human_genetic_resources_need_approval_once_a_foreign_party_takes_part() -> None:
    hgr = {"dataset": {"country": "CN"}, "data": {"sensitive": True},
           "sector": {"human-genetic": True}}
    rule = "P27.cn-human-genetic-resources"
    assert verdict(report_for({"run": {"server-country": "CN"}, "manifest": hgr}), rule).status \
        == "not-applicable"
    foreign_peer = {"run": {"server-country": "CN"}, "manifest": hgr, "peer": {}}  # a DE node
    assert verdict(report_for(foreign_peer), rule).status == "fail"
    undeclared = {"run": {"server-country": "CN"}, "manifest": {"dataset": {"country": "CN"}},
                  "peer": {}, "unset": ["sector.human-genetic"]}
    assert verdict(report_for(undeclared), rule).status == "fail"


def test_ehds_rule_waits_for_chapter_iv() -> None:
    health = {"data": {"sensitive": True}, "sector": {"health": True}}
    rule = "P29.ehds-secondary-use"
    assert verdict(report_for({"manifest": health}), rule).status == "not-applicable"
    assert verdict(report_for({"manifest": health, "today": date(2029, 3, 26)}), rule).status \
        == "warn"


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        ({"ai-act-role": "provider"}, "not-applicable"),  # the FRIA is the deployer's
        ({"high-risk-category": "employment", "deployer-public-service": False},
         "not-applicable"),
        ({"high-risk-category": "employment", "deployer-public-service": True}, "warn"),
        ({"high-risk-category": "critical-infrastructure", "deployer-public-service": True},
         "not-applicable"),
        ({"high-risk-category": "life-health-insurance", "deployer-public-service": False},
         "warn"),
    ],
)
def test_fria_scope(run: dict[str, Any], expected: str) -> None:
    case = {"run": {"high-risk": True, **run}}
    assert verdict(report_for(case), "P25.fundamental-rights-impact-assessment").status == (
        expected)


def test_empty_string_means_undeclared_for_any_type() -> None:
    from privacy.compliance.policy import RunFacts

    facts = RunFacts.from_config({"gpai-systemic-risk": "", "min-nodes": " ", "dp": ""})
    assert (facts.gpai_systemic_risk, facts.min_nodes, facts.dp) == (None, None, None)


def test_packs_assume_no_run_defaults() -> None:
    from privacy.compliance.policy import RunFacts

    assert all(v is None for k, v in RunFacts().facts().items()
               if k not in ("deployment", "server_in_eea"))
    run, manifest = build({})
    for key in ("dp", "tls", "audit-log", "aggregator-role"):
        partial = {k: v for k, v in run.items() if k != key}
        report = evaluate(partial, {"n1": manifest}, ALL_PACKS, today=TODAY)
        assert report.run_failed, f"an undeclared {key} must not pass"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"aggregator-role": "owner"}, "aggregator-role='owner' is invalid"),
        ({"high-risk-category": "credit"}, "high-risk-category='credit' is invalid"),
        ({"ai-act-role": "user"}, "ai-act-role='user' is invalid"),
        ({"base-model-licence": "apache"}, "base-model-licence='apache': not an SPDX id"),
        ({"gpai-training-flop": -1}, "must be a finite number"),
        ({"server-dpf-certified": "yes"}, "must be true or false"),
    ],
)
def test_bad_run_facts_are_one_line_errors(config: dict[str, Any], message: str) -> None:
    from privacy.compliance.policy import RunFacts

    with pytest.raises(PolicyError) as info:
        RunFacts.from_config(config)
    assert message in str(info.value) and "\n" not in str(info.value)
