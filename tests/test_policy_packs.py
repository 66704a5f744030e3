"""Pack loading: user packs from directories, overrides, and clear errors for bad packs."""

from __future__ import annotations

import copy
import shutil
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privacy.compliance.manifest import load_manifest
from privacy.compliance.policy import (
    BUILTIN_PACKS,
    PolicyError,
    evaluate,
    load_packs,
    load_run_config,
)
from privacy.compliance.policy.loader import ENV_VAR, parse_pack

DATA = Path(__file__).parent / "data" / "policy"
USER_PACKS = DATA / "user-packs"
TODAY = date(2026, 11, 24)
RULE = """
[[rule]]
id = "X1.check"
severity = "warn"
scope = "node"
check = "manifest.records > 0"
citation = "internal"
title.en = "t"
title.zh = "t"
explain.en = "e"
explain.zh = "e"
"""


@pytest.fixture(autouse=True)
def _no_env_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def write_pack(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(body, encoding="utf-8")
    return path


def pack_error(tmp_path: Path, body: str, name: str = "mine") -> str:
    write_pack(tmp_path, name, body)
    with pytest.raises(PolicyError) as info:
        load_packs([], [tmp_path])
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_builtin_packs_load_and_have_bilingual_text() -> None:
    packs = load_packs(list(BUILTIN_PACKS))
    assert [p.name for p in packs] == list(BUILTIN_PACKS)
    for pack in packs:
        for rule in pack.rules:
            assert rule.title["en"] and rule.title["zh"] and rule.explain["zh"], rule.id
            assert rule.citation and rule.pid


def test_verified_date_is_read_from_toml_dates_or_iso_text(tmp_path: Path) -> None:
    for value in ("2026-12-01", '"2026-12-01"'):
        body = "[pack]\nname = 'mine'\n" + RULE.replace('scope = "node"',
                                                       f'scope = "node"\nverified = {value}')
        write_pack(tmp_path, "mine", body)
        (pack,) = load_packs([], [tmp_path])
        assert pack.rules[0].verified == "2026-12-01"
    write_pack(tmp_path, "mine", "[pack]\nname = 'mine'\n" + RULE)
    assert load_packs([], [tmp_path])[0].rules[0].verified == ""  # optional in user packs


def test_user_pack_in_a_directory_is_picked_up_and_evaluated(tmp_path: Path) -> None:
    shutil.copy(USER_PACKS / "hospital.toml", tmp_path / "hospital.toml")
    packs = load_packs("baseline", [tmp_path])
    assert [p.name for p in packs] == ["baseline", "hospital"]
    manifest = load_manifest(DATA / "good-manifest.toml")
    small = manifest.__class__(**{**manifest.__dict__, "records": 100})
    run = load_run_config(DATA / "good-run.toml")
    report = evaluate(run, {"big": manifest, "small": small}, packs, today=TODAY)
    assert report.failing_nodes == {"small": ["H1.enough-records"]}


def test_env_var_directories_are_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, f"{tmp_path / 'missing'}:{USER_PACKS}")
    assert "hospital" in [p.name for p in load_packs([])]


def test_user_pack_can_replace_a_builtin_but_only_when_selected(tmp_path: Path) -> None:
    write_pack(tmp_path, "gdpr", '[pack]\nname = "gdpr"\nversion = "local"\n' + RULE)
    assert load_packs([], [tmp_path]) == []
    (pack,) = load_packs(["gdpr"], [tmp_path])
    assert pack.version == "local" and not pack.builtin


