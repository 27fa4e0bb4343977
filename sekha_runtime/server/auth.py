"""API key authentication for both services: a handler layer and the caller's identity.

A caller presents its key as `authorization: Bearer <key>` or `x-api-key: <key>`. `ApiKeyAuth`
hashes it and compares the hash with every configured hash in constant time
(`hmac.compare_digest`, no early exit), so neither timing nor the number of keys tells an
attacker anything. A missing or wrong key is answered UNAUTHENTICATED before the request is
even deserialized: no handler, no concurrency slot, no parsing of an unknown caller's bytes.

It wraps each handler when the service registers it (`sekha_runtime.server.errors.GuardedRegistry`),
not as a server interceptor: grpc.aio runs an interceptor as extra coroutines on every call. The
wrapped handler takes the request's raw bytes and deserializes them only after the key matched.

Health checks need no key (load balancers and kubelets probe without one). Everything else,
server reflection included, does.

Handlers learn who called from `current_caller()` (a contextvar set for the RPC), so spend
accounting can charge the right key, and GetSpend can show a non-admin key only its own spend,
without any handler touching metadata.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from sekha.keys import hash_api_key, presented_key
from sekha_runtime.configloader import ConfigError
from sekha_runtime.server.errors import Behavior, rewrap
from sekha_runtime.server.security import AuthConfig, is_loopback, open_listener_problem

__all__ = [
    "ANONYMOUS",
    "ApiKeyAuth",
    "Caller",
    "auth_layers",
    "current_caller",
    "hash_api_key",
]

log = logging.getLogger(__name__)

UNAUTHENTICATED_MESSAGE = "missing or invalid API key"
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made the current RPC: the configured id of their key, or anonymous when auth is off."""

    key_id: str
    authenticated: bool
    admin: bool = False  # `auth.keys[].admin`: may read every caller's spend


ANONYMOUS = Caller(key_id="anonymous", authenticated=False)

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("sekha_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """The caller of the RPC being handled (ANONYMOUS outside an RPC or when auth is off)."""
    return _caller.get()


class KeyRing:
    """The configured key hashes; `identify` compares against all of them in constant time."""

    def __init__(self, keys: Sequence[tuple[str, str]], admins: Sequence[str] = ()) -> None:
        self._keys = [(key_id, key_hash.encode("ascii")) for key_id, key_hash in keys]
        self.admins = frozenset(admins)

    @classmethod
    def from_config(cls, config: AuthConfig) -> KeyRing:
        return cls([(key.id, key.hash) for key in config.keys], [key.id for key in config.keys if key.admin])

    def identify(self, key: str | None) -> str | None:
        """The id of the key, or None when it matches no configured hash."""
        # A missing key is hashed too, so "no key" and "wrong key" take the same path.
        presented = hash_api_key(key or "").encode("ascii")
        found: str | None = None
        for key_id, expected in self._keys:
            if hmac.compare_digest(presented, expected) and key is not None:
                found = key_id
        return found


class ApiKeyAuth:
    """Refuses RPCs without a configured key; records the caller for the handler."""

    def __init__(self, keys: KeyRing, open_prefixes: Sequence[str] = _OPEN_PREFIXES) -> None:
        self._open_prefixes = tuple(open_prefixes)
        self.rejected = 0
        self.keys = keys

    @property
    def keys(self) -> KeyRing:
        return self._keys

    @keys.setter
    def keys(self, keys: KeyRing) -> None:
        """Replaced as a whole on a config reload (key rotation, a key made admin or not)."""
        self._keys = keys
        # key id -> its Caller, made once per key rather than per call.
        self._callers: dict[str, Caller] = {}

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        """Set `current_caller()` for this RPC, or abort it with UNAUTHENTICATED."""
        key_id = self._keys.identify(presented_key(context.invocation_metadata()))
        if key_id is None:
            self.rejected += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
            return  # not reached: abort raises
        caller = self._callers.get(key_id)
        if caller is None:
            caller = Caller(key_id=key_id, authenticated=True, admin=key_id in self._keys.admins)
            self._callers[key_id] = caller
        # Awaited on the RPC's own task: the value holds for the rest of the call and dies with it.
        _caller.set(caller)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler`, run only for a known key with `current_caller()` set; health stays open.

        The wrapped handler gets the raw bytes (no deserializer) and parses them after the check.
        """
        if method.startswith(self._open_prefixes):
            return handler
        deserialize = handler.request_deserializer or _as_is

        def around_coroutine(behavior: Behavior) -> Behavior:
            async def call(raw: Any, context: grpc.aio.ServicerContext) -> Any:
                await self._authenticate(context)
                return await behavior(deserialize(raw), context)

            return call

        def around_generator(behavior: Behavior) -> Behavior:
            async def call(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await self._authenticate(context)
                async for response in behavior(deserialize(raw), context):
                    yield response

            return call

        return rewrap(handler, around_coroutine, around_generator, request_deserializer=None)


def _as_is(raw: Any) -> Any:
    return raw


def auth_layers(config: AuthConfig) -> list[ApiKeyAuth]:
    """The handler layers `config` asks for: one ApiKeyAuth, or none when auth is off."""
    if not config.enabled:
        return []
    return [ApiKeyAuth(KeyRing.from_config(config))]


def refuse_if_open(config: AuthConfig, hosts: Sequence[str], service: str) -> None:
    """Refuse (ConfigError) to serve without auth on an address other machines can reach, unless
    `auth.allow_unauthenticated_non_loopback` is set; then log a warning, as the choice deserves.

    The service configs refuse this already when they are validated; this is the same rule at
    start-up, for a config that reached the server another way.
    """
    problem = open_listener_problem(config, hosts)
    if problem is not None:
        raise ConfigError([f"auth.enabled: {problem}"], source=service)
    exposed = [host for host in hosts if not is_loopback(host)]
    if not config.enabled and exposed:
        log.warning(
            "%s listens on %s with auth disabled (auth.allow_unauthenticated_non_loopback): any client "
            "that reaches it may call it",
            service,
            exposed[0] or "every interface",
        )
