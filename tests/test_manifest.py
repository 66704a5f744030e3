"""Data manifests: strict values, helpful one-line errors, template and round trip."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.compliance.manifest import (
    Manifest,
    ManifestError,
    load_manifest,
    loads_manifest,
    manifest_sha256,
    manifest_template,
    parse_manifest,
)

GOOD = Path(__file__).parent / "data" / "policy" / "good-manifest.toml"


def with_field(section: str, key: str, value: Any) -> dict[str, Any]:
    data = tomllib.loads(GOOD.read_text("utf-8"))
    data.setdefault(section, {})[key] = value
    return data


def error_of(data: Any) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_good_manifest_loads_with_typed_values() -> None:
    m = load_manifest(GOOD)
    assert m.name == "clinic-a-ecg"
    assert m.records == 50000 and m.personal is True and m.sensitive is False
    assert m.assessment_date == date(2026, 6, 1)
    assert m.jurisdictions == ("gdpr",) and m.in_eea and not m.in_cn


def test_to_dict_round_trips() -> None:
    m = load_manifest(GOOD)
    assert parse_manifest(m.to_dict()) == m
    assert m.to_dict()["impact-assessment"]["date"] == "2026-06-01"


def test_bad_licence_names_field_and_fix() -> None:
    msg = error_of(with_field("dataset", "licence", "CC-BY-XX"))
    assert "dataset.licence='CC-BY-XX'" in msg and "not an SPDX id" in msg
    assert "proprietary" in msg and "unknown" in msg


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("cc-by-4.0", "CC-BY-4.0"), ("MIT", "MIT"), ("Proprietary", "proprietary"),
     ("LicenseRef-hospital-dua", "LicenseRef-hospital-dua"), ("odbl-1.0", "ODbL-1.0")],
)
def test_licence_is_normalised(given: str, canonical: str) -> None:
    assert parse_manifest(with_field("dataset", "licence", given)).licence == canonical


@pytest.mark.parametrize(
    ("licence", "nc", "sa", "review"),
    [("CC-BY-4.0", False, False, False), ("CC-BY-NC-4.0", True, False, False),
     ("CC-BY-NC-SA-4.0", True, True, True), ("CC-BY-SA-3.0", False, True, True),
     ("CC-BY-ND-4.0", False, False, True), ("unknown", False, False, True),
     ("LicenseRef-x", False, False, True), ("GPL-3.0-only", False, True, True)],
)
def test_licence_families(licence: str, nc: bool, sa: bool, review: bool) -> None:
    m = parse_manifest(with_field("dataset", "licence", licence))
    assert (m.licence_noncommercial, m.licence_sharealike, m.licence_needs_review) == (
        nc, sa, review
    )


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("dataset", "country", "Germany", "ISO 3166-1 alpha-2"),
        ("dataset", "country", "EU", "ISO 3166-1 alpha-2"),
        ("dataset", "records", -3, "whole number"),
        ("dataset", "records", "100", "whole number"),
        ("data", "personal", "yes", "true or false"),
        ("legal-basis", "gdpr", "legitimate-interest", "did you mean legitimate-interests"),
        ("legal-basis", "pipl", "legal-obligation", "not a PIPL Art. 13 basis"),
        ("legal-basis", "art9-condition", "consent", "Art. 9(2)"),
        ("impact-assessment", "date", "last year", "date like"),
        ("quality", "sampled-harmful-rate", 5, "between 0 and 1"),
        ("transfer", "mechanism", "sccs", "did you mean scc"),
        ("data", "persnal", True, "did you mean personal"),
        ("data", "under-14", "no", "true or false"),
        ("sector", "helth", True, "did you mean health"),
        ("transfer", "import-mechanism", "sccs", "not a GDPR Chapter V mechanism"),
        ("transfer", "dpf-certified", 1, "true or false"),
        ("annotation", "rules-ref", ["a"], "must be a string"),
    ],
)
def test_bad_values_name_the_field(section: str, key: str, value: Any, expected: str) -> None:
    msg = error_of(with_field(section, key, value))
    assert f"{section}.{key}" in msg and expected in msg


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"data": {"minors": False, "under-14": True}}, "data.under-14=true and data.minors=false"),
        ({"data": {"minors": False, "below-consent-age": True}},
         "data.below-consent-age=true and data.minors=false"),
        ({"data": {"personal": True, "sensitive": False}, "sector": {"health": True}},
         "contradicts sector.health=true"),
        ({"data": {"personal": True, "sensitive": False}, "sector": {"human-genetic": True}},
         "contradicts sector.human-genetic=true"),
    ],
)
def test_contradicting_flags_are_refused(fields: dict[str, Any], expected: str) -> None:
    data = tomllib.loads(GOOD.read_text("utf-8"))
    for section, body in fields.items():
        data.setdefault(section, {}).update(body)
    msg = error_of(data)
    assert expected in msg and "set " in msg


@pytest.mark.parametrize(
    ("data", "pipl_child", "gdpr_child"),
    [
        ({"minors": False}, False, False),
        ({"minors": True}, None, None),  # a minor, band not declared: not ruled out
        ({"minors": True, "under-14": False, "below-consent-age": True}, False, True),
        ({"under-14": True}, True, None),
        ({}, None, None),
    ],
)
def test_age_bands_are_derived_separately(
    data: dict[str, Any], pipl_child: bool | None, gdpr_child: bool | None
) -> None:
    raw = tomllib.loads(GOOD.read_text("utf-8"))
    raw["data"] = {"personal": True, "sensitive": False, **data}
    m = parse_manifest(raw)
    assert (m.pipl_child, m.gdpr_child) == (pipl_child, gdpr_child)
    assert m.facts()["pipl_child"] is pipl_child


def test_unknown_section_and_missing_name() -> None:
    assert "did you mean [legal-basis]" in error_of({"dataset": {"name": "x"}, "legal": {}})
    assert "dataset.name is missing" in error_of({"data": {"personal": True}})
    assert "must be a table" in error_of({"dataset": "x"})
    assert "unsupported version" in error_of({"schema": 2, "dataset": {"name": "x"}})


def test_file_errors_carry_the_path(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found; create one"):
        load_manifest(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[dataset\nname = 'x'\n")
    with pytest.raises(ManifestError, match=r"bad\.toml: invalid TOML"):
        load_manifest(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(bad)


def test_template_parses_leaves_decisions_undeclared_and_mentions_every_field() -> None:
    text = manifest_template("ward-7", records=1200, country="de")
    m = loads_manifest(text)
    assert (m.name, m.records, m.country) == ("ward-7", 1200, "DE")
    assert m.personal is None and m.licence is None  # the operator must decide these
    uncommented = "\n".join(line.lstrip("# ") for line in text.splitlines())
    for key in Manifest.__dataclass_fields__:
        if key == "declared_jurisdictions":
            key = "jurisdictions"
        toml_key = {
            "gdpr_basis": "gdpr", "pipl_basis": "pipl", "assessment_ref": "reference",
            "assessment_date": "date", "assessment_kept_years": "kept-years",
            "retention_days": "days", "role": "role", "transfer_mechanism": "mechanism",
            "annotation_rules": "rules-ref", "annotation_quality_checked": "quality-checked",
            "transfer_people_per_year": "people-per-year",
            "transfer_sensitive_people_per_year": "sensitive-people-per-year",
        }.get(key, key.replace("_", "-"))
        assert f"{toml_key} =" in uncommented, toml_key
    # Every commented example line is itself valid once uncommented.
    loads_manifest(
        "\n".join(
            line[2:] if line.startswith("# ") and " = " in line else line
            for line in text.splitlines()
        )
    )


def test_template_escapes_quotes() -> None:
    assert loads_manifest(manifest_template('odd "name"')).name == 'odd "name"'


def test_manifest_sha256_is_over_bytes() -> None:
    raw = GOOD.read_bytes()
    assert manifest_sha256(raw) == manifest_sha256(bytes(raw))
    assert manifest_sha256(raw) != manifest_sha256(raw + b"\n")
    assert len(manifest_sha256(raw)) == 64


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**7), st.floats(allow_nan=True),
    st.text(max_size=30), st.dates(), st.lists(st.text(max_size=5), max_size=3),
)
_keys = st.sampled_from(
    ["name", "licence", "records", "country", "personal", "gdpr", "pipl", "date", "days",
     "mechanism", "jurisdictions", "sampled-harmful-rate", "bogus"]
)
_sections = st.sampled_from(
    ["dataset", "data", "legal-basis", "impact-assessment", "retention", "transfer",
     "quality", "roles", "schema", "nope"]
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(_sections, st.one_of(_scalars, st.dictionaries(_keys, _scalars))))
def test_random_manifests_parse_or_fail_cleanly(data: dict[str, Any]) -> None:
    try:
        m = parse_manifest(data)
    except ManifestError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert parse_manifest(m.to_dict()) == m


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=200))
def test_random_toml_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        loads_manifest(text)
    except ManifestError as exc:
        assert "\n" not in str(exc)
