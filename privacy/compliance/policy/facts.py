"""The facts a rule can read: ``run.*`` (run configuration), ``manifest.*`` and ``node.*``.

Run facts come from the same kebab-case keys as ``[tool.flwr.app.config]`` (``dp-epsilon``,
``secagg`` ...), so a run config file, the Flower run config and the server all feed the policy
the same way. Keys this module does not know (training settings) are ignored; known keys are
type-checked so a typo in a value is a clear :class:`PolicyError`, not a silent pass.

Every run fact defaults to ``None`` (not declared): the packs assume no value of their own, so a
rule reads exactly what the run config says and an undeclared fact never passes a check. The
app's run-config schema supplies the app's defaults before facts are built.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from privacy.compliance.manifest import EEA_COUNTRIES, ROLES, Manifest, spdx_licence
from privacy.compliance.policy.errors import PolicyError

__all__ = [
    "AI_ACT_ROLES",
    "HIGH_RISK_CATEGORIES",
    "MANIFEST_FACTS",
    "NODE_FACTS",
    "RUN_FACTS",
    "Federation",
    "RunFacts",
    "load_run_config",
    "node_facts",
]

PURPOSES = ("research", "commercial")
MODES = ("simulation", "deployment")
AI_ACT_ROLES = ("provider", "deployer", "provider-and-deployer")
#: EU AI Act high-risk routes: Art. 6(1) products (Annex I) or an Annex III area.
HIGH_RISK_CATEGORIES = (
    "annex-i-product", "biometrics", "critical-infrastructure", "education", "employment",
    "essential-public-services", "creditworthiness", "life-health-insurance",
    "emergency-triage", "law-enforcement", "migration-border", "justice-democracy",
)
_CHOICES = {
    "purpose": PURPOSES, "mode": MODES, "aggregator_role": ROLES, "ai_act_role": AI_ACT_ROLES,
    "high_risk_category": HIGH_RISK_CATEGORIES,
}
_LOWERED = ("aggregation", "dp_accountant", *_CHOICES)
_ALIASES = {"dp-max-grad-norm": "dp_clip_norm", "aggregator": "aggregation"}


@dataclass(frozen=True)
class RunFacts:
    """Everything about a run that policy rules may look at (see docs/policy-packs.md)."""

    purpose: str | None = None
    mode: str | None = None
    tls: bool | None = None
    node_auth: bool | None = None
    secagg: bool | None = None
    min_nodes: int | None = None
    num_server_rounds: int | None = None
    dp: bool | None = None
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_accountant: str | None = None
    dp_clip_norm: float | None = None
    dp_noise_multiplier: float | None = None
    dp_sample_rate: float | None = None
    dp_privacy_unit: str | None = None
    batch_size: int | None = None
    aggregation: str | None = None
    update_norm_bound: float | None = None
    #: Who runs the aggregation server for the nodes: their processor, a joint controller, or
    #: an independent controller receiving the updates.
    aggregator_role: str | None = None
    server_country: str | None = None
    server_dpf_certified: bool | None = None
    audit_log: bool | None = None
    automated_decisions: bool | None = None
    human_review: bool | None = None
    # EU AI Act: high-risk systems (Chapter III) and general-purpose AI models (Chapter V).
    high_risk: bool | None = None
    high_risk_category: str | None = None
    ai_act_role: str | None = None
    deployer_public_service: bool | None = None
    data_governance_doc: str | None = None
    risk_management_doc: str | None = None
    technical_doc: str | None = None
    human_oversight_doc: str | None = None
    doc_retention_years: int | None = None
    system_logging: bool | None = None
    log_retention_days: int | None = None
    deployer_procedures: str | None = None
    fria_ref: str | None = None
    gpai_provider_eu: bool | None = None
    copyright_policy: str | None = None
    training_summary: str | None = None
    gpai_technical_doc: str | None = None
    gpai_downstream_info: str | None = None
    gpai_open_source: bool | None = None
    gpai_systemic_risk: bool | None = None
    gpai_training_flop: float | None = None
    gpai_systemic_risk_measures: str | None = None
    # China: public generative-AI services and the model they start from.
    genai_public_cn: bool | None = None
    algorithm_filing: str | None = None
    content_labels: bool | None = None
    base_model: str | None = None
    base_model_source: str | None = None
    base_model_licence: str | None = None
    policy_packs: str | None = None
    #: Threshold overrides, ``"baseline.max-epsilon=5,gdpr.dpia-max-age-days=700"``.
    policy_params: str | None = None
    #: Epsilon actually spent per node (from the privacy ledger); falls back to ``dp_epsilon``.
    node_epsilon: Mapping[str, float] = field(default_factory=dict)

    @property
    def deployment(self) -> bool:
        """Anything not declared a simulation is treated as a real deployment."""
        return self.mode != "simulation"

    @property
    def server_in_eea(self) -> bool:
        return self.server_country in EEA_COUNTRIES

    def facts(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "node_epsilon"}
        out["deployment"] = self.deployment
        out["server_in_eea"] = self.server_in_eea
        return out

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], node_epsilon: Mapping[str, float] | None = None
    ) -> RunFacts:
        """Build from a kebab-case run config; unknown keys (training settings) are ignored."""
        if not isinstance(config, Mapping):
            raise PolicyError(f"run config must be a table of key = value, not {type(config)}")
        types = {f.name: str(f.type) for f in fields(cls) if f.name != "node_epsilon"}
        values: dict[str, Any] = {}
        for key, value in config.items():
            if not isinstance(key, str):
                continue
            name = _ALIASES.get(key, key.replace("-", "_"))
            if name not in types:
                continue
            values[name] = _coerce(key, value, types[name], lower=name in _LOWERED)
        for name, allowed in _CHOICES.items():
            if values.get(name) is not None and values[name] not in allowed:
                raise PolicyError(
                    f"run config {name.replace('_', '-')}={values[name]!r} is invalid; use one "
                    f"of {', '.join(allowed)}"
                )
        if values.get("server_country"):
            values["server_country"] = values["server_country"].upper()
            if not re.fullmatch(r"[A-Z]{2}", values["server_country"]):
                raise PolicyError(
                    f"run config server-country={values['server_country']!r} is invalid; use an "
                    "ISO 3166-1 alpha-2 code such as DE or CN"
                )
        if values.get("base_model_licence"):
            try:
                values["base_model_licence"] = spdx_licence(values["base_model_licence"])
            except ValueError as exc:
                raise PolicyError(f"run config base-model-licence="
                                  f"{values['base_model_licence']!r}: {exc}") from None
        eps: dict[str, float] = {}
        for node, value in (node_epsilon or {}).items():
            eps[str(node)] = _coerce(f"node epsilon for {node}", value, "float | None")
        return cls(**values, node_epsilon=eps)


def _coerce(key: str, value: Any, typ: str, lower: bool = False) -> Any:
    """Type-check one value; ``""`` means not declared for every type (a run-config schema can
    list a key without deciding it, e.g. ``gpai-systemic-risk = ""``)."""
    base = typ.split("|")[0].strip()
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise PolicyError(f"run config {key}={value!r} must be true or false")
    if base == "int":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise PolicyError(f"run config {key}={value!r} must be a whole number >= 0")
    if base == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise PolicyError(f"run config {key}={value!r} must be a finite number >= 0")
        return float(value)
    if not isinstance(value, str) or len(value) > 2000:
        raise PolicyError(f"run config {key}={value!r} must be a short string")
    text = value.strip()
    return text.lower() if lower else text


def load_run_config(path: str | Path) -> dict[str, Any]:
    """Read a run-config TOML: flat keys, or a pyproject with [tool.flwr.app.config]."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"run config {p} not found; pass a TOML file of run settings") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"run config {p} cannot be read ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"run config {p} is not valid TOML ({exc}); fix the syntax") from None
    nested: Any = data
    for key in ("tool", "flwr", "app", "config"):
        nested = nested.get(key) if isinstance(nested, dict) else None
    return nested if isinstance(nested, dict) else data


