"""Provenance page: verify a signed provenance record (a run's, or an uploaded one) and
optionally that a model file is the one it describes.

Verification is `privacy.compliance.provenance.verify_record`, which never raises and lists
every problem; the page shows its verdict, the reasons, and what the record claims. The
signature is checked against a key the viewer trusts, never the one the record names: for a
recorded run the key the server published in its data directory, for an upload the key the
viewer pastes or uploads. Without one the page says the signature was not checked.
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
    data_dir,
    pick_run,
    query,
    runs_or_message,
    show_unavailable,
    stored_path,
)
from assistant.ui.text import md_escape
from privacy.compliance.provenance import (
    MAX_RECORD_BYTES,
    ProvenanceCheck,
    ProvenanceError,
    load_record,
    verify_record,
)
from privacy.compliance.signing import (
    PUBLIC_KEY_FILENAME,
    SigningError,
    key_id,
    parse_public_key,
    read_public_key,
)

RESULT_KEY = "provenance_result"
MODEL_OK = ", and the model file matches"
NOT_CHECKED = "signature not checked against a trusted key"


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
        return verify_record(signed, trusted_key, model_path=model)
    name, data = model
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name)[:80].strip("._") or "model"
    with tempfile.TemporaryDirectory(prefix="fedguard-ui-") as tmp:
        path = Path(tmp) / safe
        path.write_bytes(data)
        return verify_record(signed, trusted_key, model_path=path)


def published_key() -> tuple[str | None, str]:
    """The server key published in the data directory, or None and why not."""
    path = data_dir() / PUBLIC_KEY_FILENAME
    if not path.is_file():
        return None, (f"The data directory has no published server key ({PUBLIC_KEY_FILENAME}; "
                      "the server writes it when it starts), so the record's signature cannot "
                      "be checked here. Upload the record with the server's public key instead.")
    try:
        return read_public_key(path), ""
    except SigningError as exc:
        return None, str(exc)


def uploaded_key(pasted: str, upload: tuple[str, bytes] | None) -> str | None:
    """The key the viewer gave (pasted base64 or a .pub file), None if neither.

    Raises SigningError (one line) for a key that does not parse or two keys that differ.
    """
    keys = []
    if pasted.strip():
        keys.append(parse_public_key(pasted))
    if upload is not None:
        name, data = upload
        try:
            keys.append(parse_public_key(data[:4096].decode("ascii", errors="replace")))
        except SigningError:
            raise SigningError(f"{name} does not hold a base64 Ed25519 public key; upload the "
                               f"server's {PUBLIC_KEY_FILENAME}") from None
    if len(set(keys)) > 1:
        raise SigningError(f"the pasted key ({key_id(keys[0])}) and the uploaded one "
                           f"({key_id(keys[1])}) differ; give only the server's key")
    return keys[0] if keys else None


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
        ("signing key id (as the record names it)", signed.get("key_id")),
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
        st.success(f"Verified: the signature is valid for the trusted server key "
                   f"{md_escape(check.key_id or '?')}, and the checkpoint chain recomputes"
                   f"{model_note}.")
    elif not check.reasons:
        st.warning(f"The record is consistent (the checkpoint chain recomputes{model_note}), "
                   f"but its {NOT_CHECKED}: anyone can write such a record. Give the server's "
                   f"public key ({PUBLIC_KEY_FILENAME}) to check who signed it.")
    else:
        reasons = [*check.reasons, *([] if check.signature_checked else [NOT_CHECKED])]
        st.error("Verification failed:  \n" + "  \n".join(
            f"• {md_escape(reason, limit=300)}" for reason in reasons
        ))
    st.dataframe(summary(signed), hide_index=True)
    privacy = privacy_rows(signed)
    if not privacy.empty:
        st.caption("Privacy spent per node, as recorded")
        st.dataframe(privacy, hide_index=True)
    with st.expander("Full record (JSON)"):
        st.json(dict(signed), expanded=False)


def _from_run() -> None:
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
    trusted, why_not = published_key()
    if trusted is None:
        st.warning(md_escape(why_not))
    else:
        st.caption(f"Checked against the server key published in the data directory "
                   f"(key id {key_id(trusted)}).")
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


def _upload() -> None:
    record = st.file_uploader("Provenance record (JSON)", type=["json"], key="provenance_record")
    model = st.file_uploader("Model file (optional)", key="provenance_model")
    pasted = st.text_input(
        "Server public key (base64)", key="provenance_key",
        help=f"The one line of the server's {PUBLIC_KEY_FILENAME}, obtained from the server "
        "operator by a channel you trust. Without it the page cannot tell who signed.",
    )
    pub = st.file_uploader(f"…or upload {PUBLIC_KEY_FILENAME}", type=["pub"],
                           key="provenance_pubkey")
    if st.button("Verify upload", type="primary", key="provenance_verify_upload"):
        st.session_state.pop(RESULT_KEY, None)
        if record is None:
            st.error("Upload a provenance record (.json) first.")
            return
        try:
            trusted = uploaded_key(pasted, (pub.name, pub.getvalue()) if pub else None)
            signed = parse_record(record.getvalue(), record.name)
        except (SigningError, ProvenanceError) as exc:
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
               "manifests, their privacy spend, the policy verdicts and the audit log's head, "
               "signed by the server.")
    from_run, upload = st.tabs(["From a recorded run", "Upload a record"])
    with from_run:
        _from_run()
    with upload:
        _upload()
