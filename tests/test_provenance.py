"""Server key handling and signed provenance records."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from privacy.compliance.provenance import (
    ProvenanceError,
    build_record,
    load_record,
    sign_record,
    verify_record,
    write_record,
)
from privacy.compliance.signing import (
    KEY_FILENAME,
    SigningError,
    load_or_create_key,
    public_key_b64,
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
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILENAME]  # no temp files left


def test_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILENAME).write_text("not a key")
    with pytest.raises(SigningError, match="unreadable"):
        load_or_create_key(tmp_path)


def test_signed_record_verifies_with_model(tmp_path: Path, model: Path) -> None:
    key = load_or_create_key(tmp_path)
    signed = sign_record(record_for(model), key)
    path = tmp_path / "provenance.json"
    write_record(path, signed)
    check = verify_record(load_record(path), model, public_key_b64(key))
    assert check.ok, check.reasons
    assert check.key_id == signed["key_id"]
    assert list(signed["record"]["manifests"]) == ["hospital-a", "hospital-b"]


def test_flipping_one_byte_of_the_record_file_is_detected(tmp_path: Path, model: Path) -> None:
    signed = sign_record(record_for(model), load_or_create_key(tmp_path))
    path = tmp_path / "provenance.json"
    write_record(path, signed)
    raw = bytearray(path.read_bytes())
    pos = raw.index(b'"epsilon": 0.9') + len('"epsilon": 0.')
    raw[pos] = ord("1")  # 0.9 -> 0.1: a node's privacy loss understated
    path.write_bytes(bytes(raw))
    check = verify_record(load_record(path))
    assert not check.ok
    assert any("signature" in r for r in check.reasons)


def test_different_model_file_is_detected(tmp_path: Path, model: Path) -> None:
    signed = sign_record(record_for(model), load_or_create_key(tmp_path))
    other = tmp_path / "other.pt"
    other.write_bytes(b"final model weights!")
    check = verify_record(signed, other)
    assert not check.ok and "does not match" in check.reasons[0]


def test_record_signed_by_another_key_fails_when_pinned(tmp_path: Path, model: Path) -> None:
    signed = sign_record(record_for(model), load_or_create_key(tmp_path / "attacker"))
    trusted = public_key_b64(load_or_create_key(tmp_path / "server"))
    assert verify_record(signed).ok  # integrity alone holds ...
    check = verify_record(signed, trusted_public_key=trusted)
    assert not check.ok and "other than the trusted" in check.reasons[0]  # ... origin does not


def test_resigned_record_with_dropped_round_breaks_the_chain(tmp_path: Path, model: Path) -> None:
    key = load_or_create_key(tmp_path)
    record = record_for(model)
    del record["checkpoints"][1]  # drop round 2, keep the stored chain values
    check = verify_record(sign_record(record, key))
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
def test_garbage_records_fail_without_raising(signed: dict[str, Any]) -> None:
    assert not verify_record(signed).ok


def test_load_record_errors(tmp_path: Path) -> None:
    with pytest.raises(ProvenanceError, match="not found"):
        load_record(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ProvenanceError, match="not JSON"):
        load_record(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1]))
    with pytest.raises(ProvenanceError, match="not a JSON object"):
        load_record(tmp_path / "list.json")
