"""Policy engine: rules as data (TOML packs), evaluated against a run and its node manifests.

Typical use by the server (``run_policy_gate`` does exactly this)::

    packs = load_packs(run_config.get("policy-packs", "all"), [data_dir / "policy-packs"],
                       parse_param_overrides(run_config.get("policy-params", "")))
    report = evaluate(run_config, manifests, packs)
    audit_verdicts(audit_log, report, run_id)
    if report.run_failed: refuse to start with report.summary()
"""

from privacy.compliance.policy.engine import evaluate
from privacy.compliance.policy.errors import EvalError, ExprError, PolicyError
from privacy.compliance.policy.expr import Expr, compile_expr
from privacy.compliance.policy.facts import RunFacts, load_run_config
from privacy.compliance.policy.gate import DEFAULT_PACKS, run_policy_gate
from privacy.compliance.policy.loader import (
    BUILTIN_PACKS,
    Pack,
    Rule,
    available_packs,
    load_packs,
    parse_param_overrides,
)
from privacy.compliance.policy.report import PolicyReport, Verdict, audit_verdicts

__all__ = [
    "BUILTIN_PACKS",
    "DEFAULT_PACKS",
    "EvalError",
    "Expr",
    "ExprError",
    "Pack",
    "PolicyError",
    "PolicyReport",
    "Rule",
    "RunFacts",
    "Verdict",
    "audit_verdicts",
    "available_packs",
    "compile_expr",
    "evaluate",
    "load_packs",
    "load_run_config",
    "parse_param_overrides",
    "run_policy_gate",
]
