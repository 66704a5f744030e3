"""The pre-training gate in one call, so the server wires policy the same way everywhere.

Packs come from the run config (``policy-packs``, ``policy-params``) plus any user packs in
``<data-dir>/policy-packs``; every verdict is written to the audit log (rule P23) before the
caller decides whether to start. Given an audit log, the gate itself establishes the fact
``audit-log = true``: it is the one writing the verdicts there.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from privacy.compliance.audit import AuditLog
from privacy.compliance.manifest import Manifest
from privacy.compliance.policy.engine import evaluate
from privacy.compliance.policy.facts import RunFacts
from privacy.compliance.policy.loader import load_packs, parse_param_overrides
from privacy.compliance.policy.report import PolicyReport, audit_verdicts

__all__ = ["DEFAULT_PACKS", "PACK_DIR_NAME", "run_policy_gate"]

#: Every pack: each one applies only where its trigger holds (pipl for nodes in China,
#: gdpr in the EEA, eu-ai-act for high-risk or GPAI runs, cn-genai for public GenAI in China).
DEFAULT_PACKS = "all"
PACK_DIR_NAME = "policy-packs"


def run_policy_gate(
    run_config: Mapping[str, Any],
    manifests: Mapping[str, Manifest | None],
    data_dir: str | Path,
    audit_log: AuditLog | None = None,
    run_id: str | None = None,
    node_epsilon: Mapping[str, float] | None = None,
    today: date | None = None,
) -> PolicyReport:
    """Load packs for this run, evaluate, audit every verdict; raises PolicyError on bad input.

    The caller refuses to start when ``report.failing_run_rules`` is not empty and excludes the
    nodes in ``report.failing_nodes`` (``report.summary()`` is a one-line reason to show).
    """
    config = {**run_config, "audit-log": True} if audit_log is not None else run_config
    run = RunFacts.from_config(config, node_epsilon)
    packs = load_packs(
        run.policy_packs or DEFAULT_PACKS,
        [Path(data_dir) / PACK_DIR_NAME],
        parse_param_overrides(run.policy_params or ""),
    )
    report = evaluate(run, manifests, packs, today=today)
    if audit_log is not None:
        audit_verdicts(audit_log, report, run_id)
    return report
