"""Per-node data manifests: what a node's dataset is, where it came from and on what legal basis.

A manifest is a small TOML file the node operator fills in (see :func:`manifest_template` and
docs/manifest.md). Values are validated strictly (SPDX licence ids, ISO country codes, the legal
bases each law actually has) so that a typo is an error naming the field and the fix rather than
a silent policy pass. Fields may be *omitted* (they become ``None``): completeness is a policy
question (rule P8) answered in the report, not a parse error, so an operator sees every gap at
once. Only ``[dataset].name`` is required.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "ACQUISITION_METHODS",
    "ART9_CONDITIONS",
    "EEA_COUNTRIES",
    "GDPR_BASES",
    "IMPORT_MECHANISMS",
    "PIPL_BASES",
    "ROLES",
    "TRANSFER_MECHANISMS",
    "Manifest",
    "ManifestError",
    "load_manifest",
    "loads_manifest",
    "manifest_sha256",
    "manifest_template",
    "parse_manifest",
    "spdx_licence",
]

SCHEMA_VERSION = 1
MAX_TEXT = 2000

GDPR_BASES = (  # GDPR Art. 6(1)(a)-(f)
    "consent", "contract", "legal-obligation", "vital-interests", "public-task",
    "legitimate-interests",
)
PIPL_BASES = (  # PIPL Art. 13(1)-(7); PIPL has no legitimate-interests basis
    "consent", "contract-or-hr", "legal-duty", "public-health-emergency",
    "news-public-interest", "publicly-disclosed-reasonable-scope", "other-law",
)
#: Accepted in ``[legal-basis].pipl`` only so the policy can reject it with a citation (P10).
PIPL_DECLARABLE = (*PIPL_BASES, "legitimate-interests")
ART9_CONDITIONS = (  # GDPR Art. 9(2)(a)-(j)
    "explicit-consent", "employment-social-security", "vital-interests", "non-profit-body",
    "made-public", "legal-claims", "substantial-public-interest", "health-care",
    "public-health", "research-archiving-statistics",
)
ACQUISITION_METHODS = (
    "own-collection", "licensed", "purchased", "open-download", "web-scrape",
    "partner-shared", "synthetic", "unknown",
)
ROLES = ("controller", "joint-controller", "processor")
INTENDED_USES = ("research", "commercial", "any")
TRANSFER_MECHANISMS = (
    "none", "adequacy", "scc", "bcr", "derogation",
    "cac-security-assessment", "cn-standard-contract", "cn-certification", "cac-exemption",
)
#: How a node outside the EEA receives a global model trained on EEA personal data (GDPR
#: Chapter V). ``derogation`` is accepted only so that policy P15 can reject it with a citation.
IMPORT_MECHANISMS = ("none", "adequacy", "scc", "bcr", "derogation")
JURISDICTIONS = ("gdpr", "pipl")
_EEA = "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE IS LI NO"
EEA_COUNTRIES = frozenset(_EEA.split())

_CC_VERSIONS = ("1.0", "2.0", "2.5", "3.0", "4.0")
_CC_KINDS = ("BY", "BY-SA", "BY-ND", "BY-NC", "BY-NC-SA", "BY-NC-ND")
_OTHER_SPDX = """CC0-1.0 PDDL-1.0 ODbL-1.0 ODC-By-1.0 CDLA-Permissive-1.0 CDLA-Permissive-2.0
    CDLA-Sharing-1.0 Apache-2.0 Apache-1.1 MIT MIT-0 BSD-2-Clause BSD-3-Clause BSD-4-Clause
    ISC Zlib Unlicense WTFPL 0BSD BSL-1.0 PostgreSQL Python-2.0 PSF-2.0 MPL-1.1 MPL-2.0
    EPL-1.0 EPL-2.0 GPL-2.0-only GPL-2.0-or-later GPL-3.0-only GPL-3.0-or-later LGPL-2.1-only
    LGPL-2.1-or-later LGPL-3.0-only LGPL-3.0-or-later AGPL-3.0-only AGPL-3.0-or-later
    GFDL-1.3-only GFDL-1.3-or-later EUPL-1.2 MulanPSL-2.0 OGL-UK-3.0 DL-DE-BY-2.0 DL-DE-ZERO-2.0
    etalab-2.0 NLOD-2.0 OpenRAIL OpenRAIL-M Llama2 Llama3 Llama3.1 Unicode-DFS-2016 OFL-1.1
    Artistic-2.0 CECILL-2.1 C-UDA-1.0 O-UDA-1.0 Community-Spec-1.0"""
#: Common SPDX ids for data, code and model licences (offline: no download at run time).
SPDX_IDS = frozenset([f"CC-{k}-{v}" for k in _CC_KINDS for v in _CC_VERSIONS] + _OTHER_SPDX.split())
_SPDX_BY_LOWER = {s.lower(): s for s in SPDX_IDS}
_SHAREALIKE = re.compile(
    r"^(CC-BY(-NC)?-SA-|GPL-|LGPL-|AGPL-|GFDL-|ODbL-|CDLA-Sharing-|EUPL-|MPL-)"
)
_USE_RESTRICTED = re.compile(r"^(CC-BY(-NC)?-ND-|OpenRAIL|Llama)")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message is one line naming the field and the fix."""