def test_param_override_changes_the_threshold() -> None:
    strict = load_packs("baseline", params={"baseline.max-epsilon": 0.5})
    assert strict[0].params["max_epsilon"] == 0.5
    run = {**load_run_config(DATA / "good-run.toml"), "dp-epsilon": 1.0}
    report = evaluate(run, {"n": load_manifest(DATA / "good-manifest.toml")}, strict,
                      today=TODAY)
    assert report.failing_nodes == {"n": ["P2.epsilon-cap"]}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"baseline.max-epsilonn": 1}, "unknown parameter 'max-epsilonn'"),
        ({"baseline.max-epsilon": "ten"}, "must have the type"),
        ({"gdpr.dpia-max-age-days": 1}, "selected pack"),
        ({"max-epsilon": 1}, "<pack>.<param>"),
    ],
)
def test_bad_param_overrides(params: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_packs("baseline", params=params)


def test_unknown_pack_suggests_the_right_name() -> None:
    with pytest.raises(PolicyError, match="did you mean gdpr"):
        load_packs("baseline,gdrp")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[pack]\nname = 'mine'\n[[rule]\n", "mine.toml: invalid TOML"),
        ("[[rule]]\nid='a'\n", "missing [pack] table"),
        ("[pack]\nname = 'other'\n" + RULE, "must equal the file name 'mine'"),
        ("[pack]\nname = 'mine'\n", "no rules"),
        ("[pack]\nname = 'mine'\ncolour = 1\n" + RULE, "unknown key(s) ['colour']"),
        ("[pack]\nname = 'mine'\n" + RULE.replace('"warn"', '"error"'),
         "rule X1.check: severity='error'; use one of fail, warn, info"),
        ("[pack]\nname = 'mine'\n" + RULE.replace('"node"', '"global"'),
         "rule X1.check: scope='global'"),
        ("[pack]\nname = 'mine'\n" + RULE.replace("manifest.records > 0", "manifest.recrods > 0"),
         "rule X1.check: condition 'manifest.recrods > 0': unknown name 'manifest.recrods'; "
         "did you mean manifest.records?"),
        ("[pack]\nname = 'mine'\n" + RULE.replace("manifest.records > 0",
                                                  "__import__('os').system('x')"),
         "rule X1.check: condition"),
        ("[pack]\nname = 'mine'\n" + RULE.replace('"node"', '"run"'),
         "run-scope rules cannot read manifest/node facts"),
        ("[pack]\nname = 'mine'\n" + RULE.replace('citation = "internal"', ""),
         "rule X1.check: citation is missing"),
        ("[pack]\nname = 'mine'\n" + RULE.replace('title.zh = "t"', ""),
         "rule X1.check title.zh is missing"),
        ("[pack]\nname = 'mine'\n" + RULE + RULE, "rule X1.check: duplicate rule id"),
        ("[pack]\nname = 'mine'\n" + RULE.replace('id = "X1.check"', 'id = "has space"'),
         "rule #1 needs id"),
        ("[pack]\nname = 'mine'\n" + RULE.replace('scope = "node"', 'scope = "node"\nwhen = 1'),
         "unknown key(s) ['when']"),
        ("[pack]\nname = 'mine'\n[params]\nx = {a = 1}\n" + RULE, "param x: parameter must be"),
        ("[pack]\nname = 'mine'\n" + RULE.replace('id = "X1.check"', 'id = "X1.check"\npid = 7'),
         "pid=7 must look like P10"),
        ("[pack]\nname = 'mine'\n" + RULE.replace('scope = "node"',
                                                  'scope = "node"\nverified = "soon"'),
         "rule X1.check: verified must be the date the citation was checked"),
        ("[pack]\nname = 'mine'\n" + RULE.replace('scope = "node"',
                                                  'scope = "node"\nverified = 2026-12-01T10:00:00'),
         "rule X1.check: verified must be the date"),
    ],
)
def test_malformed_pack_errors_name_file_rule_and_fix(
    tmp_path: Path, body: str, expected: str
) -> None:
    msg = pack_error(tmp_path, body)
    assert expected in msg
    assert msg.startswith("mine.toml")


def test_rule_id_clash_between_packs(tmp_path: Path) -> None:
    write_pack(tmp_path, "mine", "[pack]\nname = 'mine'\n" + RULE.replace("X1.check",
                                                                         "P1.dp-for-personal-data"))
    with pytest.raises(PolicyError, match="also defined in pack 'baseline'"):
        load_packs("baseline", [tmp_path])


def test_pack_level_applies_gates_node_rules(tmp_path: Path) -> None:
    write_pack(tmp_path, "mine", "[pack]\nname = 'mine'\napplies = \"manifest.in_cn\"\n" + RULE)
    (pack,) = load_packs([], [tmp_path])
    manifest = load_manifest(DATA / "good-manifest.toml")  # DE node
    report = evaluate({}, {"n": manifest}, [pack], today=TODAY)
    assert report.verdicts[0].status == "not-applicable"


