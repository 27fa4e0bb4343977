"""API keys: how a key is generated and how it is hashed for the servers' configuration.

The servers never store a key, only its hash: ``sha256:<hex digest of the UTF-8 key>``. A
random key has 256 bits of entropy, so a plain (unsalted) SHA-256 is enough to make the stored
hash useless to someone who reads the configuration, and it keeps the server-side check a
single constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["HASH_PREFIX", "KEY_PREFIX", "generate_api_key", "hash_api_key", "verify_api_key"]

HASH_PREFIX = "sha256:"
KEY_PREFIX = "sk-sekha-"


def hash_api_key(key: str) -> str:
    """The hash to put in a server's configuration for `key`: ``sha256:<hex>``."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def verify_api_key(key: str, expected_hash: str) -> bool:
    """True when `key` hashes to `expected_hash` (compared in constant time)."""
    return hmac.compare_digest(hash_api_key(key), expected_hash.strip())


def generate_api_key() -> str:
    """A new random key: ``sk-sekha-`` followed by 32 random bytes, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)