@dataclass(frozen=True)
class Federation:
    """What one evaluation knows about all the nodes together (facts that cross nodes)."""

    #: Nodes whose declared data is GDPR personal data (not ruled out): the global model
    #: trained on it carries that data to every other node.
    eea_personal: frozenset[str] = frozenset()
    #: Each node's declared country (absent when undeclared).
    countries: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, manifests: Mapping[str, Manifest | None]) -> Federation:
        eea, countries = set(), {}
        for key, m in manifests.items():
            if m is None:
                continue
            node = str(key)
            if "gdpr" in m.jurisdictions and m.personal is not False:
                eea.add(node)
            if m.country:
                countries[node] = m.country
        return cls(frozenset(eea), countries)


def node_facts(
    node: str, run: RunFacts, manifest: Manifest | None, federation: Federation | None = None
) -> dict[str, Any]:
    """Derived per-node facts. Model updates leaving the node's jurisdiction, and the global
    model reaching a node, count as transfers (the conservative reading); a simulation has
    none. An undeclared server country is treated as outside both the EEA and China."""
    fed = federation or Federation()
    country = manifest.country if manifest else None
    eps = run.node_epsilon.get(node, run.dp_epsilon if run.dp else None)
    others = [c for n, c in fed.countries.items() if n != node]
    return {
        "id": node,
        "epsilon": eps,
        "has_manifest": manifest is not None,
        "leaves_eea": run.deployment and country in EEA_COUNTRIES and not run.server_in_eea,
        "leaves_cn": run.deployment and country == "CN" and run.server_country != "CN",
        "receives_eea_model": run.deployment and country not in EEA_COUNTRIES
        and any(n != node for n in fed.eea_personal),
        "foreign_parties": run.deployment and (
            country is None or run.server_country != country or any(c != country for c in others)
        ),
    }


def _manifest_fact_names() -> frozenset[str]:
    return frozenset(Manifest(name="x").facts())


RUN_FACTS = frozenset(RunFacts().facts())
MANIFEST_FACTS = _manifest_fact_names()
NODE_FACTS = frozenset(node_facts("x", RunFacts(), None))


def empty_manifest_facts() -> dict[str, Any]:
    """Facts for a node that sent no manifest: every field undeclared."""
    return dict.fromkeys(MANIFEST_FACTS)


def today_utc() -> date:
    return datetime.now(UTC).date()
