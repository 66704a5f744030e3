"""Training page: the runs list and one run's rounds, nodes, privacy spend, settings and events.

While the selected run is `running`, its part of the page is an `st.fragment` that reruns every
few seconds, so charts follow the training without reloading the page (the store is read with a
short cache TTL, see `ui/data.py`).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pandas as pd
import streamlit as st

from assistant.live_source import metric
from assistant.ui.data import StoreUnavailable, pick_run, query, runs_or_message, show_unavailable
from assistant.ui.text import md_escape, utc

REFRESH_S = 3.0
# Run-config keys shown as the run's privacy settings (any other dp-*/secagg-* key is added).
SETTINGS = (
    "dp", "dp-epsilon", "dp-delta", "dp-accountant", "dp-clip-norm", "dp-max-grad-norm",
    "dp-noise-multiplier", "dp-sample-rate", "dp-privacy-unit", "secagg", "min-nodes",
    "tls", "node-auth", "aggregation", "policy-packs", "mode", "purpose", "server-country",
)
EVENT_KINDS_OF_NOTE = (
    "node-refused", "node-failed", "node-excluded", "update-rejected", "round-empty",
    "secagg-abort", "secagg-node-error", "secagg-sum-rejected", "run-failed", "run-stopped",
)


def runs_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run": str(r["run_id"]),
                "status": r["status"],
                "rounds": f"{r['last_round']}/{r['num_rounds']}",
                "started": utc(r["started_at"]),
                "ended": utc(r["ended_at"]),
            }
            for r in runs
        ]
    )


def _metrics(raw: Any) -> dict[str, Any]:
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def participation(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Per node: rounds trained, status counts per phase, examples, last epsilon."""
    nodes: dict[str, dict[str, Any]] = {}
    for r in results:
        row = nodes.setdefault(str(r["node_id"]), {"node": str(r["node_id"]), "_c": Counter()})
        row["_c"][(r["phase"], r["status"])] += 1
        if r["phase"] == "train" and r["status"] == "ok":
            row["rounds trained"] = row.get("rounds trained", 0) + 1
            row["last round"] = max(row.get("last round", 0), int(r["round"]))
            row["examples"] = r.get("num_examples")
    out = []
    for node in sorted(nodes, key=lambda n: (len(n), n)):
        row = nodes[node]
        counts: Counter = row.pop("_c")
        row.setdefault("rounds trained", 0)
        for status in ("refused", "failed", "rejected", "excluded"):
            row[status] = sum(n for (_, s), n in counts.items() if s == status)
        row["evaluated"] = counts[("evaluate", "ok")]
        out.append(row)
    cols = ["node", "rounds trained", "last round", "refused", "failed", "rejected", "excluded",
            "evaluated", "examples"]
    return pd.DataFrame(out).reindex(columns=cols)


def privacy_spend(results: list[dict[str, Any]], config: dict[str, Any]) -> pd.DataFrame:
    """Per node: latest epsilon spent and its budget (node's own, else the run's dp-epsilon)."""
    latest: dict[str, dict[str, Any]] = {}
    settings: dict[str, dict[str, Any]] = {}  # DP metrics of the node's last accepted update
    for r in results:
        if r["phase"] == "train" and r.get("epsilon") is not None:
            latest[str(r["node_id"])] = r  # ordered by round: the last one wins
            if r["status"] == "ok":
                settings[str(r["node_id"])] = _metrics(r.get("metrics"))
    rows = []
    for node, r in sorted(latest.items(), key=lambda kv: (len(kv[0]), kv[0])):
        m = {**settings.get(node, {}), **_metrics(r.get("metrics"))}
        budget = metric(m, "privacy-budget", "epsilon-budget")
        if budget is None:
            budget = metric(config, "epsilon")  # the run's dp-epsilon
        eps = float(r["epsilon"])
        row: dict[str, Any] = {"node": node, "epsilon spent": eps, "budget": budget}
        row["used"] = f"{eps / budget:.0%}" if budget else ""
        delta = metric(m, "delta")
        row["delta"] = delta if delta is not None else metric(config, "delta")
        for key in ("noise-multiplier", "sample-rate", "clipped-fraction"):
            value = metric(m, key)
            row[key] = value if value is None or value >= 0 else None  # -1 = not measured
        rows.append(row)
    return pd.DataFrame(rows)


def settings_table(config: dict[str, Any]) -> pd.DataFrame:
    keys = [k for k in SETTINGS if k in config]
    keys += sorted(k for k in config if k.startswith(("dp-", "secagg-")) and k not in keys)
    return pd.DataFrame([{"setting": k, "value": str(config[k])} for k in keys])


