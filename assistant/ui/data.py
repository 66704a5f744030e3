"""Cached, read-only access to the run store for the pages.

SQLite connections are bound to the thread that opened them and Streamlit runs every session in
its own thread, so results (plain dicts) are cached, not connections: each cache miss opens the
store read-only, queries and closes it. The short TTL keeps a running run's pages fresh.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import streamlit as st

from assistant.ui.text import md_escape, one_line
from server.store import RunStore, StoreError, default_data_dir
from server.store.records import shown_status

TTL_S = 2.0
NO_RUNS = "No runs yet — run `make demo` to record a federated training run, then reload."
# Tables that stores written by earlier fedguard versions may lack, and their "no rows" value.
_ADDED_LATER: dict[str, Any] = {"manifests": [], "verdicts": [], "artifacts": {}, "events": [],
                                 "round_metrics": []}
_QUERIES = frozenset(
    {"list_runs", "get_run", "rounds", "node_results", "events", "manifests", "verdicts",
     "artifacts", "round_metrics"}
)


class StoreUnavailable(RuntimeError):
    """The run store is missing (`missing`) or unreadable; the message says what to do."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def show_unavailable(exc: StoreUnavailable) -> None:
    """The helpful message for a missing store, or the store's one-line error."""
    if exc.missing:
        st.info(f"{NO_RUNS}  \n(Looked for the run store in {md_escape(data_dir())})")
    else:
        st.error(md_escape(one_line(exc)))


def data_dir() -> Path:
    """$FEDGUARD_HOME (or ./.fedguard), read on every rerun so tests can point it elsewhere."""
    return default_data_dir()


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=256)
def _cached(directory: str, method: str, args: tuple[Any, ...]) -> Any:
    path = Path(directory) / "runs.sqlite"
    if not path.is_file():
        raise StoreUnavailable(f"no run store at {path}", missing=True)
    try:
        store = RunStore(path, readonly=True)
    except StoreError as exc:
        raise StoreUnavailable(str(exc)) from None
    try:
        return getattr(store, method)(*args)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc) and method in _ADDED_LATER:
            return _ADDED_LATER[method]  # a store from before the table existed: no rows
        raise StoreUnavailable(f"run store {path} cannot be read ({exc}); is it in use by an "
                               "incompatible fedguard version?") from None
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"run store {path} cannot be read ({exc})") from None
    finally:
        store.close()


def query(method: str, *args: Any) -> Any:
    """`RunStore.<method>(*args)` on the current store; StoreUnavailable if there is none."""
    if method not in _QUERIES:
        raise ValueError(f"not a read query: {method}")
    return _cached(str(data_dir()), method, args)


def stored_path(raw: str) -> Path:
    """A path the server stored: absolute, or relative to the data directory."""
    path = Path(raw).expanduser()
    return path if path.is_absolute() else data_dir() / path


def runs_or_message() -> list[dict[str, Any]] | None:
    """Every recorded run, newest first; None after showing why there is nothing to show."""
    try:
        runs = query("list_runs")
    except StoreUnavailable as exc:
        show_unavailable(exc)
        return None
    if not runs:
        st.info(NO_RUNS)
        return None
    return runs


def pick_run(runs: list[dict[str, Any]], key: str, label: str = "Run") -> str:
    """Run selector that honours and updates `?run=<id>`, so a link opens a given run."""
    ids = [str(r["run_id"]) for r in runs]
    now = time.time()
    status = {str(r["run_id"]): shown_status(r, now) for r in runs}
    wanted = st.query_params.get("run")
    if key not in st.session_state:
        if wanted and wanted not in ids:
            st.warning(
                f"Run “{md_escape(wanted, 80)}” is not in the run store; showing the latest run."
            )
        st.session_state[key] = wanted if wanted in ids else ids[0]
    elif st.session_state[key] not in ids:
        st.session_state[key] = ids[0]
    selected = st.selectbox(label, ids, key=key, format_func=lambda i: f"{i} ({status[i]})")
    if st.query_params.get("run") != selected:
        st.query_params["run"] = selected
    return str(selected)
