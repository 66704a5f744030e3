"""The run store (SQLite, WAL), its row shapes, and model checkpoints."""

from server.store.store import RunStore, StoreError, default_data_dir

__all__ = ["RunStore", "StoreError", "default_data_dir"]
