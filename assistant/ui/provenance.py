"""Provenance page: verify a signed provenance record (a run's, or an uploaded one) and
optionally that a model file is the one it describes.

Verification is `privacy.compliance.provenance.verify_record`, which never raises and lists
every problem; the page shows its verdict, the reasons, and what the record claims.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from assistant.ui.data import (
    StoreUnavailable,
    pick_run,
    query,
    runs_or_message,
    show_unavailable,
    stored_path,
)
from assistant.ui.text import md_escape
from privacy.compliance.provenance import (
    ProvenanceCheck,
    ProvenanceError,
    load_record,
    verify_record,
)

MAX_RECORD_BYTES = 5 * 1024 * 1024
RESULT_KEY = "provenance_result"
MODEL_OK = ", and the model file matches"


def parse_record(data: bytes, name: str) -> dict[str, Any]:
    """An uploaded record as a dict; ProvenanceError (one line) when it is not a JSON object."""
    if len(data) > MAX_RECORD_BYTES:
        raise ProvenanceError(f"{name}: larger than 5 MiB; is it a provenance record?")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProvenanceError(f"{name} is not JSON; upload the provenance .json record") from None
    if not isinstance(value, dict):
        raise ProvenanceError(f"{name} is not a JSON object; upload the provenance record")
    return value


def verify(
    signed: Mapping[str, Any], model: tuple[str, bytes] | Path | None, trusted_key: str | None
) -> ProvenanceCheck:
    """verify_record, with an uploaded model written to a temp file under its own name."""
    if model is None or isinstance(model, Path):
        return verify_record(signed, model, trusted_key)
    name, data = model
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name)[:80].strip("._") or "model"
    with tempfile.TemporaryDirectory(prefix="fedguard-ui-") as tmp:
        path = Path(tmp) / safe
        path.write_bytes(data)
        return verify_record(signed, path, trusted_key)


def summary(signed: Mapping[str, Any]) -> pd.DataFrame:
    """What the record claims, as text rows (values are never rendered as markup)."""
    record = signed.get("record") if isinstance(signed.get("record"), Mapping) else {}
    model = record.get("model") if isinstance(record.get("model"), Mapping) else {}
    checkpoints = record.get("checkpoints") if isinstance(record.get("checkpoints"), list) else []
    manifests = record.get("manifests") if isinstance(record.get("manifests"), Mapping) else {}
    rows = [
        ("created", record.get("created")),
        ("model sha256", model.get("sha256")),
        ("rounds (checkpoints)", len(checkpoints)),
        ("nodes (manifests)", len(manifests)),
        ("signing key id", signed.get("key_id")),
        ("secure aggregation", json.dumps(record.get("secagg"), ensure_ascii=False)),
        ("versions", json.dumps(record.get("versions"), ensure_ascii=False)),
    ]
    return pd.DataFrame([{"field": k, "value": "" if v is None else str(v)} for k, v in rows])


def privacy_rows(signed: Mapping[str, Any]) -> pd.DataFrame:
    record = signed.get("record") if isinstance(signed.get("record"), Mapping) else {}
    privacy = record.get("privacy") if isinstance(record.get("privacy"), Mapping) else {}
    return pd.DataFrame([
        {"node": str(node), **{k: spec.get(k) for k in ("epsilon", "delta", "accountant")}}
        for node, spec in privacy.items() if isinstance(spec, Mapping)
    ])


def show_result(signed: Mapping[str, Any], check: ProvenanceCheck, model_note: str) -> None:
    if check.ok:
        st.success(f"Verified: the signature is valid, the checkpoint chain recomputes"
                   f"{model_note}. Signing key id {md_escape(check.key_id or '?')}.")
    else:
        st.error("Verification failed:  \n" + "  \n".join(
            f"• {md_escape(reason, limit=300)}" for reason in check.reasons
        ))
    st.dataframe(summary(signed), hide_index=True)
    privacy = privacy_rows(signed)
    if not privacy.empty:
        st.caption("Privacy spent per node, as recorded")
        st.dataframe(privacy, hide_index=True)
    with st.expander("Full record (JSON)"):
        st.json(dict(signed), expanded=False)


def _from_run(trusted: str | None) -> None:
    runs = runs_or_message()
    if runs is None:
        return
    run_id = pick_run(runs, key="provenance_run")
    try:
        artifacts = query("artifacts", run_id)
        rounds = query("rounds", run_id)
    except StoreUnavailable as exc:
        show_unavailable(exc)
        return
    art = artifacts.get("provenance")
    if art is None:
        st.info("This run has no provenance record yet (it is written when a run completes); "
                "upload one in the other tab.")
        return
    checkpoint = stored_path(rounds[-1]["checkpoint_path"]) if rounds else None
    use_model = st.checkbox(
        "Also check the run's final model (last round's checkpoint)",
        value=checkpoint is not None and checkpoint.is_file(),
        disabled=checkpoint is None, key="provenance_use_model",
    )
    if not st.button("Verify", type="primary", key="provenance_verify_run"):
        return
    try:
        signed = load_record(stored_path(art["path"]))
    except ProvenanceError as exc:
        st.error(md_escape(str(exc)))
        return
    model = checkpoint if use_model else None
    show_result(signed, verify(signed, model, trusted), MODEL_OK if model else "")


def _upload(trusted: str | None) -> None:
    record = st.file_uploader("Provenance record (JSON)", type=["json"], key="provenance_record")
    model = st.file_uploader("Model file (optional)", key="provenance_model")
    if st.button("Verify upload", type="primary", key="provenance_verify_upload"):
        st.session_state.pop(RESULT_KEY, None)
        if record is None:
            st.error("Upload a provenance record (.json) first.")
            return
        try:
            signed = parse_record(record.getvalue(), record.name)
        except ProvenanceError as exc:
            st.error(md_escape(str(exc)))
            return
        model_in = (model.name, model.getvalue()) if model is not None else None
        check = verify(signed, model_in, trusted)
        st.session_state[RESULT_KEY] = (signed, check, MODEL_OK if model else "")
    result = st.session_state.get(RESULT_KEY)
    if result is not None:
        show_result(*result)


def render() -> None:
    """The Provenance page."""
    st.title("Provenance")
    st.caption("A provenance record binds the final model to its checkpoints, the nodes' "
               "manifests, their privacy spend and the policy verdicts, signed by the server.")
    trusted = st.text_input(
        "Trusted server public key (optional, base64)", key="provenance_key",
        help="Without it the signature proves the record is intact, not who signed it.",
    ).strip() or None
    from_run, upload = st.tabs(["From a recorded run", "Upload a record"])
    with from_run:
        _from_run(trusted)
    with upload:
        _upload(trusted)
