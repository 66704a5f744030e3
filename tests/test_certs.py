"""Certificates: the SuperLink cert chains to the CA with the right SANs; Flower loads node keys."""

from __future__ import annotations

import argparse
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from privacy.transport.certs import (
    CertError,
    parse_san,
    verify_server_certificate,
    write_certificates,
)


def make_certs_main(argv: list[str]) -> int:
    """`fedguard-server certs ...` as a function returning its exit code."""
    from server.deploy.cli import main

    try:
        return main(["certs", *argv])
    except SystemExit as exit_:
        return int(exit_.code or 0)



def _sans(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.IPAddress)} | set(
        ext.get_values_for_type(x509.DNSName)
    )


def test_server_cert_verifies_against_ca_for_default_sans(tmp_path: Path) -> None:
    files = write_certificates(tmp_path / "c", nodes=1)
    ca, cert = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    assert _sans(files.server_cert) == {"127.0.0.1", "localhost"}
    verify_server_certificate(ca, cert, "127.0.0.1")
    verify_server_certificate(ca, cert, "localhost")
    with pytest.raises(CertError, match="does not verify"):
        verify_server_certificate(ca, cert, "superlink.example.org")


def test_custom_sans_and_foreign_ca_rejected(tmp_path: Path) -> None:
    a = write_certificates(tmp_path / "a", nodes=0, sans=["superlink.example.org", "10.0.0.7"])
    b = write_certificates(tmp_path / "b", nodes=0)
    assert _sans(a.server_cert) == {"superlink.example.org", "10.0.0.7"}
    verify_server_certificate(a.ca_cert.read_bytes(), a.server_cert.read_bytes(), "10.0.0.7")
    with pytest.raises(CertError):
        verify_server_certificate(b.ca_cert.read_bytes(), a.server_cert.read_bytes(), "10.0.0.7")


def test_private_keys_are_0600_and_node_keys_load_in_flower(tmp_path: Path) -> None:
    """Use flwr 1.41's own loaders: SuperNode private key (OpenSSH, EC) and register's
    public-key check (OpenSSH, NIST curve); they call sys.exit on a key they reject."""
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    files = write_certificates(tmp_path, nodes=2)
    for key in (files.ca_key, files.server_key, *files.node_private_keys):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(files.node_private_keys) == 2
    publics = set()
    for priv, pub in zip(files.node_private_keys, files.node_public_keys, strict=True):
        args = argparse.Namespace(
            auth_supernode_private_key=str(priv), auth_supernode_public_key=None
        )
        private, public = _try_setup_client_authentication(args)
        assert private.curve.name == "secp384r1"
        registered = serialization.load_pem_public_key(try_load_public_key(pub))
        assert registered.public_numbers() == public.public_numbers()  # type: ignore[union-attr]
        publics.add(pub.read_bytes())
    assert len(publics) == 2


def test_existing_files_are_not_overwritten_without_force(tmp_path: Path) -> None:
    first = write_certificates(tmp_path, nodes=1)
    before = first.ca_cert.read_bytes()
    with pytest.raises(CertError, match="--force"):
        write_certificates(tmp_path, nodes=1)
    assert first.ca_cert.read_bytes() == before
    again = write_certificates(tmp_path, nodes=1, overwrite=True)
    assert again.ca_cert.read_bytes() != before


@pytest.mark.parametrize("bad", ["bad host!", "", "-x.example", "a" * 64 + ".org"])
def test_bad_san_is_a_one_line_error(bad: str) -> None:
    with pytest.raises(CertError, match="--san"):
        parse_san(bad)


def test_cli_writes_files_and_reports_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    assert make_certs_main(["--out", str(out), "--nodes", "2", "--san", "localhost"]) == 0
    assert (out / "supernode-2.pub").is_file() and (out / "server.pem").is_file()
    assert _sans(out / "server.pem") == {"localhost"}
    assert make_certs_main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedguard-server: error:") and "\n" not in err
    assert make_certs_main(["--out", str(tmp_path / "x"), "--nodes", "-1"]) == 2
    assert make_certs_main(["--out", str(tmp_path / "y"), "--days", "0"]) == 2
    (tmp_path / "file").write_text("x")
    assert make_certs_main(["--out", str(tmp_path / "file")]) == 2


def _handshake(files: Any, server_hostname: str) -> str:
    """Complete a real TLS handshake in memory (no sockets); return the negotiated version."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return str(client.version())
    raise AssertionError("handshake did not finish")


def test_real_tls_handshake_succeeds_for_sans_and_fails_otherwise(tmp_path: Path) -> None:
    files = write_certificates(tmp_path, nodes=0)
    assert _handshake(files, "localhost").startswith("TLS")
    assert _handshake(files, "127.0.0.1").startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(files, "other.example.org")
