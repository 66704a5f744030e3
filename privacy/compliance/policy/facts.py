"""The facts a rule can read: ``run.*`` (run configuration), ``manifest.*`` and ``node.*``.

Run facts come from the same kebab-case keys as ``[tool.flwr.app.config]`` (``dp-epsilon``,
``secagg`` ...), so a run config file, the Flower run config and the server all feed the policy
the same way. Keys this module does not know (training settings) are ignored; known keys are
type-checked so a typo in a value is a clear :class:`PolicyError`, not a silent pass.
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

from privacy.compliance.manifest import EEA_COUNTRIES, Manifest
from privacy.compliance.policy.errors import PolicyError

__all__ = [
    "MANIFEST_FACTS",
    "NODE_FACTS",
    "RUN_FACTS",
    "RunFacts",
    "load_run_config",
    "node_facts",
]

PURPOSES = ("research", "commercial")
MODES = ("simulation", "deployment")
_ALIASES = {"dp-max-grad-norm": "dp_clip_norm", "aggregator": "aggregation"}


@dataclass(frozen=True)
class RunFacts:
    """Everything about a run that policy rules may look at (see docs/policy-packs.md)."""

    purpose: str | None = None
    mode: str | None = None
    tls: bool = False
    node_auth: bool = False
    secagg: bool = False
    min_nodes: int | None = None
    num_server_rounds: int | None = None
    dp: bool = False
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_accountant: str | None = None
    dp_clip_norm: float | None = None
    dp_noise_multiplier: float | None = None
    dp_sample_rate: float | None = None
    dp_privacy_unit: str | None = None
    batch_size: int | None = None
    aggregation: str = "fedavg"
    update_norm_bound: float | None = None
    high_risk: bool = False
    high_risk_category: str | None = None
    automated_decisions: bool = False
    human_review: bool = False
    genai_public_cn: bool = False
    algorithm_filing: str | None = None
    content_labels: bool = False
    log_retention_days: int | None = None
    gpai_provider_eu: bool = False
    copyright_policy: str | None = None
    training_summary: str | None = None
    data_governance_doc: str | None = None
    server_country: str | None = None
    audit_log: bool = True
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
        types = {f.name: f.type for f in fields(cls) if f.name != "node_epsilon"}
        values: dict[str, Any] = {}
        for key, value in config.items():
            if not isinstance(key, str):
                continue
            name = _ALIASES.get(key, key.replace("-", "_"))
            if name not in types:
                continue
            values[name] = _coerce(key, value, str(types[name]))
        for name, allowed in (("purpose", PURPOSES), ("mode", MODES)):
            if name in values and values[name] is not None and values[name] not in allowed:
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
        eps: dict[str, float] = {}
        for node, value in (node_epsilon or {}).items():
            eps[str(node)] = _coerce(f"node epsilon for {node}", value, "float | None")
        return cls(**values, node_epsilon=eps)


def _coerce(key: str, value: Any, typ: str) -> Any:
    if value is None or (value == "" and "str" in typ):
        return None
    if typ == "bool":
        if isinstance(value, bool):
            return value
        raise PolicyError(f"run config {key}={value!r} must be true or false")
    if typ.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise PolicyError(f"run config {key}={value!r} must be a whole number >= 0")
    if typ.startswith("float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise PolicyError(f"run config {key}={value!r} must be a finite number >= 0")
        return float(value)
    if not isinstance(value, str) or len(value) > 2000:
        raise PolicyError(f"run config {key}={value!r} must be a short string")
    text = value.strip()
    return text.lower() if key in ("aggregation", "aggregator", "dp-accountant") else text


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


def node_facts(node: str, run: RunFacts, manifest: Manifest | None) -> dict[str, Any]:
    """Derived per-node facts. Model updates leaving the node's jurisdiction count as a transfer
    (the conservative reading); a simulation has no transfer. An undeclared server country is
    treated as outside both the EEA and China."""
    country = manifest.country if manifest else None
    eps = run.node_epsilon.get(node, run.dp_epsilon if run.dp else None)
    return {
        "id": node,
        "epsilon": eps,
        "has_manifest": manifest is not None,
        "leaves_eea": run.deployment and country in EEA_COUNTRIES and not run.server_in_eea,
        "leaves_cn": run.deployment and country == "CN" and run.server_country != "CN",
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
