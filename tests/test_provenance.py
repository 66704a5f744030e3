"""Server key handling and signed provenance records."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from privacy.compliance.audit import AuditLog
from privacy.compliance.provenance import (
    MAX_RECORD_BYTES,
    ProvenanceError,
    build_record,
    load_record,
    sign_record,
    verify_record,
    write_record,
)
from privacy.compliance.signing import (
    KEY_FILENAME,
    PUBLIC_KEY_FILENAME,
    SigningError,
    canonical_json,
    key_id,
    load_or_create_key,
    parse_public_key,
    public_key_b64,
    read_public_key,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "round-0003.pt"
    path.write_bytes(b"final model weights")
    return path


def record_for(model: Path, **changes: Any) -> dict[str, Any]:
    final = sha(model.read_bytes())
    args: dict[str, Any] = {
        "model_sha256": final,
        "round_checkpoints": [(1, sha(b"r1")), (2, sha(b"r2")), (3, final)],
        "manifests": {"hospital-b": sha(b"m2"), "hospital-a": sha(b"m1")},
        "privacy": {"hospital-a": {"epsilon": 0.9, "delta": 1e-7, "accountant": "rdp"},
                    "hospital-b": {"epsilon": 1.2, "delta": 1e-7, "accountant": "prv"}},
        "secagg": {"enabled": True, "min_nodes": 3},
        "verdicts": {"report_sha256": sha(b"report"), "run_failed": False},
        "versions": {"fedguard": "0.1.0", "flwr": "1.41"},
    }
    args.update(changes)
    return build_record(**args)


def test_key_is_created_once_with_0600(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "data")
    path = tmp_path / "data" / KEY_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_b64(load_or_create_key(tmp_path / "data")) == public_key_b64(key)
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == sorted([KEY_FILENAME, PUBLIC_KEY_FILENAME])  # no temp files left


def test_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILENAME).write_text("not a key")
    with pytest.raises(SigningError, match="unreadable"):
        load_or_create_key(tmp_path)


def test_signed_record_verifies_with_model(tmp_path: Path, model: Path) -> None:
    key = load_or_create_key(tmp_path)
    signed = sign_record(record_for(model), key)
    path = tmp_path / "provenance.json"
    write_record(path, signed)
    check = verify_record(load_record(path), public_key_b64(key), model_path=model)
    assert check.ok, check.reasons
    assert check.key_id == signed["key_id"]
    assert list(signed["record"]["manifests"]) == ["hospital-a", "hospital-b"]


def test_flipping_one_byte_of_the_record_file_is_detected(tmp_path: Path, model: Path) -> None:
    key = load_or_create_key(tmp_path)
    signed = sign_record(record_for(model), key)
    path = tmp_path / "provenance.json"
    write_record(path, signed)
    raw = bytearray(path.read_bytes())
    pos = raw.index(b'"epsilon": 0.9') + len('"epsilon": 0.')
    raw[pos] = ord("1")  # 0.9 -> 0.1: a node's privacy loss understated
    path.write_bytes(bytes(raw))
    check = verify_record(load_record(path), public_key_b64(key))
    assert not check.ok
    assert any("signature" in r for r in check.reasons)


def test_different_model_file_is_detected(tmp_path: Path, model: Path) -> None:
    key = load_or_create_key(tmp_path)
    signed = sign_record(record_for(model), key)
    other = tmp_path / "other.pt"
    other.write_bytes(b"final model weights!")
    check = verify_record(signed, public_key_b64(key), model_path=other)
    assert not check.ok and "does not match" in check.reasons[0]


def test_record_signed_by_another_key_fails_when_pinned(tmp_path: Path, model: Path) -> None:
    attacker = public_key_b64(load_or_create_key(tmp_path / "attacker"))
    signed = sign_record(record_for(model), load_or_create_key(tmp_path / "attacker"))
    trusted = public_key_b64(load_or_create_key(tmp_path / "server"))
    check = verify_record(signed, trusted_public_key=trusted)
    assert not check.ok and "other than the trusted" in check.reasons[0]
    assert f"record key {key_id(attacker)}, trusted key {key_id(trusted)}" in check.reasons[0]


def test_resigned_record_with_dropped_round_breaks_the_chain(tmp_path: Path, model: Path) -> None:
    key = load_or_create_key(tmp_path)
    record = record_for(model)
    del record["checkpoints"][1]  # drop round 2, keep the stored chain values
    check = verify_record(sign_record(record, key), public_key_b64(key))
    assert not check.ok and "chain does not recompute" in check.reasons[0]


def test_model_must_be_the_last_checkpoint(model: Path) -> None:
    with pytest.raises(ProvenanceError, match="last checkpoint"):
        record_for(model, round_checkpoints=[(1, sha(b"r1"))])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_sha256": "abc"}, "model_sha256='abc' is not a SHA-256"),
        ({"round_checkpoints": [(2, "0" * 64), (1, "0" * 64)]}, "rounds ascending"),
        ({"round_checkpoints": [("one", "0" * 64)]}, "not a round number"),
        ({"round_checkpoints": [(1,)]}, "not a (round, sha256) pair"),
        ({"manifests": {"n": "xyz"}}, "manifest sha256 for node 'n'"),
        ({"privacy": {"n": {"epsilon": -1}}}, "privacy['n'].epsilon=-1"),
        ({"privacy": {"n": 3}}, "must be a dict"),
        ({"versions": {"x": float("nan")}}, "not canonical JSON"),
    ],
)
def test_bad_inputs_are_rejected(model: Path, changes: dict[str, Any], message: str) -> None:
    if "model_sha256" not in changes and "round_checkpoints" in changes:
        changes["model_sha256"] = "0" * 64
    with pytest.raises(ProvenanceError) as info:
        record_for(model, **changes)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "signed",
    [{}, {"record": 3}, {"record": {}, "alg": "RSA"},
     {"record": {"schema": "x"}, "alg": "Ed25519", "public_key": "!!", "signature": "??"}],
)
def test_garbage_records_fail_without_raising(tmp_path: Path, signed: dict[str, Any]) -> None:
    trusted = public_key_b64(load_or_create_key(tmp_path))
    assert not verify_record(signed, trusted).ok
    assert not verify_record(signed, None).ok


def test_load_record_errors(tmp_path: Path) -> None:
    with pytest.raises(ProvenanceError, match="not found"):
        load_record(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ProvenanceError, match="not JSON"):
        load_record(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1]))
    with pytest.raises(ProvenanceError, match="not a JSON object"):
        load_record(tmp_path / "list.json")

    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(ProvenanceError, match="not JSON"):
        load_record(tmp_path / "deep.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ProvenanceError, match="not JSON"):
        load_record(tmp_path / "binary.json")
    (tmp_path / "huge.json").write_bytes(b" " * (MAX_RECORD_BYTES + 1))
    with pytest.raises(ProvenanceError, match="larger than 5 MiB"):
        load_record(tmp_path / "huge.json")


# --- the published public key (the pin) -------------------------------------------------------


def test_public_key_is_published_beside_the_key_and_recreated(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    pub = tmp_path / PUBLIC_KEY_FILENAME
    assert pub.read_text() == public_key_b64(key) + "\n"
    assert read_public_key(pub) == public_key_b64(key)
    pub.unlink()
    load_or_create_key(tmp_path)
    assert read_public_key(pub) == public_key_b64(key)  # recreated when missing
    pub.write_text(public_key_b64(load_or_create_key(tmp_path / "other")))
    load_or_create_key(tmp_path)
    assert read_public_key(pub) == public_key_b64(key)  # and when stale


def test_public_key_parsing_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="not found"):
        read_public_key(tmp_path / "none.pub")
    for i, junk in enumerate([b"", b"\xff\xfe", b"AAAA", b"A" * 100_000]):
        (tmp_path / f"bad{i}.pub").write_bytes(junk)
        with pytest.raises(SigningError, match="does not hold a base64 Ed25519 public key"):
            read_public_key(tmp_path / f"bad{i}.pub")
    with pytest.raises(SigningError) as info:
        parse_public_key("not\na key")
    assert "\n" not in str(info.value)
    key = public_key_b64(load_or_create_key(tmp_path))
    assert parse_public_key(f"  {key}\n") == key


# --- issue 12 item 11: verification pins the key, never trusts the one the record names --------


def test_verification_needs_a_trusted_key(tmp_path: Path, model: Path) -> None:
    signed = sign_record(record_for(model), load_or_create_key(tmp_path))
    with pytest.raises(TypeError):
        verify_record(signed)  # type: ignore[call-arg]
    check = verify_record(signed, None, model_path=model)
    assert not check.ok and not check.signature_checked and check.reasons == []
    assert check.key_id is None


def test_a_record_re_signed_by_a_forger_fails_whatever_it_names(
    tmp_path: Path, model: Path
) -> None:
    server = load_or_create_key(tmp_path / "server")
    trusted = public_key_b64(server)
    forged_record = record_for(model)
    forged_record["privacy"]["hospital-a"]["epsilon"] = 0.01
    forged = sign_record(forged_record, load_or_create_key(tmp_path / "forger"))
    forged["public_key"], forged["key_id"] = trusted, key_id(trusted)  # claim the server's key
    check = verify_record(forged, trusted)
    assert not check.ok and "signature does not match" in " ".join(check.reasons)
    genuine = sign_record(record_for(model), server)
    genuine["key_id"] = "0123456789abcdef"  # what a page would show as the signer
    check = verify_record(genuine, trusted)
    assert not check.ok and "key_id '0123456789abcdef' is not the trusted key" in check.reasons[0]
    assert "trusted public key" in verify_record(genuine, "AAAA").reasons[0]


@pytest.fixture
def run_log(tmp_path: Path) -> tuple[AuditLog, str]:
    data = tmp_path / "data"
    log = AuditLog(data / "runs" / "r1" / "audit.jsonl", key=load_or_create_key(data))
    log.extend([("run-started", {"run": "r1"}), ("round-completed", {"round": 3})])
    return log, public_key_b64(load_or_create_key(data))


def test_record_binds_the_audit_head(
    tmp_path: Path, model: Path, run_log: tuple[AuditLog, str]
) -> None:
    log, trusted = run_log
    key = load_or_create_key(tmp_path / "data")
    signed = sign_record(record_for(model, audit_head=log.head()), key)
    log.append("provenance-signed", {"run": "r1"})  # the log goes on after the record
    check = verify_record(signed, trusted, model_path=model, audit_log=log.path)
    assert check.ok, check.reasons
    # A log from elsewhere (another run, or history rewritten and re-signed) is not this one.
    other = AuditLog(tmp_path / "other" / "audit.jsonl", key=key)
    other.extend([("run-started", {"run": "r2"}), ("round-completed", {"round": 3})])
    check = verify_record(signed, trusted, audit_log=other.path)
    assert not check.ok and "differs from the recorded head" in check.reasons[0]
    # Entries forged after the log's signed head fail, through the record too.
    last = list(log.entries())[-1]
    with open(log.path, "ab") as fh:
        fh.write(canonical_json({**last, "seq": last["seq"] + 1}) + b"\n")
    assert not verify_record(signed, trusted, audit_log=log.path).ok


def test_record_audit_head_signature_is_pinned(
    tmp_path: Path, model: Path, run_log: tuple[AuditLog, str]
) -> None:
    log, trusted = run_log
    head = log.head()
    assert head is not None
    head["signature"] = sign_record({}, load_or_create_key(tmp_path / "x"))["signature"]
    signed = sign_record(record_for(model, audit_head=head), load_or_create_key(tmp_path / "data"))
    check = verify_record(signed, trusted)
    assert not check.ok
    assert "audit head in the record: head signature is invalid" in check.reasons[0]
    unbound = sign_record(record_for(model), load_or_create_key(tmp_path / "data"))
    check = verify_record(unbound, trusted, audit_log=log.path)
    assert not check.ok and "binds no valid audit head" in check.reasons[0]
    with pytest.raises(ProvenanceError, match="audit_head"):
        record_for(model, audit_head={"seq": "three"})
