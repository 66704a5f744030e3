"""The compliance side of a run: manifests, the policy gate, the audit log and provenance.

Before round 1 every node sends its data manifest (never data); the policy packs check the run
and each manifest. A run-level `fail` stops the run before any training; a node whose manifest
fails is excluded (recorded with rule ids). Nodes that connect later are checked the same way
before they may train. At the end the final model gets an Ed25519-signed provenance record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from privacy.compliance.audit import AuditLog
from privacy.compliance.manifest import ManifestError, loads_manifest, manifest_sha256
from privacy.compliance.policy import run_policy_gate
from privacy.compliance.policy.errors import PolicyError
from privacy.compliance.policy.report import PolicyReport
from privacy.compliance.provenance import ProvenanceError, build_record, sign_record, write_record
from privacy.compliance.signing import load_or_create_key
from privacy.files import atomic_write
from server.run import FederatedRun

MANIFEST_QUERY = "query.manifest"
GATE_OFF = "none"


class GateFailed(Exception):
    """The run may not start: a run-level policy failure or too few admissible nodes."""


def request_manifests(grid: Grid, node_ids: Iterable[int], timeout: float) -> dict[str, bytes]:
    """Ask nodes for their manifest file's bytes; nodes that fail or stay silent are absent."""
    messages = [
        Message(content=RecordDict({"config": ConfigRecord({})}), dst_node_id=nid,
                message_type=MANIFEST_QUERY)
        for nid in node_ids
    ]
    out: dict[str, bytes] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            continue
        rec = reply.content.config_records.get("manifest")
        raw = rec.get("toml") if rec is not None else None
        if isinstance(raw, bytes):
            out[str(reply.metadata.src_node_id)] = raw
    return out


