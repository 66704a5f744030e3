"""fedguard-policy: exit codes 0/1/2 and one-line errors, never a traceback."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from privacy.compliance.audit import AuditLog, entry_hash
from privacy.compliance.cli import main
from privacy.compliance.policy.loader import ENV_VAR
from privacy.compliance.provenance import build_record, sign_record, write_record
from privacy.compliance.signing import canonical_json, key_id, load_or_create_key, public_key_b64

DATA = Path(__file__).parent / "data" / "policy"
RUN = str(DATA / "good-run.toml")
MANIFEST = str(DATA / "good-manifest.toml")
ROOT = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def _no_env_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    assert err.count("\n") == 1 and err.startswith("fedguard-policy: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def commercial_nc_run(tmp_path: Path) -> tuple[str, str]:
    run = tmp_path / "run.toml"
    run.write_text(Path(RUN).read_text().replace('"research"', '"commercial"'))
    manifest = tmp_path / "nc.toml"
    manifest.write_text(Path(MANIFEST).read_text().replace("CC-BY-4.0", "CC-BY-NC-4.0"))
    return str(run), str(manifest)


def test_check_passes_with_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "check", "--run-config", RUN, "--manifest", MANIFEST,
                             "--today", "2026-11-24")
    assert code == 0 and err == ""
    assert out.startswith("# fedguard policy report") and "baseline 2026.12, gdpr 2026.12" in out


def test_check_fails_with_exit_1_and_writes_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, manifest = commercial_nc_run(tmp_path)
    out_file = tmp_path / "reports" / "r.md"
    code, out, _ = run_cli(capsys, "check", "--run-config", run, "--manifest", f"clinic={manifest}",
                           "--lang", "zh", "--out", str(out_file), "--today", "2026-11-24")
    assert code == 1
    assert out.startswith("FAIL:") and str(out_file) in out
    text = out_file.read_text("utf-8")
    assert "不通过" in text and "clinic" in text and "P9.noncommercial-licence" in text


def test_check_json_and_audit_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, manifest = commercial_nc_run(tmp_path)
    log = tmp_path / "audit.jsonl"
    code, out, _ = run_cli(capsys, "check", "--run-config", run, "--manifest", manifest,
                           "--manifest", f"good={MANIFEST}", "--json", "--packs", "all",
                           "--audit-log", str(log), "--today", "2026-11-24")
    assert code == 1
    data = json.loads(out)
    assert data["failing_nodes"] == {"nc": ["P9.noncommercial-licence"]}
    assert {p["name"] for p in data["packs"]} == {"baseline", "gdpr", "pipl", "cn-genai",
                                                 "eu-ai-act"}
    assert AuditLog(log).verify(None).count == len(data["verdicts"]) + 1


def test_param_override_from_cli(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "check", "--run-config", RUN, "--manifest", MANIFEST,
                           "--param", "baseline.max-epsilon=0.5", "--json")
    assert code == 1 and "P2.epsilon-cap" in json.loads(out)["failing_nodes"]["good-manifest"]


def test_param_override_from_run_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run.toml"
    run.write_text(Path(RUN).read_text() + 'policy-params = "baseline.max-epsilon=0.5"\n')
    code, out, _ = run_cli(capsys, "check", "--run-config", str(run), "--manifest", MANIFEST,
                           "--json")
    assert code == 1 and "P2.epsilon-cap" in json.loads(out)["failing_nodes"]["good-manifest"]
    # The command line wins over the run config.
    code, _, _ = run_cli(capsys, "check", "--run-config", str(run), "--manifest", MANIFEST,
                         "--param", "baseline.max-epsilon=10.0", "--today", "2026-11-24")
    assert code == 0


def test_user_pack_dir(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list-rules", "--packs", "baseline", "--pack-dir",
                           str(DATA / "user-packs"))
    assert code == 0 and "H1.enough-records" in out and "P1.dp-for-personal-data" in out


def test_list_rules_shows_every_shipped_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list-rules", "--lang", "zh")
    assert code == 0
    for pid in range(1, 24):
        assert f"\nP{pid} " in out
    assert "持有个人信息的节点须启用差分隐私" in out


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["check", "--run-config", RUN], ["--manifest"]),
        (["frobnicate"], ["invalid choice"]),
        (["check", "--run-config", "/nonexistent.toml", "--manifest", MANIFEST], ["not found"]),
        (["check", "--run-config", RUN, "--manifest", MANIFEST, "--packs", "gdrp"],
         ["did you mean gdpr"]),
        (["check", "--run-config", RUN, "--manifest", MANIFEST, "--today", "soon"],
         ["--today"]),
        (["check", "--run-config", RUN, "--manifest", MANIFEST, "--param", "x"],
         ["parameter override 'x'"]),
        (["check", "--run-config", RUN, "--manifest", MANIFEST, "--manifest", MANIFEST],
         ["given twice"]),
        (["verify-provenance", "/nonexistent.json"], ["not found"]),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert_one_line_error(err, *needles)


def test_malformed_manifest_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text(Path(MANIFEST).read_text().replace("CC-BY-4.0", "CC-BY-XX"))
    code, _, err = run_cli(capsys, "check", "--run-config", RUN, "--manifest", str(bad))
    assert code == 2
    assert_one_line_error(err, "m.toml", "dataset.licence='CC-BY-XX'", "not an SPDX id")


def test_malformed_pack_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = (DATA / "user-packs" / "hospital.toml").read_text()
    (tmp_path / "hospital.toml").write_text(body.replace("params.min_records", "params.min_rec"))
    code, _, err = run_cli(capsys, "check", "--run-config", RUN, "--manifest", MANIFEST,
                           "--pack-dir", str(tmp_path))
    assert code == 2
    assert_one_line_error(err, "hospital.toml", "H1.enough-records", "did you mean "
                          "params.min_records")


def test_malformed_run_config_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run.toml"
    run.write_text('dp = "yes"\n')
    code, _, err = run_cli(capsys, "check", "--run-config", str(run), "--manifest", MANIFEST)
    assert code == 2
    assert_one_line_error(err, "dp='yes'", "true or false")


def test_verify_audit_unsigned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log written without a key (check --audit-log) is checked with --unsigned, said so."""
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(3):
        log.append("e", {"i": i})
    code, out, _ = run_cli(capsys, "verify-audit", str(log.path), "--unsigned")
    assert code == 0 and "OK, 3 entries" in out and "does not show who wrote them" in out
    raw = bytearray(log.path.read_bytes())
    raw[raw.index(b'"i":1') + 4] = ord("5")
    log.path.write_bytes(bytes(raw))
    code, out, _ = run_cli(capsys, "verify-audit", str(log.path), "--unsigned")
    assert code == 1 and "FAILED at line 2" in out


