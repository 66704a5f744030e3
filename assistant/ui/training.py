"""Training page: the runs list and one run's rounds, nodes, privacy spend, settings and events.

While the selected run is `running`, its part of the page is an `st.fragment` that reruns every
few seconds, so charts follow the training without reloading the page (the store is read with a
short cache TTL, see `ui/data.py`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pandas as pd
import streamlit as st

from assistant.live_source import metric
from assistant.ui.data import StoreUnavailable, pick_run, query, runs_or_message, show_unavailable
from assistant.ui.text import md_escape, utc
from server.store.records import EVENT_KINDS_OF_NOTE, LOST, RUNNING, shown_status

REFRESH_S = 3.0
# Run-config keys shown as the run's privacy settings (any other dp-*/secagg-* key is added).
SETTINGS = (
    "dp", "dp-epsilon", "dp-delta", "dp-accountant", "dp-clip-norm", "dp-max-grad-norm",
    "dp-noise-multiplier", "dp-sample-rate", "dp-privacy-unit", "secagg", "min-nodes",
    "tls", "node-auth", "aggregation", "policy-packs", "mode", "purpose", "server-country",
)


RATES = ("accuracy", "recall", "precision", "f1", "auc", "specificity", "sensitivity")


def shown_value(name: str, value: float | None) -> str:
    """A headline value as people read it: rates (accuracy, recall, ...) in [0, 1] as percents,
    anything else (a loss, an error in the label's unit) as a number."""
    if value is None:
        return "–"
    if 0.0 <= value <= 1.0 and any(r in name.lower() for r in RATES):
        return f"{value:.1%}"
    return f"{value:.4g}"


def runs_table(runs: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run": str(r["run_id"]),
                "status": shown_status(r, time.time()),
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


def metric_frames(metrics: list[Any]) -> dict[str, pd.DataFrame]:
    """One frame per metric the task reported (loss first): rounds x source (server,
    federated, train). Any metric a task names appears here with no page change."""
    by_name: dict[str, dict[str, dict[int, float]]] = {}
    for m in metrics:
        by_name.setdefault(m.name, {}).setdefault(m.source, {})[m.round] = m.value
    order = sorted(by_name, key=lambda n: (n != "loss", n == "examples", n))
    return {name: pd.DataFrame(by_name[name]).sort_index() for name in order
            if name != "examples"}


def _charts(rounds: list[dict[str, Any]], metrics: list[Any]) -> None:
    if not rounds:
        st.info("No round has finished yet; charts appear after the first round.")
        return
    frames = metric_frames(metrics)
    if not frames:
        st.info("No metric recorded yet (under DP, federated evaluation may be reported for "
                "the final model only).")
        return
    cols = st.columns(2)
    for i, (name, frame) in enumerate(frames.items()):
        with cols[i % 2]:
            st.subheader(name)
            st.line_chart(frame)


def headline(run: dict[str, Any], metrics: list[Any]) -> tuple[str, float | None]:
    """The run's headline metric on its final model: the server's set if any, else the
    federated evaluation (a real federation's server often holds no data)."""
    name = str(run.get("headline") or "accuracy")
    for source in ("server", "federated"):
        values = [m for m in metrics if m.name == name and m.source == source
                  and m.value == m.value]
        if values:
            return f"{source.capitalize()} {name}", max(values, key=lambda m: m.round).value
    return name.capitalize(), None


def run_view(run_id: str, was_live: bool = False) -> None:
    """Everything about one run; reruns on its own while the run is live."""
    try:
        run = query("get_run", run_id)
        rounds = query("rounds", run_id)
        results = query("node_results", run_id)
        events = query("events", run_id)
        metrics = query("round_metrics", run_id)
    except StoreUnavailable as exc:
        show_unavailable(exc)
        return
    if run is None:
        st.warning("That run disappeared from the run store; reload the page.")
        return
    config = run.get("config") or {}
    status = shown_status(run, time.time())
    live = status == RUNNING
    if was_live and not live:
        st.rerun(scope="app")  # the run ended: redraw once without the auto-refresh
    cols = st.columns(4)
    cols[0].metric("Status", status)
    cols[1].metric("Rounds", f"{run['last_round']}/{run['num_rounds']}")
    label, value = headline(run, metrics)
    cols[2].metric(label, shown_value(label, value))
    cols[3].metric("Nodes", len({r["node_id"] for r in results}))
    st.caption(md_escape(f"Started {utc(run['started_at'])}"
                         + (f", ended {utc(run['ended_at'])}" if run["ended_at"] else "")
                         + (f"; refreshing every {REFRESH_S:g} s while running" if live else "")))
    if status == LOST:
        st.error("This run stopped sending signs of life: its ServerApp was stopped, killed or "
                 "crashed. `fedguard-server status` reconciles it with Flower.")
    if run.get("error"):
        lines = [ln.strip() for ln in str(run["error"]).split("; ") if ln.strip()]
        st.error(md_escape(f"Run {status}: {lines[0]}", limit=500))
        for line in lines[1:20]:
            st.markdown(f"- {md_escape(line, limit=400)}")
    _charts(rounds, metrics)

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
    status = next(shown_status(r, time.time()) for r in runs if str(r["run_id"]) == run_id)
    every = REFRESH_S if status == RUNNING else None
    st.fragment(run_every=every)(run_view)(run_id, every is not None)
