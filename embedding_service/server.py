"""Builds the Embedding server from a config: the one place where its parts are wired.

`build_server(config, deps)` is used by `__main__` and by the tests; tests
inject a vector source (or a router channel) through `EmbeddingDeps`.
`router_vectors` is also what a config reload (`embedding_service.reload`) builds anew
when the `router` section changed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from embedding_service.config import EmbeddingConfig
from embedding_service.events import EVENTS
from embedding_service.observability import ObservedEmbeddingService
from embedding_service.reload import ConfigReloader
from embedding_service.router_vectors import RouterVectorSource
from embedding_service.rpc import convert
from embedding_service.rpc.servicer import EmbeddingServicer
from embedding_service.service import EmbeddingStoreService
from embedding_service.vectors import VectorSource
from sekha.client import ConnectionConfig, RouterClient
from sekha.embedding.v1 import embedding_service_pb2 as pb
from sekha.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from sekha.tracing import client_interceptors
from sekha_runtime.server.auth import refuse_if_open
from sekha_runtime.server.lifecycle import ServingServer, options_from_config, start_server
from sekha_runtime.server.tls import client_connection
from sekha_runtime.server.tracing import ServerTelemetry
from sekha_runtime.telemetry import MetricsEndpoint, Telemetry

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name

log = logging.getLogger(__name__)


@dataclass
class EmbeddingDeps:
    """What tests (and embedders of the service) may replace."""

    vectors: VectorSource | None = None  # None: the Router service at config.router.target
    router_connection: ConnectionConfig | None = None  # overrides target/TLS/key of config.router
    extra_interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
    server_credentials: grpc.ServerCredentials | None = None
    # Traces and metrics (`sekha_runtime.telemetry.setup_telemetry`); None: none at all. The caller owns it.
    telemetry: Telemetry | None = None


@dataclass
class EmbeddingApp:
    serving: ServingServer
    service: EmbeddingStoreService
    reloader: ConfigReloader | None = None  # set by build_server; `await app.reloader.reload(path)`
    metrics_port: int | None = None  # the bound /metrics port when one is served

    @property
    def port(self) -> int:
        return self.serving.port

    async def stop(self, grace_period_s: float | None = None) -> None:
        await self.serving.stop(grace_period_s)


def router_connection(config: EmbeddingConfig) -> ConnectionConfig:
    key = config.router.api_key
    connection = ConnectionConfig(
        target=config.router.target,
        api_key=key.get_secret_value() if key is not None else None,
        default_timeout_s=config.router.timeout_s,
        max_message_bytes=config.server.max_message_bytes,
    )
    return client_connection(connection, config.router.tls)


@dataclass(frozen=True)
class RouterVectors:
    """The vector source `config.router` describes, and how to close its channel (None: not ours)."""

    source: VectorSource
    close: Callable[[], Awaitable[None]] | None = None


def _telemetry(deps: EmbeddingDeps) -> Telemetry | None:
    return deps.telemetry if deps.telemetry is not None and deps.telemetry.enabled else None


def router_vectors(config: EmbeddingConfig, deps: EmbeddingDeps) -> RouterVectors:
    """A new channel to the router (unless deps inject the source); ConfigError for unreadable TLS files."""
    if deps.vectors is not None:
        return RouterVectors(deps.vectors)
    telemetry = _telemetry(deps)
    # The channel to the router carries the trace on (client spans + traceparent metadata).
    interceptors = client_interceptors(telemetry.tracer) if telemetry is not None else ()
    router = RouterClient(deps.router_connection or router_connection(config), interceptors=interceptors)
    return RouterVectors(RouterVectorSource(router, timeout_s=config.router.timeout_s), router.close)


async def build_server(config: EmbeddingConfig, deps: EmbeddingDeps | None = None) -> EmbeddingApp:
    refuse_if_open(config.auth, [config.server.host], "embedding service")
    deps = deps or EmbeddingDeps()
    telemetry = _telemetry(deps)
    EVENTS.window_s = config.telemetry.event_log_window_s
    router = router_vectors(config, deps)
    service: EmbeddingStoreService
    if telemetry is not None:
        service = ObservedEmbeddingService.open_observed(config, router.source, telemetry)
    else:
        service = EmbeddingStoreService.open(config, router.source)
    await service.check_health()
    servicer = EmbeddingServicer(service)
    options = options_from_config(
        config.server,
        config.auth,
        telemetry=(ServerTelemetry(telemetry),) if telemetry is not None else (),
        extra=deps.extra_interceptors,
        credentials=deps.server_credentials,
        request_check=convert.check_request,
    )
    serving = await start_server(
        options,
        domain="embedding.sekha.dev",
        register=lambda server: pb_grpc.add_EmbeddingServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
    )
    auth = options.auth
    reloader = ConfigReloader(service, config, deps, router, auth=auth)

    async def flush_events() -> None:  # the last windows' suppressed counts, once all else stopped
        EVENTS.flush()

    # on_stop runs in reverse: the service (and its migrations) closes before the router channels.
    serving.on_stop.append(flush_events)
    serving.on_stop.append(reloader.close)
    serving.on_stop.append(service.aclose)
    await service.resume_migrations()
    app = EmbeddingApp(serving=serving, service=service, reloader=reloader)
    if telemetry is not None and config.server.metrics_port is not None:
        if telemetry.prometheus_registry is None:
            log.warning("server.metrics_port is set but the telemetry has no Prometheus registry")
        else:
            endpoint = MetricsEndpoint(telemetry.prometheus_registry)
            app.metrics_port = await endpoint.start(config.server.host, config.server.metrics_port)
            serving.on_stop.append(endpoint.stop)
    return app