def server_run(tmp_path: Path) -> tuple[Path, AuditLog, str]:
    """A data dir as the server leaves it: key, published public key, runs/r1/audit.jsonl."""
    data = tmp_path / "data"
    key = load_or_create_key(data)
    log = AuditLog(data / "runs" / "r1" / "audit.jsonl", key=key)
    for i in range(3):
        log.append("e", {"i": i})
    return data, log, public_key_b64(key)


def signed_record(data: Path, log: AuditLog | None = None) -> tuple[Path, Path]:
    model = data / "runs" / "r1" / "round-0001.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    record = build_record(digest, [(1, digest)], {}, {}, {}, {}, {"fedguard": "0.1.0"},
                          audit_head=log.head() if log else None)
    path = data / "runs" / "r1" / "provenance.json"
    write_record(path, sign_record(record, load_or_create_key(data)))
    return path, model


def test_verify_audit_pins_the_data_dirs_key_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, log, public = server_run(tmp_path)
    code, out, _ = run_cli(capsys, "verify-audit", str(log.path))
    assert code == 0 and f"head signed by trusted key {key_id(public)}" in out
    for pin in (public, str(data / "signing-key.pub")):
        assert run_cli(capsys, "verify-audit", str(log.path), "--public-key", pin)[0] == 0
    last = list(log.entries())[-1]
    with open(log.path, "ab") as fh:  # forged after the signed head, chained correctly
        entry = {**last, "seq": 4, "prev": last["hash"], "kind": "forged"}
        fh.write(canonical_json({**entry, "hash": entry_hash(entry)}) + b"\n")
    for extra in ([], ["--public-key", public]):
        code, out, _ = run_cli(capsys, "verify-audit", str(log.path), *extra)
        assert code == 1 and "FAILED at line 4" in out
        assert "not covered by the head's signature" in out


