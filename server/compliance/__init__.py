"""The compliance side of a run: the admission gate, the policy view, provenance."""
