"""fedguard's privacy and compliance library; imports nothing else of fedguard.

- `privacy.dp`: DP-SGD (Opacus), accounting, the node's privacy ledger, user-level DP
- `privacy.secagg`: the SecAgg+ protocol and its cryptography (no Flower)
- `privacy.compliance`: manifests, policy packs, audit log, provenance, signing
- `privacy.transport`: CA, SuperLink and node certificates and keys
- `privacy.files`: crash-safe writes and hashing shared by all of them
"""
