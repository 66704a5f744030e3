"""Evaluate policy packs against a run and its nodes' manifests.

Each rule is evaluated once per run (``scope = "run"``) or once per node (``scope = "node"``).
A rule whose ``applies`` is false is *not-applicable*; otherwise ``check`` holding is a *pass*
and not holding gives the rule's severity (fail/warn/info). A condition that cannot be
evaluated on the facts (e.g. arithmetic on an undeclared value) has not been shown to hold, so
it also gives the severity, with the reason in the verdict's note: a gap never passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from privacy.compliance.manifest import Manifest
from privacy.compliance.policy.errors import EvalError, PolicyError
from privacy.compliance.policy.expr import Expr
from privacy.compliance.policy.facts import (
    Federation,
    RunFacts,
    empty_manifest_facts,
    node_facts,
    today_utc,
)
from privacy.compliance.policy.loader import Pack, Rule
from privacy.compliance.policy.report import PolicyReport, Verdict

__all__ = ["evaluate"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _flatten(prefix: str, facts: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in facts.items()}


def _evidence(rule: Rule, facts: Mapping[str, Any]) -> dict[str, Any]:
    names = sorted(rule.applies.names | rule.check.names)
    return {n: _jsonable(facts.get(n)) for n in names}


def _run(expr: Expr, facts: Mapping[str, Any], today: date) -> tuple[bool, str]:
    try:
        return bool(expr.evaluate(facts, today)), ""
    except EvalError as exc:
        return False, f"could not evaluate {expr.source!r}: {exc}"


def _verdict(rule: Rule, node: str | None, facts: Mapping[str, Any], today: date) -> Verdict:
    applies, note = _run(rule.applies, facts, today)
    if note:
        applies = True  # unknown applicability: check it rather than skip it
    if not applies:
        status = "not-applicable"
    else:
        holds, check_note = _run(rule.check, facts, today)
        note = "; ".join(n for n in (note, check_note) if n)
        status = "pass" if holds else rule.severity
    return Verdict(
        rule_id=rule.id, pid=rule.pid, pack=rule.pack, node=node, status=status,
        severity=rule.severity, citation=rule.citation, title=dict(rule.title),
        explain=dict(rule.explain), evidence=_evidence(rule, facts), note=note,
        verified=rule.verified,
    )


def evaluate(
    run: RunFacts | Mapping[str, Any],
    manifests: Mapping[str, Manifest | None],
    packs: Sequence[Pack],
    today: date | None = None,
) -> PolicyReport:
    """Verdicts for every (rule, node); `run` may be a kebab-case run config dict.

    A node mapped to ``None`` sent no manifest: its manifest facts are all undeclared. Facts
    that cross nodes (``node.receives_eea_model``, ``node.foreign_parties``) are computed from
    the manifests of this call, so pass every node of the federation together.
    `today` fixes the date used by ``days_since`` (defaults to today, UTC).
    """
    facts_run = run if isinstance(run, RunFacts) else RunFacts.from_config(run)
    day = today or today_utc()
    for key, manifest in manifests.items():
        if manifest is not None and not isinstance(manifest, Manifest):
            raise PolicyError(f"manifest for node {str(key)!r} is a {type(manifest)}; "
                              "pass a Manifest from load_manifest/parse_manifest")
    federation = Federation.of(manifests)
    base = _flatten("run", facts_run.facts())
    verdicts: list[Verdict] = []
    for pack in packs:
        params = _flatten("params", pack.params)
        for rule in pack.rules:
            if rule.scope == "run":
                verdicts.append(_verdict(rule, None, {**base, **params}, day))
                continue
            for key in sorted(manifests, key=str):
                manifest, node = manifests[key], str(key)  # Flower node ids may be ints
                mf = manifest.facts() if manifest is not None else empty_manifest_facts()
                facts = {
                    **base, **params, **_flatten("manifest", mf),
                    **_flatten("node", node_facts(node, facts_run, manifest, federation)),
                }
                verdicts.append(_verdict(rule, node, facts, day))
    return PolicyReport(verdicts, [p.summary() for p in packs], day.isoformat())
