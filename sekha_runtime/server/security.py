"""Settings shared by both services' configs: the listener, API keys and TLS (pydantic only, no grpc).

API keys are never stored: a config lists `sha256:<hex>` hashes made by `sekha.keys.hash_api_key`
(`sekha keys hash` on the command line), each with an id that names the caller in logs and
spend accounting. Keys are long random strings, so a plain SHA-256 is enough; a slow password
hash would only slow every request down.

TLS paths are checked when the server or channel is built, not when the config is validated,
so `check-config` works on a machine that does not hold the certificates.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sekha.keys import HASH_PREFIX, check_hash_shape, hash_api_key
from sekha_runtime.configloader import ConfigPathError

__all__ = [
    "HASH_PREFIX",
    "ApiKeyConfig",
    "AuthConfig",
    "ClientTlsConfig",
    "ServerSettings",
    "ServerTlsConfig",
    "hash_api_key",
    "is_loopback",
    "open_listener_problem",
]

_KEY_ID_SHAPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKeyConfig(_Section):
    """One accepted key: who it belongs to and the hash of its value."""

    id: str = Field(description="names the caller in logs and spend accounting")
    hash: str = Field(description="hash_api_key(key), i.e. sha256:<hex>")
    admin: bool = Field(
        default=False, description="may read every caller's spend (GetSpend); other keys see only their own"
    )

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _KEY_ID_SHAPE.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")
        return value

    @field_validator("hash")
    @classmethod
    def _hash_shape(cls, value: str) -> str:
        return check_hash_shape(value)


class AuthConfig(_Section):
    """API key authentication of every RPC except health checks."""

    enabled: bool = False
    keys: list[ApiKeyConfig] = Field(default_factory=list)
    allow_unauthenticated_non_loopback: bool = Field(
        default=False,
        description="serve without auth on an address other machines can reach; only for a network "
        "that itself keeps callers out (a private container network whose ports are not published)",
    )

    @model_validator(mode="after")
    def _keys_when_enabled(self) -> AuthConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.enabled and not self.keys:
            problems.append((("keys",), "auth is enabled but no keys are configured: nobody could call"))
        seen: dict[str, int] = {}
        for index, key in enumerate(self.keys):
            if key.id in seen:
                where = ("keys", index, "id")
                problems.append((where, f"duplicate key id {key.id!r} (first at keys[{seen[key.id]}])"))
            else:
                seen[key.id] = index
        if problems:
            raise ConfigPathError(problems)
        return self


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a listener on `host` ('' and hostnames: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_listener_problem(auth: AuthConfig, hosts: Iterable[str]) -> str | None:
    """Why serving on `hosts` with this auth config is refused, or None when it is allowed.

    Auth off is allowed on loopback only, unless `auth.allow_unauthenticated_non_loopback` says
    that the network in front of the server keeps callers out.
    """
    if auth.enabled or auth.allow_unauthenticated_non_loopback:
        return None
    exposed = next((host for host in hosts if not is_loopback(host)), None)
    if exposed is None:
        return None
    shown = exposed or "every interface"
    return (
        f"auth is off but the server listens on {shown}, which other machines can reach: set "
        "auth.enabled: true with keys (`sekha keys hash`), or auth.allow_unauthenticated_non_loopback: "
        "true if the network itself keeps callers out"
    )


class ServerTlsConfig(_Section):
    """TLS for a gRPC server; mutual TLS when `client_ca_file` is set."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = Field(
        default=None, description="when set, clients must present a certificate signed by this CA"
    )


class ClientTlsConfig(_Section):
    """TLS for an outgoing channel; `cert_file` and `key_file` give a client certificate for mTLS."""

    ca_file: Path | None = Field(default=None, description="trusted roots; None = the system's")
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> ClientTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigPathError([(("cert_file",), "cert_file and key_file must be set together")])
        return self


class ServerSettings(_Section):
    """Where and how a service's gRPC server listens; each service sets its own default port."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    reflection: bool = False
    max_concurrent_rpcs: int = Field(default=256, ge=1)
    grace_period_s: float = Field(default=10.0, ge=0)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    reuse_port: bool = Field(
        default=False,
        description="SO_REUSEPORT: several processes serve one port and the kernel spreads connections "
        "(set for each worker by `sekha-router serve --workers N`)",
    )
    tls: ServerTlsConfig | None = Field(default=None, description="TLS, and mutual TLS with client_ca_file")
