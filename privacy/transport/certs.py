"""TLS certificates for the SuperLink and authentication keys for SuperNodes.

Creates, with `cryptography` only:
  * a private CA (`ca.crt`, `ca.key`),
  * a SuperLink server certificate signed by it (`server.pem`, `server.key`) whose SANs
    default to 127.0.0.1 and localhost — pass these to `flower-superlink --ssl-ca-certfile
    --ssl-certfile --ssl-keyfile`, and `ca.crt` to `flower-supernode --root-certificates`;
  * one EC P-384 key pair per SuperNode in OpenSSH format (`supernode-<i>.key`/`.pub`):
    flwr 1.41 loads `--auth-supernode-private-key` with `load_ssh_private_key` (must be EC)
    and `flwr supernode register <pub>` with `load_ssh_public_key` (must be a NIST EC curve).
Every file is written atomically; private keys get mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from privacy.files import atomic_write

DEFAULT_SANS: tuple[str, ...] = ("127.0.0.1", "localhost")
CURVE = ec.SECP384R1
MAX_NODES = 10_000
MAX_DAYS = 3650


class CertError(Exception):
    """Bad input or an unusable output location; the message says what to change."""


@dataclass(frozen=True)
class CertFiles:
    """Paths of everything `write_certificates` produced."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_private_keys: tuple[Path, ...]
    node_public_keys: tuple[Path, ...]


def parse_san(value: str) -> x509.GeneralName:
    """An IP address becomes an IPAddress SAN, a host name a DNSName SAN."""
    text = value.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    ok = (
        text
        and len(text) <= 253
        and all(
            0 < len(lab) <= 63
            and all(c.isascii() and (c.isalnum() or c == "-") for c in lab)
            and not lab.startswith("-")
            and not lab.endswith("-")
            for lab in labels
        )
    )
    if not ok:
        raise CertError(f"--san {value!r} is neither an IP address nor a DNS name; fix it")
    return x509.DNSName(text.lower())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedguard"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    if not 1 <= days <= MAX_DAYS:
        raise CertError(f"--days {days}: must be between 1 and {MAX_DAYS}")
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def create_ca(
    days: int = 365, common_name: str = "fedguard federation CA"
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Self-signed CA that may sign only end-entity certificates (path length 0)."""
    key = ec.generate_private_key(CURVE())
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    """Signature-only key usage; a CA key may also sign certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def create_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: Sequence[str] = DEFAULT_SANS,
    days: int = 365,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """SuperLink TLS certificate for `sans`, signed by the CA, valid for server auth only."""
    if not sans:
        raise CertError("at least one --san is needed (e.g. 127.0.0.1 or the SuperLink host name)")
    names = [parse_san(s) for s in sans]
    key = ec.generate_private_key(CURVE())
    start, end = _validity(days)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(str(sans[0])))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(end, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def create_node_key() -> tuple[bytes, bytes]:
    """SuperNode auth key pair: (OpenSSH private key, OpenSSH public key line)."""
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_certificates(
    out_dir: Path,
    nodes: int = 2,
    sans: Sequence[str] = DEFAULT_SANS,
    days: int = 365,
    overwrite: bool = False,
) -> CertFiles:
    """Create CA, SuperLink certificate and `nodes` SuperNode key pairs under `out_dir`."""
    if not 0 <= nodes <= MAX_NODES:
        raise CertError(f"--nodes {nodes}: must be between 0 and {MAX_NODES}")
    for s in sans:
        parse_san(s)
    _validity(days)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CertError(f"--out {out} is a file; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(f"--out {out}: cannot create directory ({exc.strerror})") from None
    files = CertFiles(
        ca_cert=out / "ca.crt",
        ca_key=out / "ca.key",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        node_private_keys=tuple(out / f"supernode-{i}.key" for i in range(1, nodes + 1)),
        node_public_keys=tuple(out / f"supernode-{i}.pub" for i in range(1, nodes + 1)),
    )
    every = [files.ca_cert, files.ca_key, files.server_cert, files.server_key]
    every += [*files.node_private_keys, *files.node_public_keys]
    existing = [p.name for p in every if p.exists()]
    if existing and not overwrite:
        raise CertError(
            f"--out {out} already holds {', '.join(existing[:3])}; use --force or another directory"
        )
    ca_key, ca_cert = create_ca(days)
    server_key, server_cert = create_server_cert(ca_key, ca_cert, sans, days)
    pem = serialization.Encoding.PEM
    try:
        atomic_write(files.ca_key, _key_pem(ca_key), 0o600)
        atomic_write(files.ca_cert, ca_cert.public_bytes(pem), 0o644)
        atomic_write(files.server_key, _key_pem(server_key), 0o600)
        atomic_write(files.server_cert, server_cert.public_bytes(pem), 0o644)
        for priv_path, pub_path in zip(
            files.node_private_keys, files.node_public_keys, strict=True
        ):
            private, public = create_node_key()
            atomic_write(priv_path, private, 0o600)
            atomic_write(pub_path, public, 0o644)
    except OSError as exc:
        raise CertError(f"--out {out}: cannot write ({exc.strerror}); check permissions") from None
    return files


def verify_server_certificate(ca_pem: bytes, cert_pem: bytes, host: str) -> None:
    """Check `cert_pem` chains to the CA and is valid for `host` (IP or DNS); CertError if not."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CertError(f"cannot parse certificate PEM ({exc}); regenerate it") from None
    subject = parse_san(host)
    assert isinstance(subject, x509.IPAddress | x509.DNSName)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(subject)
    try:
        verifier.verify(cert, [])
    except VerificationError as exc:
        raise CertError(f"server certificate does not verify for {host}: {exc}") from None