def _fail(where: str, value: Any, problem: str) -> ManifestError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ManifestError(f"manifest field {where}={shown}: {problem}")


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(where, value, "must be a string; quote it in the TOML")
    value = value.strip()
    if len(value) > MAX_TEXT or "\n" in value or "\x00" in value:
        raise _fail(where, value, f"must be one line of at most {MAX_TEXT} characters")
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, value, "must be true or false (TOML booleans, unquoted)")
    return value


def _count(where: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(where, value, "must be a whole number >= 0 (unquoted)")
    return value


def _rate(where: str, value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value <= 1:
        raise _fail(where, value, "must be a fraction between 0 and 1, e.g. 0.02 for 2%")
    return float(value)


def _day(where: str, value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _fail(where, value, "must be a date like 2026-03-31")


def _choice(options: tuple[str, ...], hint: str = "") -> Callable[[str, Any], str]:
    def check(where: str, value: Any) -> str:
        text = _text(where, value).lower()
        if text not in options:
            close = difflib.get_close_matches(text, options, n=1)
            maybe = f"did you mean {close[0]}? " if close else ""
            raise _fail(where, value, f"{hint}{maybe}use one of {', '.join(options)}")
        return text

    return check


def spdx_licence(text: str) -> str:
    """Canonical spelling of a licence id; ValueError (the fix, one line) when it is none."""
    text = text.strip()
    lowered = text.lower()
    if lowered in ("proprietary", "unknown"):
        return lowered
    if lowered.startswith("licenseref-") and re.fullmatch(r"[A-Za-z0-9.\-]+", text):
        return "LicenseRef-" + text[len("licenseref-"):]
    if lowered in _SPDX_BY_LOWER:
        return _SPDX_BY_LOWER[lowered]
    close = difflib.get_close_matches(text, sorted(SPDX_IDS), n=1)
    example = close[0] if close else "CC-BY-4.0"
    raise ValueError(
        f"not an SPDX id; use e.g. {example}, proprietary, unknown or LicenseRef-<name>"
    )


def _licence(where: str, value: Any) -> str:
    text = _text(where, value)
    try:
        return spdx_licence(text)
    except ValueError as exc:
        raise _fail(where, value, str(exc)) from None


def _country(where: str, value: Any) -> str:
    text = _text(where, value).upper()
    if not re.fullmatch(r"[A-Z]{2}", text) or text == "EU":
        raise _fail(where, value, "must be an ISO 3166-1 alpha-2 country code, e.g. DE or CN")
    return text


def _jurisdictions(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(where, value, f"must be a list such as [\"gdpr\"]; known: {JURISDICTIONS}")
    check = _choice(JURISDICTIONS)
    return tuple(sorted({check(where, v) for v in value}))


# (section, key) -> (attribute, validator). The attribute names are what policy rules see as
# ``manifest.<attribute>``; the TOML keys are kebab-case like the rest of fedguard's config.
_SCHEMA: dict[tuple[str, str], tuple[str, Callable[[str, Any], Any]]] = {
    ("dataset", "name"): ("name", _text),
    ("dataset", "source"): ("source", _text),
    ("dataset", "licence"): ("licence", _licence),
    ("dataset", "licence-reviewed"): ("licence_reviewed", _bool),
    ("dataset", "acquisition"): ("acquisition", _choice(ACQUISITION_METHODS)),
    ("dataset", "tdm-opt-out-checked"): ("tdm_opt_out_checked", _bool),
    ("dataset", "records"): ("records", _count),
    ("dataset", "country"): ("country", _country),
    ("dataset", "region"): ("region", _text),
    ("dataset", "intended-use"): ("intended_use", _choice(INTENDED_USES)),
    ("dataset", "jurisdictions"): ("declared_jurisdictions", _jurisdictions),
    ("data", "personal"): ("personal", _bool),
    ("data", "sensitive"): ("sensitive", _bool),
    ("data", "minors"): ("minors", _bool),
    ("data", "under-14"): ("under_14", _bool),
    ("data", "below-consent-age"): ("below_consent_age", _bool),
    ("sector", "health"): ("health", _bool),
    ("sector", "financial"): ("financial", _bool),
    ("sector", "human-genetic"): ("human_genetic", _bool),
    ("sector", "hgr-approval"): ("hgr_approval", _text),
    ("sector", "export-permission"): ("export_permission", _text),
    ("sector", "ehds-permit"): ("ehds_permit", _text),
    ("legal-basis", "gdpr"): ("gdpr_basis", _choice(GDPR_BASES, "not a GDPR Art. 6 basis; ")),
    ("legal-basis", "pipl"): ("pipl_basis", _choice(PIPL_DECLARABLE, "not a PIPL Art. 13 basis; ")),
    ("legal-basis", "art9-condition"): (
        "art9_condition", _choice(ART9_CONDITIONS, "not a GDPR Art. 9(2) condition; ")
    ),
    ("legal-basis", "separate-consent"): ("separate_consent", _bool),
    ("legal-basis", "guardian-consent"): ("guardian_consent", _bool),
    ("legal-basis", "lia-ref"): ("lia_ref", _text),
    ("legal-basis", "art9-law"): ("art9_law", _text),
    ("legal-basis", "provision-notice"): ("provision_notice", _bool),
    ("legal-basis", "provision-consent"): ("provision_consent", _bool),
    ("impact-assessment", "reference"): ("assessment_ref", _text),
    ("impact-assessment", "date"): ("assessment_date", _day),
    ("impact-assessment", "kept-years"): ("assessment_kept_years", _count),
    ("retention", "days"): ("retention_days", _count),
    ("retention", "deletion-plan"): ("deletion_plan", _text),
    ("roles", "role"): ("role", _choice(ROLES)),
    ("roles", "contract-ref"): ("contract_ref", _text),
    ("transfer", "mechanism"): ("transfer_mechanism", _choice(TRANSFER_MECHANISMS)),
    ("transfer", "ciio"): ("ciio", _bool),
    ("transfer", "important-data"): ("important_data", _bool),
    ("transfer", "people-per-year"): ("transfer_people_per_year", _count),
    ("transfer", "sensitive-people-per-year"): ("transfer_sensitive_people_per_year", _count),
    ("transfer", "tia-ref"): ("tia_ref", _text),
    ("transfer", "dpf-certified"): ("dpf_certified", _bool),
    ("transfer", "import-mechanism"): (
        "import_mechanism", _choice(IMPORT_MECHANISMS, "not a GDPR Chapter V mechanism; ")
    ),
    ("transfer", "foreign-request-policy"): ("foreign_request_policy", _text),
    ("quality", "sampled-harmful-rate"): ("sampled_harmful_rate", _rate),
    ("quality", "sample-size"): ("sample_size", _count),
    ("annotation", "annotated"): ("annotated", _bool),
    ("annotation", "rules-ref"): ("annotation_rules", _text),
    ("annotation", "quality-checked"): ("annotation_quality_checked", _bool),
    ("annotation", "annotators-trained"): ("annotators_trained", _bool),
}
_SECTIONS = sorted({s for s, _ in _SCHEMA})
_KEY_OF = {attr: (sec, key) for (sec, key), (attr, _) in _SCHEMA.items()}


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``None`` means the operator did not declare the field."""

    name: str
    source: str | None = None
    licence: str | None = None
    licence_reviewed: bool | None = None
    acquisition: str | None = None
    tdm_opt_out_checked: bool | None = None
    records: int | None = None
    country: str | None = None
    region: str | None = None
    intended_use: str | None = None
    declared_jurisdictions: tuple[str, ...] = ()
    personal: bool | None = None
    sensitive: bool | None = None
    minors: bool | None = None
    under_14: bool | None = None
    below_consent_age: bool | None = None
    health: bool | None = None
    financial: bool | None = None
    human_genetic: bool | None = None
    hgr_approval: str | None = None
    export_permission: str | None = None
    ehds_permit: str | None = None
    gdpr_basis: str | None = None
    pipl_basis: str | None = None
    art9_condition: str | None = None
    separate_consent: bool | None = None
    guardian_consent: bool | None = None
    lia_ref: str | None = None
    art9_law: str | None = None
    provision_notice: bool | None = None
    provision_consent: bool | None = None
    assessment_ref: str | None = None
    assessment_date: date | None = None
    assessment_kept_years: int | None = None
    retention_days: int | None = None
    deletion_plan: str | None = None
    role: str | None = None
    contract_ref: str | None = None
    transfer_mechanism: str | None = None
    ciio: bool | None = None
    important_data: bool | None = None
    transfer_people_per_year: int | None = None
    transfer_sensitive_people_per_year: int | None = None
    tia_ref: str | None = None
    dpf_certified: bool | None = None
    import_mechanism: str | None = None
    foreign_request_policy: str | None = None
    sampled_harmful_rate: float | None = None
    sample_size: int | None = None
    annotated: bool | None = None
    annotation_rules: str | None = None
    annotation_quality_checked: bool | None = None
    annotators_trained: bool | None = None

    # -- derived facts the policy packs use ------------------------------------------------
    @property
    def in_eea(self) -> bool:
        return self.country in EEA_COUNTRIES

    @property
    def in_cn(self) -> bool:
        """Mainland China (PIPL territory); HK and MO have their own laws."""
        return self.country == "CN"

    @property
    def jurisdictions(self) -> tuple[str, ...]:
        """Laws that apply: from the country, plus any declared (e.g. EU data held in CN)."""
        found = set(self.declared_jurisdictions)
        if self.in_eea:
            found.add("gdpr")
        if self.in_cn:
            found.add("pipl")
        return tuple(sorted(found))

    @property
    def pipl_child(self) -> bool | None:
        """Holds PI of children under 14 (PIPL Art. 28, 31); None when not ruled out."""
        return _band(self.minors, self.under_14)

    @property
    def gdpr_child(self) -> bool | None:
        """Holds data of children below the GDPR Art. 8 digital age of consent (13-16)."""
        return _band(self.minors, self.below_consent_age)

    @property
    def licence_noncommercial(self) -> bool:
        return bool(self.licence and self.licence.startswith("CC-BY-NC"))

    @property
    def licence_sharealike(self) -> bool:
        return bool(self.licence and _SHAREALIKE.match(self.licence))

    @property
    def licence_needs_review(self) -> bool:
        """Share-alike, no-derivatives/use-restricted, custom, proprietary or unknown terms."""
        lic = self.licence
        return (
            lic is None
            or lic in ("unknown", "proprietary")
            or lic.startswith("LicenseRef-")
            or self.licence_sharealike
            or bool(_USE_RESTRICTED.match(lic))
        )

    def facts(self) -> dict[str, Any]:
        """Every field and derived fact, by attribute name (the policy context)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in (
            "in_eea", "in_cn", "jurisdictions", "pipl_child", "gdpr_child",
            "licence_noncommercial", "licence_sharealike", "licence_needs_review",
        ):
            out[name] = getattr(self, name)
        out["jurisdictions"] = list(out["jurisdictions"])
        out["declared_jurisdictions"] = list(out["declared_jurisdictions"])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Nested TOML-shaped dict (kebab keys, ISO dates); ``parse_manifest`` round-trips it."""
        out: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for attr, (sec, key) in _KEY_OF.items():
            value = getattr(self, attr)
            if value is None or (attr == "declared_jurisdictions" and not value):
                continue
            if isinstance(value, date):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out.setdefault(sec, {})[key] = value
        return out


def _band(minors: bool | None, band: bool | None) -> bool | None:
    """An age band is ruled out by minors = false or by the band's own flag."""
    if minors is False or band is False:
        return False
    return True if band else None


def _check_consistent(values: Mapping[str, Any]) -> None:
    """Cross-field contradictions a policy would otherwise read as two different truths."""
    for band, key in (("under_14", "under-14"), ("below_consent_age", "below-consent-age")):
        if values.get(band) is True and values.get("minors") is False:
            raise ManifestError(
                f"manifest fields data.{key}=true and data.minors=false contradict each other; "
                f"a child in that band is a minor: set minors = true or {key} = false"
            )
    if values.get("personal") is True and values.get("sensitive") is False:
        for flag, key in (("health", "health"), ("human_genetic", "human-genetic")):
            if values.get(flag) is True:
                raise ManifestError(
                    f"manifest field data.sensitive=false contradicts sector.{key}=true for "
                    "personal data (GDPR Art. 9(1) special category, PIPL Art. 28 sensitive PI); "
                    "set sensitive = true"
                )


def parse_manifest(data: Mapping[str, Any]) -> Manifest:
    """Validate a TOML-shaped dict into a :class:`Manifest`; ManifestError on any bad field."""
    if not isinstance(data, Mapping):
        raise ManifestError(f"manifest must be a TOML table, not {type(data).__name__}")
    schema = data.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise _fail("schema", schema, f"unsupported version; this fedguard reads {SCHEMA_VERSION}")
    values: dict[str, Any] = {}
    for section, body in data.items():
        if section == "schema":
            continue
        if section not in _SECTIONS:
            close = difflib.get_close_matches(str(section), _SECTIONS, n=1)
            hint = f"did you mean [{close[0]}]? " if close else ""
            raise ManifestError(
                f"manifest section [{section}] is unknown; {hint}sections: {', '.join(_SECTIONS)}"
            )
        if not isinstance(body, Mapping):
            raise ManifestError(f"manifest section [{section}] must be a table of key = value")
        keys = [k for s, k in _SCHEMA if s == section]
        for key, value in body.items():
            if (section, key) not in _SCHEMA:
                close = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ManifestError(
                    f"manifest field {section}.{key} is unknown; {hint}"
                    f"[{section}] takes {', '.join(keys)}"
                )
            attr, check = _SCHEMA[(section, key)]
            values[attr] = check(f"{section}.{key}", value)
    if not values.get("name"):
        raise ManifestError(
            "manifest field dataset.name is missing or empty; add name = \"<dataset name>\" "
            "under [dataset]"
        )
    _check_consistent(values)
    return Manifest(**values)


def loads_manifest(text: str | bytes, source: str = "manifest") -> Manifest:
    """Parse manifest TOML text; errors are prefixed with `source` (e.g. the file name)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ManifestError(f"{source}: not UTF-8 text; save the manifest as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{source}: invalid TOML ({exc}); fix the syntax") from None
    try:
        return parse_manifest(data)
    except ManifestError as exc:
        raise ManifestError(f"{source}: {exc}") from None


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ManifestError(
            f"manifest {p} not found; create one with `fedguard-node manifest init`"
        ) from None
    except OSError as exc:
        raise ManifestError(f"manifest {p} cannot be read ({exc.strerror}); check it") from None
    return loads_manifest(raw, str(p))


def manifest_sha256(data: bytes) -> str:
    """SHA-256 of the manifest file's bytes, as recorded in provenance."""
    return hashlib.sha256(data).hexdigest()


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def manifest_template(
    name: str = "my-dataset", records: int | None = None, country: str | None = None
) -> str:
    """A commented manifest for a node operator to complete.

    Everything the operator must decide is left commented out, so an unfilled template parses
    but fails policy rule P8 (manifest incomplete) instead of silently claiming facts.
    """
    rec = f"records = {records}" if records is not None else "# records = 10000"
    ctry = f"country = {_toml_str(country.upper())}" if country else '# country = "DE"'
    return f"""\
# fedguard data manifest (schema {SCHEMA_VERSION}). See docs/manifest.md for every field.
# Uncomment and fill in each line; anything left out is reported as missing by policy P8.
schema = {SCHEMA_VERSION}

[dataset]
name = {_toml_str(name)}
# source = "https://example.org/dataset or 'collected at clinic A 2024-2025'"
# SPDX id (CC-BY-4.0, CC-BY-NC-4.0, ODbL-1.0, ...), proprietary, unknown or LicenseRef-<name>
# licence = "CC-BY-4.0"
# licence-reviewed = false        # a person checked the terms allow this use
# one of: {", ".join(ACQUISITION_METHODS)}
# acquisition = "own-collection"
# tdm-opt-out-checked = true      # machine-readable TDM reservations (DSM Art. 4(3)) honoured
{rec}
{ctry}                             # ISO 3166-1 alpha-2 where the data is held
# region = "Bavaria"
# intended-use = "research"       # research | commercial | any (what the data may be used for)
# jurisdictions = ["gdpr"]        # extra laws beyond the country's (gdpr, pipl)

[data]
# personal = true                 # relates to identifiable people (GDPR Art. 4(1), PIPL Art. 4)
# sensitive = false               # GDPR Art. 9 special categories / PIPL Art. 28 sensitive PI
# minors = false                  # any data subject under 18
# under-14 = false                # children under 14 (PIPL Art. 28, 31)
# below-consent-age = false       # below the GDPR Art. 8 age of consent (16; 13-15 by law)

[sector]
# health = false                  # health or medical data (GDPR Art. 9(1), PIPL Art. 28)
# financial = false               # personal financial information (accounts, transactions, credit)
# human-genetic = false           # China human genetic resources information (gene, genome data)
# hgr-approval = "HGR-2026-123"   # approval / filing for foreign cooperation or provision abroad
# export-permission = "..."       # law or regulator decision allowing export (localisation)
# ehds-permit = "HDAB-DE-2029-7"  # EHDS data permit (Art. 68) or the other legal route relied on

[legal-basis]
# GDPR Art. 6: {", ".join(GDPR_BASES)}
# gdpr = "consent"
# PIPL Art. 13: {", ".join(PIPL_BASES)}
# pipl = "consent"
# GDPR Art. 9(2), for sensitive data: {", ".join(ART9_CONDITIONS)}
# art9-condition = "explicit-consent"
# separate-consent = false        # PIPL 单独同意 (sensitive data, export)
# guardian-consent = false        # parental / guardian consent for minors
# lia-ref = "LIA-2026-02"         # recorded legitimate-interests assessment (GDPR Art. 6(1)(f))
# art9-law = "BDSG s. 27"         # Union or member-state law for Art. 9(2)(b), (g)-(j)
# provision-notice = false        # PIPL Art. 23: told the recipient's name, contact, purpose, ...
# provision-consent = false       # PIPL Art. 23: separate consent to provide PI to the aggregator

[impact-assessment]
# reference = "DPIA-2026-001"     # DPIA (GDPR Art. 35) / PIPIA (PIPL Art. 55) reference
# date = 2026-01-15
# kept-years = 3                  # how long the assessment report is kept

[retention]
# days = 365
# deletion-plan = "delete raw data and retrain or unlearn on erasure requests"

[roles]
# role = "joint-controller"       # controller | joint-controller | processor
# contract-ref = "JCA-2026-04"    # with the aggregator: Art. 26 / Art. 28 / PIPL Art. 20-21

[transfer]
# one of: {", ".join(TRANSFER_MECHANISMS)}
# mechanism = "none"
# ciio = false                    # critical information infrastructure operator (China)
# important-data = false          # DSL Art. 21 important data
# people-per-year = 0             # individuals whose data is exported per year
# sensitive-people-per-year = 0
# tia-ref = "TIA-2026-03"         # transfer impact assessment for SCCs / BCRs (Schrems II)
# dpf-certified = false           # certified under the EU-US Data Privacy Framework
# one of: {", ".join(IMPORT_MECHANISMS)} (node outside the EEA receiving the global model)
# import-mechanism = "none"
# foreign-request-policy = "..."  # foreign court/police requests go to PRC authorities

[quality]
# sampled-harmful-rate = 0.0      # share of illegal/harmful items in a corpus sample
# sample-size = 4000

[annotation]
# annotated = false               # people labelled this data for the training
# rules-ref = "ANN-RULES-3"       # written annotation rules (GenAI Measures Art. 8)
# quality-checked = false         # annotation accuracy checked on a sample
# annotators-trained = false
"""
