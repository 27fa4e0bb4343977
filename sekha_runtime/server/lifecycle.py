"""Server plumbing shared by both services: construction, health, reflection, shutdown.

Each service's `build_server` registers its servicer on a server made here, so
both services answer `grpc.health.v1`, size their messages explicitly, map
errors the same way and shut down the same way: health flips to NOT_SERVING
first (load balancers stop sending), then in-flight RPCs get the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from sekha_runtime.server.auth import ApiKeyAuth, auth_layers
from sekha_runtime.server.errors import ErrorGuard, GuardedRegistry, HandlerLayer
from sekha_runtime.server.security import AuthConfig, ServerSettings
from sekha_runtime.server.tls import server_credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    """How a service's gRPC server listens and behaves."""

    host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int = 256
    reflection: bool = False
    grace_period_s: float = 10.0
    # Wrap every handler at registration, outermost first, around the error guard: telemetry, then
    # API-key auth (`options_from_config`). Layers, not interceptors: grpc.aio runs an interceptor
    # as extra coroutines on every call (docs/ARCHITECTURE.md §2).
    layers: Sequence[HandlerLayer] = field(default_factory=tuple)
    # Real interceptors (tests inject some); they run before any layer.
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=tuple)
    server_credentials: grpc.ServerCredentials | None = None
    reuse_port: bool = False
    # Runs on every decoded request of the service before its handler (see ErrorGuard).
    request_check: Callable[[Any], None] | None = None

    @property
    def auth(self) -> ApiKeyAuth | None:
        """The API-key layer, when auth is on: a config reload swaps its keys."""
        return next((layer for layer in self.layers if isinstance(layer, ApiKeyAuth)), None)


@dataclass
class ServingServer:
    """A started server with its health servicer and the port it bound."""

    server: grpc.aio.Server
    health: HealthServicer
    port: int
    service_names: tuple[str, ...]
    errors: ErrorGuard
    grace_period_s: float
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # What health says, for doors other than gRPC (the router's HTTP /readyz).
    accepting: bool = False

    async def set_serving(self, serving: bool) -> None:
        self.accepting = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace_period_s: float | None = None) -> None:
        """NOT_SERVING first, then let in-flight RPCs finish within the grace period, then close deps.

        While in-flight RPCs drain, the server still listens: health checks are answered with
        NOT_SERVING (a load balancer polling them sees a draining replica, not a dead one) and new
        RPCs are refused with UNAVAILABLE. Once they are done, or the grace period is over, the
        server stops and cancels what is left.
        """
        await self.set_serving(False)
        grace = self.grace_period_s if grace_period_s is None else grace_period_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.errors.begin_drain()
        await self.errors.wait_drained(grace)
        await self.server.stop(max(deadline - loop.time(), 0.0))
        for close in reversed(self.on_stop):
            try:
                await close()
            except Exception as exc:
                log.warning("error while closing a dependency: %s", type(exc).__name__)


def options_from_config(
    server: ServerSettings,
    auth: AuthConfig,
    *,
    telemetry: Sequence[HandlerLayer] = (),
    extra: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    request_check: Callable[[Any], None] | None = None,
) -> ServerOptions:
    """ServerOptions from a service's `server` and `auth` config sections (both services share them).

    Layer order matters: telemetry outermost, so it sees every RPC with its final status, the
    ones refused by auth or the concurrency limit included.
    """
    return ServerOptions(
        host=server.host,
        port=server.port,
        max_message_bytes=server.max_message_bytes,
        max_concurrent_rpcs=server.max_concurrent_rpcs,
        reflection=server.reflection,
        grace_period_s=server.grace_period_s,
        reuse_port=server.reuse_port,
        layers=(*telemetry, *auth_layers(auth)),
        extra_interceptors=tuple(extra),
        server_credentials=credentials or server_credentials(server.tls),
        request_check=request_check,
    )


async def start_server(
    options: ServerOptions,
    domain: str,
    register: Callable[[GuardedRegistry], None],
    service_names: Sequence[str],
) -> ServingServer:
    """Create, register, bind and start a server; health says SERVING once it listens.

    `register` adds the service's handlers (a generated `add_*Servicer_to_server`); each comes out
    wrapped by `options.layers` around the error guard.
    """
    errors = ErrorGuard(
        domain, max_concurrent_rpcs=options.max_concurrent_rpcs, request_check=options.request_check
    )
    server = grpc.aio.server(
        interceptors=list(options.extra_interceptors),
        options=[
            ("grpc.max_send_message_length", options.max_message_bytes),
            ("grpc.max_receive_message_length", options.max_message_bytes),
            # Off unless asked for: a second process on the same port must fail, not share it.
            ("grpc.so_reuseport", 1 if options.reuse_port else 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    registry = GuardedRegistry(server, errors, options.layers)
    register(registry)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, registry)
    if options.reflection:
        names = (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), registry)
    address = f"{options.host}:{options.port}"
    if options.server_credentials is not None:
        port = server.add_secure_port(address, options.server_credentials)
    else:
        port = server.add_insecure_port(address)
    await server.start()
    serving = ServingServer(
        server=server,
        health=health,
        port=port,
        service_names=tuple(service_names),
        errors=errors,
        grace_period_s=options.grace_period_s,
    )
    await serving.set_serving(True)
    return serving


async def serve_until_signalled(serving: ServingServer, name: str) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully (the process exits within grace + ~1 s)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(sig, stop.set)
    log.info("%s serving on port %d", name, serving.port)
    waiter = asyncio.ensure_future(serving.server.wait_for_termination())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        log.info("%s stopping: NOT_SERVING, grace %.1fs", name, serving.grace_period_s)
        await serving.stop()
    waiter.cancel()
    stopper.cancel()
