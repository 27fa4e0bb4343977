"""API keys: how a key is generated and how it is hashed for the servers' configuration.

The servers never store a key, only its hash: ``sha256:<hex digest of the UTF-8 key>``. A
random key has 256 bits of entropy, so a plain (unsalted) SHA-256 is enough to make the stored
hash useless to someone who reads the configuration, and it keeps the server-side check a
single constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import Any

__all__ = [
    "HASH_PREFIX",
    "KEY_PREFIX",
    "check_hash_shape",
    "generate_api_key",
    "hash_api_key",
    "presented_key",
    "verify_api_key",
]

HASH_PREFIX = "sha256:"
KEY_PREFIX = "sk-sekha-"
_HASH_SHAPE = re.compile(r"^sha256:[0-9a-f]{64}$")


def hash_api_key(key: str) -> str:
    """The hash to put in a server's configuration for `key`: ``sha256:<hex>``."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def verify_api_key(key: str, expected_hash: str) -> bool:
    """True when `key` hashes to `expected_hash` (compared in constant time)."""
    return hmac.compare_digest(hash_api_key(key), expected_hash.strip())


def generate_api_key() -> str:
    """A new random key: ``sk-sekha-`` followed by 32 random bytes, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_hash_shape(value: str) -> str:
    """`value` if it is ``sha256:<64 lower-case hex>``; ValueError otherwise.

    The message never echoes the value: a pasted raw key would land here.
    """
    if not _HASH_SHAPE.match(value):
        raise ValueError("must be sha256:<64 lower-case hex digits> (make one with `sekha keys hash`)")
    return value


def presented_key(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The key a caller presents in `authorization: Bearer ...` or `x-api-key`, if any.

    Works for gRPC metadata and for HTTP headers (names compared case-insensitively).
    """
    for name, value in metadata or ():
        if isinstance(value, bytes):
            continue
        lowered = name.lower()
        if lowered == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif lowered == "x-api-key" and value.strip():
            return value.strip()
    return None