_toml_values = st.recursive(
    st.one_of(st.booleans(), st.integers(-5, 5), st.text(max_size=12),
              st.sampled_from(["run.dp", "manifest.records > 1", "fail", "node", "run", "P1"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["en", "zh", "x"]), inner,
                                            max_size=3)),
    max_leaves=8,
)
_rule = st.dictionaries(
    st.sampled_from(["id", "pid", "title", "explain", "severity", "scope", "citation",
                     "applies", "check", "extra"]),
    _toml_values, max_size=9,
)


@settings(
    max_examples=300, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.fixed_dictionaries(
        {"pack": st.fixed_dictionaries({"name": st.just("fuzz")}),
         "rule": st.lists(_rule, max_size=3)},
        optional={"params": st.dictionaries(st.sampled_from(["a", "b-c"]), _toml_values)},
    )
)
def test_random_packs_load_or_fail_cleanly(data: dict[str, Any]) -> None:
    try:
        pack = parse_pack(data, Path("fuzz.toml"))
    except PolicyError as exc:
        assert "\n" not in str(exc)
    else:
        manifest = load_manifest(DATA / "good-manifest.toml")
        evaluate({}, {"n": manifest}, [pack], today=TODAY)


def test_shipped_pack_files_are_valid_toml_with_matching_names() -> None:
    for name in BUILTIN_PACKS:
        path = Path(__file__).parents[1] / "privacy/compliance/policy/packs" / f"{name}.toml"
        assert tomllib.loads(path.read_text("utf-8"))["pack"]["name"] == name


_VALID = tomllib.loads("[pack]\nname = 'fuzz'\n[params]\nlimit = 3\n" + RULE)
_conditions = st.sampled_from([
    "manifest.records > params.limit", "run.dp", "node.epsilon <= 1", "True", "1 / 0",
    "manifest.records + None", "len(manifest.licence) > 2", "manifest.nope", "", "x.y",
])


@settings(max_examples=300, deadline=None, database=None)
@given(
    field=st.sampled_from(sorted(_VALID["rule"][0]) + ["applies", "extra"]),
    value=st.one_of(_toml_values, _conditions),
    delete=st.booleans(),
    scope=st.sampled_from(["node", "run"]),
)
def test_mutated_valid_pack_loads_and_evaluates_or_fails_cleanly(
    field: str, value: Any, delete: bool, scope: str
) -> None:
    data = copy.deepcopy(_VALID)
    rule = data["rule"][0]
    rule["scope"] = scope
    if delete:
        rule.pop(field, None)
    else:
        rule[field] = value
    try:
        pack = parse_pack(data, Path("fuzz.toml"))
    except PolicyError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.toml")
        return
    manifest = load_manifest(DATA / "good-manifest.toml")
    report = evaluate({}, {"n": manifest}, [pack], today=TODAY)
    assert len(report.verdicts) == 1
    assert report.verdicts[0].status in {"pass", "fail", "warn", "info", "not-applicable"}


def test_docs_list_every_shipped_rule_fact_and_manifest_key() -> None:
    from dataclasses import fields as dc_fields

    from privacy.compliance.manifest import _SCHEMA
    from privacy.compliance.policy import RunFacts

    root = Path(__file__).parents[1] / "docs"
    packs_doc = (root / "policy-packs.md").read_text("utf-8")
    for pack in load_packs(list(BUILTIN_PACKS)):
        for rule in pack.rules:
            row = next((line for line in packs_doc.splitlines()
                        if line.startswith(f"| {rule.pid} | `{rule.id}` |")), None)
            assert row is not None, f"{rule.id} missing from docs/policy-packs.md"
            assert f"| {pack.name} | {rule.scope} | {rule.severity} |" in row, rule.id
            assert row.rstrip().endswith(f"| {rule.verified or '-'} |"), rule.id
    facts_table = packs_doc.split("### `run.*`", 1)[1]
    for f in dc_fields(RunFacts):
        if f.name != "node_epsilon":
            assert f"`{f.name.replace('_', '-')}`" in facts_table, f.name
    manifest_doc = (root / "manifest.md").read_text("utf-8")
    for section, key in _SCHEMA:
        assert f"`[{section}]`" in manifest_doc and f"| `{key}` |" in manifest_doc, key
