"""Transport security keys: the federation's CA, the SuperLink certificate and node key pairs."""

from privacy.transport.certs import (
    CertError,
    CertFiles,
    create_ca,
    create_node_key,
    create_server_cert,
    verify_server_certificate,
    write_certificates,
)

__all__ = [
    "CertError",
    "CertFiles",
    "create_ca",
    "create_node_key",
    "create_server_cert",
    "verify_server_certificate",
    "write_certificates",
]
