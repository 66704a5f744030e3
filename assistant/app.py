"""fedguard web UI: `streamlit run assistant/app.py` (or `make ui`).

Four pages, one module each under `assistant/ui/`: the compliance assistant (chat), training
runs, policy checks and provenance. The run store is `$FEDGUARD_HOME/runs.sqlite`
(default `./.fedguard`); every page works, with a helpful message, before any run exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts assistant/ (not the repo root) on sys.path; the packages live above it.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from assistant.ui import chat, policy, provenance, training  # noqa: E402
from assistant.ui.data import data_dir  # noqa: E402
from assistant.ui.text import md_escape  # noqa: E402


def main() -> None:
    st.set_page_config(page_title="fedguard", page_icon=":material/shield:", layout="wide")
    pages = [
        st.Page(chat.render, title="Assistant", icon=":material/chat:", url_path="assistant",
                default=True),
        st.Page(training.render, title="Training", icon=":material/monitoring:",
                url_path="training"),
        st.Page(policy.render, title="Policy checks", icon=":material/gavel:", url_path="policy"),
        st.Page(provenance.render, title="Provenance", icon=":material/verified_user:",
                url_path="provenance"),
    ]
    nav = st.navigation(pages)
    st.sidebar.caption(f"Run store: {md_escape(data_dir())}")
    nav.run()


main()