def test_verify_audit_refuses_without_a_pin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, log, _ = server_run(tmp_path)
    (tmp_path / "data" / "signing-key.pub").unlink()
    code, _, err = run_cli(capsys, "verify-audit", str(log.path))
    assert code == 2
    assert_one_line_error(err, "no trusted key", "pass --public-key")
    loose = AuditLog(tmp_path / "loose.jsonl")
    loose.append("e", {})
    code, _, err = run_cli(capsys, "verify-audit", str(loose.path))
    assert code == 2
    assert_one_line_error(err, "pass --public-key")


def test_verify_audit_key_mismatch_names_both_key_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, log, public = server_run(tmp_path)
    other = public_key_b64(load_or_create_key(tmp_path / "other"))
    code, out, _ = run_cli(capsys, "verify-audit", str(log.path), "--public-key", other)
    assert code == 1 and key_id(public) in out and key_id(other) in out


def test_verify_provenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, log, public = server_run(tmp_path)
    path, model = signed_record(data, log)
    code, out, _ = run_cli(capsys, "verify-provenance", str(path), "--model", str(model),
                           "--public-key", public)
    assert code == 0 and "model file matches" in out
    code, out, _ = run_cli(capsys, "verify-provenance", str(path), "--audit-log", str(log.path))
    assert code == 0 and f"signed by trusted key {key_id(public)}" in out
    assert "audit log intact and holds the recorded head" in out
    model.write_bytes(b"weights, poisoned")
    code, out, _ = run_cli(capsys, "verify-provenance", str(path), "--model", str(model))
    assert code == 1 and "does not match" in out


def test_verify_provenance_pins_instead_of_trusting_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _, public = server_run(tmp_path)
    forger = tmp_path / "forger"
    path, _ = signed_record(forger)  # a record signed by someone else's key ...
    target = data / "runs" / "r1" / "provenance.json"
    shutil.copy(path, target)  # ... dropped into the server's run directory
    code, out, _ = run_cli(capsys, "verify-provenance", str(target))
    assert code == 1 and "other than the trusted one" in out
    forged = public_key_b64(load_or_create_key(forger))
    assert key_id(forged) in out and key_id(public) in out
    loose = shutil.copy(path, tmp_path / "loose.json")  # outside any data dir: no pin
    code, _, err = run_cli(capsys, "verify-provenance", str(loose))
    assert code == 2
    assert_one_line_error(err, "no trusted key", "pass --public-key")


HOSTILE = [
    b"",
    b"\x00\xff\xfe binary junk\n",
    b"[" * 100_000,
    b'{"record": {"checkpoints": [1, "x", null]}, "alg": "Ed25519", "signature": 5}',
    b'{"seq": 1, "ts": "x", "kind": "k", "payload": {}, "prev": 0, "hash": []}\n',
    b'[1, 2, 3]\n{"a": 1}',
    b"\n\n\n",
]


@pytest.mark.parametrize("content", HOSTILE)
@pytest.mark.parametrize("command", ["verify-audit", "verify-provenance"])
def test_verify_commands_never_print_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, content: bytes
) -> None:
    data, log, public = server_run(tmp_path)
    target = log.path if command == "verify-audit" else log.path.with_name("provenance.json")
    target.write_bytes(content)
    log.head_path.write_bytes(content)
    for extra in ([], ["--public-key", public], ["--public-key", "AAAA"],
                  ["--public-key", str(target)]):
        code, out, err = run_cli(capsys, command, str(target), *extra)
        assert code in (1, 2), (extra, out, err)
        assert "Traceback" not in out + err and "internal error" not in err
        assert (out + err).count("\n") == 1, (extra, out, err)


@pytest.mark.slow
def test_console_module_never_prints_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text("[dataset]\nname = 'x'\nrecords = 'many'\n")
    shutil.copy(RUN, tmp_path / "run.toml")
    proc = subprocess.run(
        [sys.executable, "-m", "privacy.compliance.cli", "check", "--run-config",
         str(tmp_path / "run.toml"),
         "--manifest", str(bad)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "dataset.records='many'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unexpected_errors_are_one_line_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import privacy.compliance.cli as cli

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "evaluate", boom)
    code, _, err = run_cli(capsys, "check", "--run-config", RUN, "--manifest", MANIFEST)
    assert code == 3 and err.count("\n") == 1 and "disk on fire" in err


def test_unwritable_output_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "check", "--run-config", RUN, "--manifest", MANIFEST,
                           "--out", str(blocker / "report.md"))
    assert code == 2
    assert_one_line_error(err)