def secagg_table(rounds: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in rounds:
        info = _metrics(r.get("extra")).get("secagg")
        if not isinstance(info, dict):
            continue
        rows.append({
            "round": r["round"],
            "masked": len(info.get("masked") or []),
            "dropped": ", ".join(map(str, info.get("dropped") or [])),
            "recovered": ", ".join(map(str, info.get("recovered") or [])),
        })
    return pd.DataFrame(rows)


def events_table(events: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"time": utc(e["ts"]), "round": "" if e["round"] is None else str(e["round"]),
         "node": e["node_id"] or "",
         "kind": e["kind"], "message": e["message"]}
        for e in events
    ])


def _charts(rounds: list[dict[str, Any]]) -> None:
    if not rounds:
        st.info("No round has finished yet; charts appear after the first round.")
        return
    df = pd.DataFrame(rounds).set_index("round")
    left, right = st.columns(2)
    with left:
        st.subheader("Loss")
        cols = [c for c in ("train_loss", "fed_loss", "server_loss") if df[c].notna().any()]
        st.line_chart(df[cols].rename(columns=lambda c: c.removesuffix("_loss")))
    with right:
        st.subheader("Accuracy")
        cols = [c for c in ("train_accuracy", "fed_accuracy", "server_accuracy")
                if df[c].notna().any()]
        st.line_chart(df[cols].rename(columns=lambda c: c.removesuffix("_accuracy")))


def run_view(run_id: str, was_live: bool = False) -> None:
    """Everything about one run; reruns on its own while the run is live."""
    try:
        run = query("get_run", run_id)
        rounds = query("rounds", run_id)
        results = query("node_results", run_id)
        events = query("events", run_id)
    except StoreUnavailable as exc:
        show_unavailable(exc)
        return
    if run is None:
        st.warning("That run disappeared from the run store; reload the page.")
        return
    config = run.get("config") or {}
    live = run["status"] == "running"
    if was_live and not live:
        st.rerun(scope="app")  # the run ended: redraw once without the auto-refresh
    cols = st.columns(4)
    cols[0].metric("Status", run["status"])
    cols[1].metric("Rounds", f"{run['last_round']}/{run['num_rounds']}")
    last_acc = next((r["server_accuracy"] for r in reversed(rounds)
                     if r.get("server_accuracy") is not None), None)
    cols[2].metric("Server accuracy", "–" if last_acc is None else f"{last_acc:.1%}")
    cols[3].metric("Nodes", len({r["node_id"] for r in results}))
    st.caption(md_escape(f"Started {utc(run['started_at'])}"
                         + (f", ended {utc(run['ended_at'])}" if run["ended_at"] else "")
                         + (f"; refreshing every {REFRESH_S:g} s while running" if live else "")))
    if run.get("error"):
        st.error(md_escape(f"Run {run['status']}: {run['error']}", limit=500))
    _charts(rounds)

    st.subheader("Node participation")
    if results:
        st.dataframe(participation(results), hide_index=True)
    else:
        st.info("No node has reported a result yet.")

    st.subheader("Privacy spent per node")
    spend = privacy_spend(results, config)
    if spend.empty:
        st.info("No node reported a DP epsilon (is `dp` off for this run?).")
    else:
        chart = spend.set_index("node")[["epsilon spent", "budget"]]
        st.bar_chart(chart, stack=False, horizontal=True, x_label="node", y_label="ε")
        st.dataframe(spend, hide_index=True)

    left, right = st.columns(2)
    with left:
        st.subheader("DP and secure-aggregation settings")
        settings = settings_table(config)
        if settings.empty:
            st.info("The run config names no DP or secure-aggregation settings.")
        else:
            st.dataframe(settings, hide_index=True)
    with right:
        st.subheader("Secure aggregation per round")
        secagg = secagg_table(rounds)
        if secagg.empty:
            st.info("No secure-aggregation records for this run.")
        else:
            st.dataframe(secagg, hide_index=True)

    st.subheader("Events")
    notable = Counter(e["kind"] for e in events if e["kind"] in EVENT_KINDS_OF_NOTE)
    if notable:
        st.warning(md_escape(", ".join(f"{n} × {k}" for k, n in sorted(notable.items()))))
    if events:
        st.dataframe(events_table(events), hide_index=True)
    else:
        st.info("No events recorded.")


def render() -> None:
    """The Training page."""
    st.title("Training runs")
    runs = runs_or_message()
    if runs is None:
        return
    with st.expander(f"All runs ({len(runs)})", expanded=len(runs) > 1):
        st.dataframe(runs_table(runs), hide_index=True)
    run_id = pick_run(runs, key="training_run")
    status = next(r["status"] for r in runs if str(r["run_id"]) == run_id)
    every = REFRESH_S if status == "running" else None
    st.fragment(run_every=every)(run_view)(run_id, every is not None)
