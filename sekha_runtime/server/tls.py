"""TLS and mutual TLS for both servers and for the channels between services.

`server_credentials` turns a `server.tls` section into gRPC server credentials; with a
client CA the server requires and verifies a client certificate (mutual TLS).
`client_connection` applies a `router.tls` section to a client `ConnectionConfig`.
Unreadable files are reported as a ConfigError naming the setting, at start-up.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc

from sekha.client import ConnectionConfig
from sekha_runtime.configloader import ConfigError
from sekha_runtime.server.security import ClientTlsConfig, ServerTlsConfig

__all__ = ["client_connection", "read_pem", "server_credentials"]


def read_pem(path: Path, setting: str) -> bytes:
    """The bytes of a PEM file, or a ConfigError naming `setting` (never the file's content)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{setting}: cannot read {path} ({type(exc).__name__})"]) from None
    if b"-----BEGIN" not in data:
        raise ConfigError([f"{setting}: {path} is not a PEM file"])
    return data


def server_credentials(
    tls: ServerTlsConfig | None, section: str = "server.tls"
) -> grpc.ServerCredentials | None:
    """gRPC server credentials for `tls` (None when TLS is off)."""
    if tls is None:
        return None
    chain = read_pem(tls.cert_file, f"{section}.cert_file")
    key = read_pem(tls.key_file, f"{section}.key_file")
    client_ca = read_pem(tls.client_ca_file, f"{section}.client_ca_file") if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def client_connection(
    connection: ConnectionConfig, tls: ClientTlsConfig | None, section: str = "router.tls"
) -> ConnectionConfig:
    """`connection` with TLS (and a client certificate for mTLS) as `tls` says; unchanged when None."""
    if tls is None:
        return connection
    # Read now so a missing file fails at start-up, not on the first call.
    for path, name in ((tls.ca_file, "ca_file"), (tls.cert_file, "cert_file"), (tls.key_file, "key_file")):
        if path is not None:
            read_pem(path, f"{section}.{name}")
    return dataclasses.replace(
        connection,
        tls=True,
        root_certificates=tls.ca_file,
        client_certificate=tls.cert_file,
        client_key=tls.key_file,
    )
