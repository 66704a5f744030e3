"""Hash-chained audit log: every kind of tampering we claim to detect is detected."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from privacy.compliance.audit import GENESIS, AuditError, AuditLog, entry_hash
from privacy.compliance.signing import (
    canonical_json,
    key_id,
    load_or_create_key,
    public_key_b64,
)


def forge_entry(log: AuditLog, kind: str = "forged") -> None:
    """Append a well-chained entry directly to the file, as someone without the key can."""
    last = list(log.entries())[-1]
    entry = {"seq": last["seq"] + 1, "ts": last["ts"], "kind": kind, "payload": {},
             "prev": last["hash"]}
    entry["hash"] = entry_hash(entry)
    with open(log.path, "ab") as fh:
        fh.write(canonical_json(entry) + b"\n")


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
    result = log.verify(None)
    assert (result.ok, result.count, result.first_bad) == (True, 3, None)


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    filled(tmp_path, 2)
    again = AuditLog(tmp_path / "audit.jsonl")
    assert again.append("more", {})["seq"] == 3
    assert again.verify(None).ok


@pytest.mark.parametrize("line_no", [0, 2, 4])
def test_flipping_one_byte_anywhere_is_detected(tmp_path: Path, line_no: int) -> None:
    log = filled(tmp_path)
    data = lines(log)
    raw = bytearray(data[line_no])
    pos = raw.index(b'"i":') + 4
    raw[pos] = ord("7") if raw[pos] != ord("7") else ord("8")
    data[line_no] = bytes(raw)
    log.path.write_bytes(b"".join(data))
    result = log.verify(None)
    assert not result.ok and result.first_bad == line_no + 1
    assert "edited" in result.reason


def test_every_single_byte_flip_is_detected(tmp_path: Path) -> None:
    log = filled(tmp_path, 2)
    original = log.path.read_bytes()
    for pos in range(len(original)):
        damaged = bytearray(original)
        damaged[pos] ^= 0x01
        log.path.write_bytes(bytes(damaged))
        assert not log.verify(None).ok, f"flip at byte {pos} went unnoticed"


def test_deleted_entry_is_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    data = lines(log)
    del data[1]
    log.path.write_bytes(b"".join(data))
    result = log.verify(None)
    assert not result.ok and result.first_bad == 2


def test_inserted_entry_is_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    data = lines(log)
    data.insert(2, data[0])  # a replayed copy of the first entry
    log.path.write_bytes(b"".join(data))
    assert log.verify(None).first_bad == 3


def test_reordered_entries_are_detected(tmp_path: Path) -> None:
    log = filled(tmp_path)
    data = lines(log)
    data[1], data[2] = data[2], data[1]
    log.path.write_bytes(b"".join(data))
    assert log.verify(None).first_bad == 2


def test_recomputed_hashes_still_break_the_chain(tmp_path: Path) -> None:
    log = filled(tmp_path)
    data = lines(log)
    entry = json.loads(data[1])
    entry["payload"]["i"] = 99
    entry["hash"] = entry_hash(entry)
    data[1] = (json.dumps(entry) + "\n").encode()
    log.path.write_bytes(b"".join(data))
    result = log.verify(None)
    assert result.first_bad == 3 and "chain" in result.reason


def test_truncated_tail_is_detected_by_the_head(tmp_path: Path) -> None:
    log = filled(tmp_path)
    log.path.write_bytes(b"".join(lines(log)[:3]))
    result = log.verify(None)
    assert not result.ok and "truncated" in result.reason


def test_missing_head_is_reported(tmp_path: Path) -> None:
    log = filled(tmp_path)
    log.head_path.unlink()
    assert "head file" in log.verify(None).reason


def test_partial_last_line_is_reported_then_dropped_by_next_append(tmp_path: Path) -> None:
    log = filled(tmp_path, 3)
    with open(log.path, "ab") as fh:
        fh.write(b'{"seq": 4, "ts": "2026')  # crash mid-write
    assert not log.verify(None).ok
    entry = log.append("after-crash", {"ok": True})
    assert entry["seq"] == 4
    assert log.verify(None).ok and log.verify(None).count == 4


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
    assert "signature is invalid" in log.verify(trusted).reason
    # Without any signature, pinning the trusted key catches it too.
    log.head_path.write_bytes(forged.head_path.read_bytes())
    assert "not signed by the trusted key" in log.verify(trusted_public_key=trusted).reason


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
    result = AuditLog(tmp_path / "none.jsonl").verify(None)
    assert not result.ok and "does not exist" in result.reason


# --- issue 12 item 5: the head must pin where the log ends, signed by the trusted key ----------


@pytest.fixture
def signed(tmp_path: Path) -> tuple[AuditLog, str]:
    log = filled(tmp_path, 3, key_dir=tmp_path / "data")
    return log, public_key_b64(load_or_create_key(tmp_path / "data"))


def test_entries_appended_after_the_signed_head_fail(signed: tuple[AuditLog, str]) -> None:
    log, trusted = signed
    forge_entry(log)
    result = log.verify(trusted)
    assert not result.ok and result.first_bad == 4
    assert "not covered by the head's signature: entry 4 after entry 3" in result.reason


def test_log_ahead_of_an_unsigned_head_fails_too(tmp_path: Path) -> None:
    """The old "crash between log and head" allowance let anyone append; no longer."""
    log = filled(tmp_path, 3)
    head = log.head_path.read_bytes()
    log.append("late", {})
    log.head_path.write_bytes(head)
    result = log.verify(None)
    assert not result.ok and result.first_bad == 4


@pytest.mark.parametrize("pinned", [True, False])
def test_head_at_seq_zero_does_not_cover_the_log(
    signed: tuple[AuditLog, str], pinned: bool
) -> None:
    log, trusted = signed
    log.head_path.write_text(json.dumps({"seq": 0, "hash": GENESIS}))
    result = log.verify(trusted if pinned else None)
    assert not result.ok
    expected = "not signed by the trusted key" if pinned else "entries 1-3 after entry 0"
    assert expected in result.reason


def test_truncated_log_with_a_fresh_unsigned_head_fails_when_pinned(
    signed: tuple[AuditLog, str],
) -> None:
    log, trusted = signed
    log.path.write_bytes(b"".join(lines(log)[:2]))
    last = list(log.entries())[-1]
    log.head_path.write_text(json.dumps({"seq": 2, "hash": last["hash"]}))
    result = log.verify(trusted)
    assert not result.ok and "signature stripped" in result.reason


def test_stripped_or_missing_signature_is_detected(signed: tuple[AuditLog, str]) -> None:
    log, trusted = signed
    head = json.loads(log.head_path.read_bytes())
    del head["signature"]
    log.head_path.write_text(json.dumps(head))
    assert "not signed by the trusted key" in log.verify(trusted).reason
    log.head_path.unlink()
    assert "head file audit.jsonl.head is missing" in log.verify(trusted).reason


def test_empty_log_without_head_verifies_only_when_unsigned(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.path.write_bytes(b"")
    assert log.verify(None).ok
    trusted = public_key_b64(load_or_create_key(tmp_path / "data"))
    assert not log.verify(trusted).ok


def test_key_mismatch_names_both_key_ids(tmp_path: Path, signed: tuple[AuditLog, str]) -> None:
    log, trusted = signed
    other = public_key_b64(load_or_create_key(tmp_path / "elsewhere"))
    result = log.verify(other)
    assert not result.ok
    assert f"signed by key {key_id(trusted)}, not the trusted key {key_id(other)}" in result.reason


def test_no_fallback_to_the_key_the_head_names(signed: tuple[AuditLog, str]) -> None:
    """Without a pin a signed head is not taken on its own word: the caller must pin."""
    log, trusted = signed
    result = log.verify(None)
    assert not result.ok and "verify it against the server's public key" in result.reason
    ok = log.verify(trusted)
    assert ok.ok and ok.count == 3 and ok.key_id == key_id(trusted)


def test_verify_requires_the_key_argument(signed: tuple[AuditLog, str]) -> None:
    with pytest.raises(TypeError):
        signed[0].verify()  # type: ignore[call-arg]


class Crash(Exception):
    """Stands in for the process dying at a chosen point of an append."""


def crash_on_head_write(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Kill the next append at its head writes: 1 just after the pending head is written (no
    entry yet), 2 just before the final head (entries on disk, the head names them pending)."""
    original = AuditLog._write_head
    calls = {"n": 0}

    def write_head(self: AuditLog, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == call == 2:
            raise Crash
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        if calls["n"] == call == 1:
            raise Crash

    monkeypatch.setattr(AuditLog, "_write_head", write_head)


@pytest.mark.parametrize("call", [1, 2])
def test_a_crash_at_either_head_write_leaves_a_verifiable_log(
    signed: tuple[AuditLog, str], monkeypatch: pytest.MonkeyPatch, call: int
) -> None:
    log, trusted = signed
    crash_on_head_write(monkeypatch, call)
    with pytest.raises(Crash):
        log.extend([("a", {}), ("b", {})])
    monkeypatch.undo()
    assert "pending" in json.loads(log.head_path.read_bytes())
    result = log.verify(trusted)
    assert result.ok and result.count == (3 if call == 1 else 5)
    assert log.append("after", {})["seq"] == result.count + 1
    assert log.verify(trusted).ok
    assert "pending" not in json.loads(log.head_path.read_bytes())


def test_a_crash_inside_the_entries_is_reported_then_undone(
    signed: tuple[AuditLog, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log, trusted = signed
    crash_on_head_write(monkeypatch, 2)
    with pytest.raises(Crash):
        log.extend([("a", {}), ("b", {}), ("c", {})])
    monkeypatch.undo()
    data = lines(log)
    log.path.write_bytes(b"".join(data[:4]) + data[4][:10])  # only "a" and part of "b" landed
    assert not log.verify(trusted).ok
    log.path.write_bytes(b"".join(data[:4]))
    result = log.verify(trusted)
    assert not result.ok and "interrupted append" in result.reason
    assert log.append("resumed", {})["seq"] == 4  # "a" was never acknowledged: removed
    assert log.verify(trusted).ok
    assert [e["kind"] for e in log.entries()][-1] == "resumed"


def test_writer_refuses_to_sign_over_forged_entries(signed: tuple[AuditLog, str]) -> None:
    log, trusted = signed
    forge_entry(log)
    with pytest.raises(AuditError, match="does not end at its head"):
        log.append("next", {})
    assert not log.verify(trusted).ok  # the forged entry was not blessed by a new head


def test_writer_refuses_a_head_it_did_not_sign(tmp_path: Path) -> None:
    log = filled(tmp_path, 2, key_dir=tmp_path / "data")
    with open(log.path, "ab") as fh:
        fh.write(b'{"seq": 3, "ts"')  # a partial line: the refused writer must not touch it
    before = log.path.read_bytes()
    with pytest.raises(AuditError, match="only the server holding that key may append"):
        AuditLog(log.path).append("unsigned", {})
    assert log.path.read_bytes() == before
    other = AuditLog(log.path, key=load_or_create_key(tmp_path / "other"))
    with pytest.raises(AuditError, match="not the trusted key"):
        other.append("other key", {})
    headless = filled(tmp_path / "h", 2)
    headless.head_path.unlink()
    with pytest.raises(AuditError, match="no head file"):
        headless.append("x", {})


def test_anchor_binds_an_earlier_head(signed: tuple[AuditLog, str]) -> None:
    log, trusted = signed
    recorded = log.head()
    assert recorded is not None and recorded["seq"] == 3
    log.append("later", {})
    assert log.verify(trusted, anchor=(3, recorded["hash"])).ok
    assert "differs from the recorded head" in log.verify(trusted, anchor=(3, "f" * 64)).reason
    assert "shorter than the recorded head" in log.verify(trusted, anchor=(9, GENESIS)).reason


@pytest.mark.parametrize(
    "head",
    [
        b"\x00\xff binary junk",
        b"[" * 100_000,
        b"[1, 2]",
        b'{"seq": true, "hash": "' + b"0" * 64 + b'"}',
        b'{"seq": 3, "hash": "zz"}',
        b'{"seq": 3, "hash": "' + b"0" * 64 + b'", "extra": 1}',
        b'{"seq": 3, "hash": "' + b"0" * 64 + b'", "pending": {"seq": 1, "hash": 5}}',
        b'{"seq": 3, "hash": "' + b"0" * 64 + b'", "signature": 7}',
        b" " * 70_000,
    ],
)
def test_hostile_head_files_fail_without_raising(
    signed: tuple[AuditLog, str], head: bytes
) -> None:
    log, trusted = signed
    log.head_path.write_bytes(head)
    result = log.verify(trusted)
    assert not result.ok and "head" in result.reason
    with pytest.raises(AuditError):
        log.append("x", {})


@pytest.mark.parametrize(
    "junk", [b"\x00\x01\x02\n", b"[" * 100_000 + b"\n", b'{"seq": 1.0}\n', b"\xff\xfe\n"]
)
def test_hostile_log_lines_fail_without_raising(tmp_path: Path, junk: bytes) -> None:
    log = filled(tmp_path, 2)
    with open(log.path, "ab") as fh:
        fh.write(junk)
    result = log.verify(None)
    assert not result.ok and result.first_bad == 3


def test_a_directory_instead_of_a_log_fails_without_raising(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").mkdir()
    result = AuditLog(tmp_path / "audit.jsonl").verify(None)
    assert not result.ok and "cannot be read" in result.reason
