"""Evidence that a run was lawful: data manifests, policy packs, audit log, signed provenance.

`manifest` parses what each node declares about its data; `policy` judges a run and its manifests
against rule packs; `audit` keeps a hash-chained, signed log of every decision; `provenance`
signs the final model's record; `signing` holds the Ed25519 helpers they share.
"""

from privacy.compliance.audit import AuditError, AuditLog
from privacy.compliance.manifest import Manifest, ManifestError, load_manifest, loads_manifest
from privacy.compliance.provenance import ProvenanceError, build_record, sign_record, verify_record
from privacy.compliance.signing import SigningError, load_or_create_key

__all__ = [
    "AuditError",
    "AuditLog",
    "Manifest",
    "ManifestError",
    "ProvenanceError",
    "SigningError",
    "build_record",
    "load_manifest",
    "load_or_create_key",
    "loads_manifest",
    "sign_record",
    "verify_record",
]