class ComplianceGate:
    """Runs the policy gate for a run and keeps the set of nodes allowed to train."""

    def __init__(self, run: FederatedRun, run_config: Mapping[str, Any], data_dir: Path,
                 audit: AuditLog, timeout: float, min_nodes: int = 1) -> None:
        self.min_nodes = min_nodes
        self.run = run
        self.config = dict(run_config)
        self.data_dir = data_dir
        self.audit = audit
        self.timeout = timeout
        self.enabled = str(self.config.get("policy-packs", "")).strip().lower() != GATE_OFF
        self.allowed: set[int] = set()
        self.checked: set[int] = set()
        self.manifest_sha: dict[str, str] = {}
        self.report: PolicyReport | None = None

    def check_run(self) -> None:
        """Run-level rules, before waiting for any node: a failure means no training at all."""
        if not self.enabled:
            self.run.event("policy-gate-off", "policy-packs='none': no policy checks for this run")
            return
        try:
            report = run_policy_gate(self.config, {}, self.data_dir, self.audit, self.run.run_id)
        except PolicyError as err:
            raise GateFailed(f"policy packs could not be evaluated: {err}") from None
        self.report = report
        self._store(report)
        if report.failing_run_rules:
            raise GateFailed(report.summary())

    def admit(self, grid: Grid, node_ids: Iterable[int]) -> set[int]:
        """Check nodes not seen before; return the ones allowed to train."""
        ids = set(node_ids)
        new = sorted(ids - self.checked)
        if new:
            self._check(grid, new)
            ok = len(self.allowed & ids)
            if self.config.get("mode") == "simulation" and ok < self.min_nodes:
                # every virtual node is connected from the start: no one else will come
                raise GateFailed(f"only {ok} of {len(ids)} nodes pass the policy gate; "
                                 f"min-nodes={self.min_nodes}")
        return self.allowed & ids

    def _check(self, grid: Grid, node_ids: list[int]) -> None:
        self.checked.update(node_ids)
        if not self.enabled:
            self.allowed.update(node_ids)
            return
        raw = request_manifests(grid, node_ids, self.timeout)
        manifests = {}
        for nid in node_ids:
            key = str(nid)
            data = raw.get(key)
            if data is None:
                manifests[key] = None
                self.run.event("manifest-missing", f"node {nid} sent no data manifest", 0, nid)
                continue
            sha = manifest_sha256(data)
            try:
                manifest = loads_manifest(data, source=f"node {nid} manifest")
            except ManifestError as err:
                manifests[key] = None
                self.run.event("manifest-invalid", str(err), 0, nid, {"sha256": sha})
                continue
            manifests[key] = manifest
            self.manifest_sha[key] = sha
            self.run.store.record_manifest(self.run.run_id, nid, sha, manifest.to_dict())
            self.run.event("manifest-received", f"node {nid} manifest {sha[:12]}", 0, nid,
                           {"sha256": sha})
            if manifest.records:
                self.run.declared_records[key] = int(manifest.records)
        try:
            report = run_policy_gate(self.config, manifests, self.data_dir, self.audit,
                                     self.run.run_id)
        except PolicyError as err:
            raise GateFailed(f"policy packs could not be evaluated: {err}") from None
        self.report = report
        self._store(report)
        if report.failing_run_rules:
            raise GateFailed(report.summary())
        failing = report.failing_nodes
        for nid in node_ids:
            rules = failing.get(str(nid), [])
            if rules:
                self.run.event("node-excluded", f"node {nid} excluded by policy: "
                               f"{', '.join(rules)}", 0, nid, {"rules": rules})
            else:
                self.allowed.add(nid)

    def _store(self, report: PolicyReport) -> None:
        rows = [
            {
                "rule_id": v.rule_id, "pack": v.pack, "node_id": v.node or "",
                "verdict": v.status, "severity": v.severity, "citation": v.citation,
                "detail": {"title": v.title, "explain": v.explain, "evidence": v.evidence,
                           "note": v.note},
            }
            for v in report.verdicts
        ]
        self.run.store.record_verdicts(self.run.run_id, rows)
        lang = str(self.config.get("report-lang", "en"))
        lang = lang if lang in ("en", "zh") else "en"
        for kind, name, text in (
            ("report-md", "compliance-report.md", report.to_markdown(lang)),
            ("report-json", "compliance-report.json", report.to_json(lang)),
        ):
            path = self.run.run_dir / name
            sha = atomic_write(path, text.encode("utf-8"))
            self.run.store.set_artifact(self.run.run_id, kind, path, sha)


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("fedguard", "flwr", "torch", "opacus", "cryptography"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def write_provenance(run: FederatedRun, gate: ComplianceGate, secagg: Mapping[str, Any],
                     data_dir: Path) -> Path | None:
    """Sign the final model's provenance record; None when no round completed."""
    rounds = run.store.rounds(run.run_id)
    if not rounds:
        return None
    chain = [(r["round"], r["checkpoint_sha256"]) for r in rounds]
    privacy: dict[str, dict[str, Any]] = {}
    for row in run.store.node_results(run.run_id, "train"):
        if row["epsilon"] is None:
            continue
        metrics = json.loads(row["metrics"])
        cur = privacy.get(row["node_id"], {"epsilon": 0.0})
        if row["epsilon"] >= cur["epsilon"]:
            privacy[row["node_id"]] = {
                "epsilon": row["epsilon"], "delta": metrics.get("dp-delta"),
                "accountant": gate.config.get("dp-accountant", "rdp"),
            }
    verdicts = {}
    if gate.report is not None:
        verdicts = {"summary": gate.report.summary(), "counts": gate.report.counts,
                    "report_sha256": gate.report.sha256()}
    head_file = gate.audit.head_path
    head = json.loads(head_file.read_text(encoding="utf-8")) if head_file.is_file() else None
    try:
        record = build_record(chain[-1][1], chain, gate.manifest_sha, privacy, secagg, verdicts,
                              _versions(), audit_head=head)
        signed = sign_record(record, load_or_create_key(data_dir))
    except ProvenanceError as err:
        run.event("provenance-failed", str(err))
        return None
    path = run.run_dir / "provenance.json"
    write_record(path, signed)
    run.store.set_artifact(run.run_id, "provenance", path)
    run.event("provenance-signed", f"final model {chain[-1][1][:12]} signed",
              data={"path": str(path)})
    return path
