"""Manifests of the bundled datasets, sent by virtual nodes in simulations."""
