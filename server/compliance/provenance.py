"""The signed provenance record of a run's final model (what, from which data, how private)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from privacy.compliance.provenance import ProvenanceError, build_record, sign_record, write_record
from privacy.compliance.signing import load_or_create_key
from server.compliance.gate import AdmissionGate
from server.run import FederatedRun


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("fedguard", "flwr", "torch", "opacus", "cryptography"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def write_provenance(run: FederatedRun, gate: AdmissionGate, secagg: Mapping[str, Any],
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
    head = gate.audit.head()
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
