"""Hash-chained audit log: every kind of tampering we claim to detect is detected."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from privacy.compliance.audit import GENESIS, AuditError, AuditLog, entry_hash
from privacy.compliance.signing import load_or_create_key, public_key_b64


def filled(tmp_path: Path, n: int = 5, key_dir: Path | None = None) -> AuditLog:
    key = load_or_create_key(key_dir) if key_dir else None
    log = AuditLog(tmp_path / "audit.jsonl", key=key)
    for i in range(n):
        log.append("test.event", {"i": i, "text": "résumé 数据"})
    return log


def lines(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().splitlines(keepends=True)


def test_append_chains_entries(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:], strict=False))
    assert all(entry_hash(e) == e["hash"] for e in entries)
    result = log.verify()
    assert (result.ok, result.count, result.first_bad) == (True, 3, None)


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    filled(tmp_path, 2)
    again = AuditLog(tmp_path / "audit.jsonl")
    assert again.append("more", {})["seq"] == 3
    assert again.verify().ok


@pytest.mark.parametrize("line_no", [0, 2, 4])
def test_flipping_one_byte_anywhere_is_detected(tmp_path: Path, line_no: int) -> None:
    log = filled(tmp_path)
    data = lines(log)
    raw = bytearray(data[line_no])
    pos = raw.index(b'"i":') + 4
    raw[pos] = ord("7") if raw[pos] != ord("7") else ord("8")
    data[line_no] = bytes(raw)
    log.path.write_bytes(b"".join(data))
    result = log.verify()
    assert not result.ok and result.first_bad == line_no + 1
    assert "edited" in result.reason


def test_every_single_byte_flip_is_detected(tmp_path: Path) -> None:
    log = filled(tmp_path, 2)
    original = log.path.read_bytes()
    for pos in range(len(original)):
        damaged = bytearray(original)
        damaged[pos] ^= 0x01
        log.path.write_bytes(bytes(damaged))
        assert not log.verify().ok, f"flip at byte {pos} went unnoticed"


def test_deleted_entry_is_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    data = lines(log)
    del data[1]
    log.path.write_bytes(b"".join(data))
    result = log.verify()
    assert not result.ok and result.first_bad == 2


def test_inserted_entry_is_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    data = lines(log)
    data.insert(2, data[0])  # a replayed copy of the first entry
    log.path.write_bytes(b"".join(data))
    assert log.verify().first_bad == 3


def test_reordered_entries_are_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    data = lines(log)
    data[1], data[2] = data[2], data[1]
    log.path.write_bytes(b"".join(data))
    assert log.verify().first_bad == 2


def test_recomputed_hashes_still_break_the_chain(tmp_path: Path) -> None:
    log = filled(tmp_path)
    data = lines(log)
    entry = json.loads(data[1])
    entry["payload"]["i"] = 99
    entry["hash"] = entry_hash(entry)
    data[1] = (json.dumps(entry) + "\n").encode()
    log.path.write_bytes(b"".join(data))
    result = log.verify()
    assert result.first_bad == 3 and "chain" in result.reason


def test_truncated_tail_is_detected_by_the_head(tmp_path: Path) -> None:
    log = filled(tmp_path)
    log.path.write_bytes(b"".join(lines(log)[:3]))
    result = log.verify()
    assert not result.ok and "truncated" in result.reason


def test_missing_head_is_reported(tmp_path: Path) -> None:
    log = filled(tmp_path)
    log.head_path.unlink()
    assert "head file" in log.verify().reason


def test_log_ahead_of_head_after_a_crash_is_accepted(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    head = log.head_path.read_bytes()
    log.append("late", {})
    log.head_path.write_bytes(head)  # as if we crashed before the head update
    assert log.verify().ok


def test_partial_last_line_is_reported_then_dropped_by_next_append(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    with open(log.path, "ab") as fh:
        fh.write(b'{"seq": 4, "ts": "2026')  # crash mid-write
    assert not log.verify().ok
    entry = log.append("after-crash", {"ok": True})
    assert entry["seq"] == 4
    assert log.verify().ok and log.verify().count == 4


def test_signed_head_detects_rewritten_log_and_head(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    log = filled(tmp_path, 3, key_dir=keys)
    trusted = public_key_b64(load_or_create_key(keys))
    assert log.verify(trusted_public_key=trusted).ok
    # An attacker without the key rewrites the last entry consistently and re-writes the head.
    forged = AuditLog(tmp_path / "forged.jsonl")
    for i in range(3):
        forged.append("test.event", {"i": i + 10})
    os.replace(forged.path, log.path)
    head = json.loads(forged.head_path.read_bytes())
    old = json.loads(log.head_path.read_bytes())
    head["public_key"], head["signature"] = old["public_key"], old["signature"]
    log.head_path.write_text(json.dumps(head))
    assert "signature is invalid" in log.verify().reason
    # Without any signature, pinning the trusted key catches it too.
    log.head_path.write_bytes(forged.head_path.read_bytes())
    assert "trusted key" in log.verify(trusted_public_key=trusted).reason


def test_bad_inputs_raise_audit_error(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    with pytest.raises(AuditError, match="kind"):
        log.append("", {})
    with pytest.raises(AuditError, match="must be a dict"):
        log.append("k", [1])  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="canonical JSON"):
        log.append("k", {"x": float("nan")})
    assert not log.path.exists() or log.path.read_bytes() == b""


def test_missing_log_does_not_verify(tmp_path: Path) -> None:
    result = AuditLog(tmp_path / "none.jsonl").verify()
    assert not result.ok and "does not exist" in result.reason
