"""Policy reports: one verdict per (rule, node), rendered as Markdown (en/zh) or JSON.

The report is the artefact an auditor reads, so every verdict carries the rule's citation and
the exact facts it looked at (evidence), and the JSON form round-trips for storage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from privacy.compliance.policy.errors import PolicyError

if TYPE_CHECKING:
    from privacy.compliance.audit import AuditLog

__all__ = ["STATUSES", "PolicyReport", "Verdict", "audit_verdicts"]

STATUSES = ("pass", "fail", "warn", "info", "not-applicable")
_LABELS = {
    "en": {
        "title": "fedguard policy report", "packs": "Packs", "date": "Evaluated on",
        "summary": "Summary", "result": "Result", "blocked": "FAIL: the run must not start",
        "ok": "PASS: no failing rule", "verdicts": "Verdicts", "fix": "What to fix",
        "status": "Verdict", "rule": "Rule", "node": "Node", "check": "Check",
        "citation": "Citation", "evidence": "Evidence", "note": "Note", "run": "(run)",
        "verified": "Verified",
        "pass": "pass", "fail": "fail", "warn": "warn", "info": "info",
        "not-applicable": "n/a", "none": "Nothing to fix.",
        "disclaimer": "Thresholds are configurable internal defaults, not legal requirements; "
        "this report is not legal advice.",
    },
    "zh": {
        "title": "fedguard 合规策略报告", "packs": "策略包", "date": "评估日期",
        "summary": "概要", "result": "结论", "blocked": "不通过：本次训练不得启动",
        "ok": "通过：没有不通过的规则", "verdicts": "逐条结论", "fix": "需要整改的事项",
        "status": "结论", "rule": "规则", "node": "节点", "check": "检查项",
        "citation": "依据", "evidence": "证据", "note": "说明", "run": "（整个训练）",
        "verified": "核实日期",
        "pass": "通过", "fail": "不通过", "warn": "警告", "info": "提示",
        "not-applicable": "不适用", "none": "无需整改。",
        "disclaimer": "阈值为可配置的内部默认值，并非法律要求；本报告不构成法律意见。",
    },
}


@dataclass(frozen=True)
class Verdict:
    """The outcome of one rule for one node (``node=None`` for run-scope rules)."""

    rule_id: str
    pid: str | None
    pack: str
    node: str | None
    status: str
    severity: str
    citation: str
    title: dict[str, str]
    explain: dict[str, str]
    evidence: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    #: When the rule's citation was last checked against its source (ISO date, "" = unknown).
    verified: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PolicyReport:
    verdicts: list[Verdict]
    packs: list[dict[str, Any]]
    evaluated_on: str

    @property
    def run_failed(self) -> bool:
        """True if any rule failed (the offline check's exit 1). The server blocks a run only on
        :attr:`failing_run_rules` and excludes the nodes in :attr:`failing_nodes`."""
        return any(v.status == "fail" for v in self.verdicts)

    @property
    def failing_nodes(self) -> dict[str, list[str]]:
        """Node -> ids of node-scope rules that failed for it."""
        out: dict[str, list[str]] = {}
        for v in self.verdicts:
            if v.status == "fail" and v.node is not None:
                out.setdefault(v.node, []).append(v.rule_id)
        return out

    @property
    def failing_run_rules(self) -> list[str]:
        return [v.rule_id for v in self.verdicts if v.status == "fail" and v.node is None]

    @property
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for v in self.verdicts:
            out[v.status] += 1
        return out

    def find(self, rule_id: str, node: str | None = None) -> Verdict | None:
        for v in self.verdicts:
            if v.rule_id == rule_id and v.node == node:
                return v
        return None

    def summary(self) -> str:
        """One line for logs and refusals: which rules failed where, or that none did."""
        if not self.run_failed:
            warn = self.counts["warn"]
            return f"policy check passed ({warn} warning{'s' if warn != 1 else ''})"
        parts = [f"run: {', '.join(self.failing_run_rules)}"] if self.failing_run_rules else []
        parts += [f"{node}: {', '.join(ids)}" for node, ids in sorted(self.failing_nodes.items())]
        return "policy check failed: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "fedguard.policy-report/1",
            "evaluated_on": self.evaluated_on,
            "packs": self.packs,
            "run_failed": self.run_failed,
            "counts": self.counts,
            "failing_nodes": self.failing_nodes,
            "failing_run_rules": self.failing_run_rules,
            "verdicts": [v.to_dict() for v in self.verdicts],
        }

    def to_json(self, lang: str | None = None) -> str:
        """JSON with both languages; with `lang`, title/explain are reduced to that language."""
        data = self.to_dict()
        if lang is not None:
            _check_lang(lang)
            for v in data["verdicts"]:
                v["title"] = v["title"][lang]
                v["explain"] = v["explain"][lang]
            data["lang"] = lang
        return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True)

    def sha256(self) -> str:
        """Stable digest of the verdicts, for provenance records and the audit trail."""
        body = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(body.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyReport:
        """Inverse of :meth:`to_dict` (both-language form)."""
        try:
            verdicts = [Verdict(**v) for v in data["verdicts"]]
            return cls(verdicts, list(data["packs"]), str(data["evaluated_on"]))
        except (KeyError, TypeError) as exc:
            raise PolicyError(f"not a policy report ({exc}); pass to_json() output") from None

    def to_markdown(self, lang: str = "en") -> str:
        """Every rule's verdict, evidence and citation in `lang` (en or zh)."""
        _check_lang(lang)
        t = _LABELS[lang]
        packs = ", ".join(f"{p['name']} {p['version']}" for p in self.packs)
        counts = ", ".join(f"{t[s]} {n}" for s, n in self.counts.items())
        lines = [
            f"# {t['title']}",
            "",
            f"- {t['result']}: **{t['blocked'] if self.run_failed else t['ok']}**",
            f"- {t['summary']}: {counts}",
            f"- {t['packs']}: {packs}",
            f"- {t['date']}: {self.evaluated_on}",
            "",
            f"> {t['disclaimer']}",
            "",
            f"## {t['verdicts']}",
            "",
            f"| {t['status']} | {t['rule']} | {t['node']} | {t['check']} | {t['citation']} | "
            f"{t['verified']} | {t['evidence']} |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in self.verdicts:
            rid = f"{v.pid} `{v.rule_id}`" if v.pid else f"`{v.rule_id}`"
            lines.append(
                f"| {_md(t[v.status])} | {rid} | {_md(v.node or t['run'])} | {_md(v.title[lang])} "
                f"| {_md(v.citation)} | {_md(v.verified or '-')} | {_md(_evidence(v.evidence))} |"
            )
        lines += ["", f"## {t['fix']}", ""]
        todo = [v for v in self.verdicts if v.status in ("fail", "warn")]
        for v in todo:
            lines.append(
                f"- **{t[v.status]}** {v.pid or ''} `{v.rule_id}` ({_md(v.node or t['run'])}): "
                f"{_md(v.explain[lang])} — {_md(v.citation)}"
                + (f" ({t['verified']} {v.verified})" if v.verified else "")
            )
            if v.note:
                lines.append(f"  - {t['note']}: {_md(v.note)}")
        if not todo:
            lines.append(t["none"])
        return "\n".join(lines) + "\n"


def _check_lang(lang: str) -> None:
    if lang not in _LABELS:
        raise PolicyError(f"language {lang!r} is not supported; use en or zh")


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _evidence(evidence: Mapping[str, Any]) -> str:
    parts = []
    for key, value in evidence.items():
        shown = json.dumps(value, ensure_ascii=False, default=str)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        parts.append(f"{key}={shown}")
    return ", ".join(parts)


def audit_verdicts(
    audit_log: AuditLog, report: PolicyReport, run_id: str | None = None
) -> list[dict[str, Any]]:
    """Write every verdict and a summary to the audit log in one fsync (rule P23).

    The summary carries the report's SHA-256, so the stored report can later be matched to the
    log; returns the entries written.
    """
    items: list[tuple[str, dict[str, Any]]] = []
    for v in report.verdicts:
        items.append((
            "policy.verdict",
            {
                "run_id": run_id, "rule": v.rule_id, "pid": v.pid, "pack": v.pack,
                "node": v.node, "status": v.status, "evidence": v.evidence,
                "citation": v.citation, "verified": v.verified, "note": v.note,
            },
        ))
    items.append((
        "policy.report",
        {
            "run_id": run_id, "report_sha256": report.sha256(), "run_failed": report.run_failed,
            "counts": report.counts, "failing_nodes": report.failing_nodes,
            "failing_run_rules": report.failing_run_rules, "packs": report.packs,
            "evaluated_on": report.evaluated_on,
        },
    ))
    return audit_log.extend(items)
