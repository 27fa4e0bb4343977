"""Builds the Router server from a config: the one place where parts are wired.

`build_server(config, deps)` is used by `__main__` and by the tests alike;
tests pass `RouterDeps` to inject a clock, static model info or providers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc

from router_service.breaker import BreakerRegistry
from router_service.catalog import Catalog
from router_service.config import ProviderConfig, RouterConfig
from router_service.events import StateBackendHealth, log_breaker_transitions
from router_service.gateway import Gateway, Observer, RetryPolicy
from router_service.image_fetch import ImageFetcher, image_inliner_for
from router_service.model_registry import ModelInfoSource, Registry
from router_service.observability import RouterObserver, inject_trace_headers
from router_service.pricing import PriceTable
from router_service.probes import ProbeScheduler, RecheckBackoff
from router_service.providers.base import ProviderClient, ProviderSpec
from router_service.providers.factory import make_provider, provider_address
from router_service.providers.local import LocalEmbedder, LocalEmbeddingProvider
from router_service.reload import ConfigReloader
from router_service.routing import Router
from router_service.rpc import convert
from router_service.rpc.servicer import RouterServicer
from router_service.shared_breaker import SharedBreakerRegistry
from router_service.spend import SpendGuard
from router_service.state import StateStore, open_store
from router_service.tokens import TokenEstimator
from router_service.validation import Limits
from sekha.router.v1 import router_service_pb2 as pb
from sekha.router.v1 import router_service_pb2_grpc as pb_grpc
from sekha_runtime.events import EventLog
from sekha_runtime.server.auth import ApiKeyAuth, refuse_if_open
from sekha_runtime.server.lifecycle import ServingServer, options_from_config, start_server
from sekha_runtime.server.tracing import ServerTelemetry
from sekha_runtime.telemetry import MetricsEndpoint, Telemetry

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RouterService"].full_name

log = logging.getLogger(__name__)


@dataclass
class RouterDeps:
    """What tests (and embedders of the router) may replace."""

    clock: Callable[[], float] = time.monotonic
    model_info: ModelInfoSource | None = None  # None: LiteLLM's bundled model info
    providers: Mapping[str, ProviderClient] | None = None
    local_embedder: LocalEmbedder | None = None  # shared by `local` providers
    observer: Observer | None = None
    extra_interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
    server_credentials: grpc.ServerCredentials | None = None
    wall_clock: Callable[[], float] = time.time  # budgets' periods, rate limits, shared breakers
    state_store: StateStore | None = None  # used instead of opening config.state (not closed by us)
    image_fetcher: ImageFetcher | None = None  # used when limits.inline_image_urls is on
    # Traces and metrics (`sekha_runtime.telemetry.setup_telemetry`); None: none at all. The caller owns
    # it (shuts it down); the server adds spans and metrics, and serves /metrics on
    # server.metrics_port when the telemetry has a Prometheus registry.
    telemetry: Telemetry | None = None
    # Load the in-process embedding model before the server listens (`serve` does): the first
    # embedding would otherwise pay the load, seconds, with every caller queued behind it.
    preload_local_model: bool = False
    # Where operational events are logged (one per server, so its rate limits outlive a reload);
    # None: build_server makes one from telemetry.event_log_window_s.
    events: EventLog | None = None


@dataclass
class RouterApp:
    """A running router: the server plus the parts tests and admin code inspect."""

    serving: ServingServer
    gateway: Gateway
    registry: Registry
    breakers: BreakerRegistry | SharedBreakerRegistry
    probes: ProbeScheduler
    spend: SpendGuard
    store: StateStore
    reloader: ConfigReloader | None = None  # set by build_server; `await app.reloader.reload(path)`
    metrics_port: int | None = None  # the bound /metrics port when one is served
    http_port: int | None = None  # the bound OpenAI-compatible HTTP door's port when it is on
    state_health: StateBackendHealth | None = None  # the state store's health (status, metrics)

    @property
    def port(self) -> int:
        return self.serving.port

    async def stop(self, grace_period_s: float | None = None) -> None:
        await self.serving.stop(grace_period_s)


def provider_spec(provider: ProviderConfig) -> ProviderSpec:
    return ProviderSpec(
        id=provider.id,
        type=provider.type,
        base_url=provider.base_url,
        api_key=provider.api_key.get_secret_value() if provider.api_key is not None else None,
        timeout_s=provider.timeout_s,
        transport=provider.transport,
    )


def build_providers(
    config: RouterConfig,
    local_embedder: LocalEmbedder | None = None,
    headers_hook: Callable[[dict[str, str]], None] | None = None,
) -> dict[str, ProviderClient]:
    """`headers_hook` adds headers to every provider HTTP request (the trace context)."""
    shared = [local_embedder]  # one model for every `local` provider, made on first use

    def local_embedder_factory() -> LocalEmbedder:
        embedder = shared[0]
        if embedder is None:
            embedder = shared[0] = LocalEmbedder()
        return embedder

    return {
        p.id: make_provider(provider_spec(p), local_embedder_factory, headers_hook=headers_hook)
        for p in config.providers
    }


@dataclass
class RouterCore:
    """Everything one configuration builds except the server and the state store.

    It is the unit a config reload swaps (`router_service.reload`): new requests go to the new
    core while in-flight ones finish on the old one, which is then closed.
    """

    config: RouterConfig
    registry: Registry
    prices: PriceTable
    breakers: BreakerRegistry | SharedBreakerRegistry
    spend: SpendGuard
    providers: dict[str, ProviderClient]
    gateway: Gateway
    probes: ProbeScheduler
    catalog: Catalog

    @property
    def local_embedder(self) -> LocalEmbedder | None:
        """The in-process embedding model shared by `local` providers (None without one)."""
        return next(
            (p.embedder for p in self.providers.values() if isinstance(p, LocalEmbeddingProvider)), None
        )

    async def close(self, keep_local_embedder: bool = False, keep_providers: bool = False) -> None:
        """Stop probes, close provider clients, drain the ledger, stop shared breakers.

        `keep_local_embedder` leaves the in-process model loaded and `keep_providers` leaves every
        provider client open, for a core that replaces this one and shares them.
        """
        closers: list[Callable[[], Awaitable[None]]] = [self.probes.stop]
        if not keep_providers:
            closers += [
                p.aclose
                for p in self.providers.values()
                if not (keep_local_embedder and isinstance(p, LocalEmbeddingProvider))
            ]
        closers.append(self.spend.drain)
        if isinstance(self.breakers, SharedBreakerRegistry):
            closers.append(self.breakers.stop)
        for close in closers:
            try:
                await close()
            except Exception as exc:
                log.warning("error while closing a router component: %s", type(exc).__name__)


async def build_core(
    config: RouterConfig, deps: RouterDeps, store: StateStore, state_health: StateBackendHealth | None = None
) -> RouterCore:
    """Build (but do not start) the parts `config` describes, on an open state store."""
    events = deps.events or EventLog("router_service.events", config.telemetry.event_log_window_s)
    registry = Registry.from_config(config, deps.model_info)
    prices = PriceTable(registry)
    estimator = TokenEstimator()
    # Everything a request needs is loaded before health says SERVING (and before a reload swaps
    # this core in): a load on the first request would stall the event loop with every caller,
    # health checks included, behind it.
    await asyncio.to_thread(estimator.preload)
    breakers: BreakerRegistry | SharedBreakerRegistry
    if store.shared and config.state.shared_breakers:
        breakers = SharedBreakerRegistry.from_config(config, store, wall_clock=deps.wall_clock)
        await breakers.start()
    else:
        breakers = BreakerRegistry(
            {p.id: p.circuit_breaker or config.circuit_breaker for p in config.providers}, clock=deps.clock
        )
    log_breaker_transitions(breakers, events)
    spend = SpendGuard(
        store,
        config.budgets,
        config.rate_limits,
        reservation_ttl_s=config.state.reservation_ttl_s,
        wall_clock=deps.wall_clock,
    )
    router = Router(registry, prices, breakers)
    if isinstance(deps.observer, RouterObserver):
        deps.observer.bind(config, breakers)
    tracing = deps.telemetry is not None and deps.telemetry.tracing_enabled
    providers = (
        dict(deps.providers)
        if deps.providers is not None
        else build_providers(config, deps.local_embedder, inject_trace_headers if tracing else None)
    )
    timeouts = {p.id: p.timeout_s for p in config.providers}
    limits = Limits(
        max_messages=config.limits.max_messages,
        max_message_chars=config.limits.max_message_chars,
        max_images=config.limits.max_images,
        max_image_bytes=config.limits.max_image_bytes,
        max_output_tokens=config.limits.max_output_tokens,
        max_embed_inputs=config.limits.max_embed_inputs,
        max_input_chars=config.limits.max_input_chars,
        max_tools=config.limits.max_tools,
        max_tool_schema_chars=config.limits.max_tool_schema_chars,
        max_tool_description_chars=config.limits.max_tool_description_chars,
        max_response_schema_chars=config.limits.max_response_schema_chars,
        max_tool_call_argument_chars=config.limits.max_tool_call_argument_chars,
        max_stop_sequences=config.limits.max_stop_sequences,
        max_stop_sequence_chars=config.limits.max_stop_sequence_chars,
        max_metadata_value_chars=config.limits.max_metadata_value_chars,
        max_user_chars=config.limits.max_user_chars,
    )
    gateway = Gateway(
        registry=registry,
        prices=prices,
        estimator=estimator,
        router=router,
        breakers=breakers,
        providers=providers,
        provider_timeouts=timeouts,
        limits=limits,
        retry=RetryPolicy(
            max_attempts=config.retry.max_attempts,
            backoff_base_s=config.retry.backoff_base_s,
            backoff_max_s=config.retry.backoff_max_s,
        ),
        default_max_tokens=config.limits.default_max_tokens,
        observer=deps.observer,
        clock=deps.clock,
        spend=spend,
        image_inliner=image_inliner_for(
            config.limits.inline_image_urls,
            config.limits.max_image_bytes,
            config.limits.image_fetch_timeout_s,
            deps.image_fetcher,
        ),
        events=events,
        default_deadline_s=config.retry.default_deadline_s,
        provider_addresses={p.id: provider_address(provider_spec(p)) for p in config.providers},
    )
    recheck = {
        p.id: RecheckBackoff(
            config.breaker_config_for(p.id).auth_recheck_initial_s,
            config.breaker_config_for(p.id).auth_recheck_max_s,
        )
        for p in config.providers
    }
    probes = ProbeScheduler(
        providers,
        {p.id: p.health_probe_interval_s for p in config.providers},
        timeouts,
        breakers,
        clock=deps.clock,
        registry=registry,
        recheck=recheck,
        events=events,
    )
    registry.add_listener(probes.provider_changed)
    return RouterCore(
        config=config,
        registry=registry,
        prices=prices,
        breakers=breakers,
        spend=spend,
        providers=providers,
        gateway=gateway,
        probes=probes,
        catalog=Catalog(registry, prices, breakers, probes, state_health),
    )


async def build_server(config: RouterConfig, deps: RouterDeps | None = None) -> RouterApp:
    refuse_if_open(config.auth, config.listen_hosts(), "router")
    deps = deps or RouterDeps()
    telemetry = deps.telemetry if deps.telemetry is not None and deps.telemetry.enabled else None
    telemetry_layers: tuple[ServerTelemetry, ...] = ()
    if telemetry is not None:
        # One observer for the server's life: a config reload rebinds it to the new core.
        observer = deps.observer or RouterObserver(telemetry)
        deps = dataclasses.replace(deps, observer=observer)
        on_finish = observer.rpc_finished if isinstance(observer, RouterObserver) else None
        telemetry_layers = (ServerTelemetry(telemetry, on_finish=on_finish),)
    if deps.events is None:
        deps = dataclasses.replace(
            deps, events=EventLog("router_service.events", config.telemetry.event_log_window_s)
        )
    store = deps.state_store or await open_store(config.state, deps.wall_clock)
    state_health = StateBackendHealth(store, config.state.backend, deps.wall_clock)
    if isinstance(deps.observer, RouterObserver):
        deps.observer.watch_state(state_health)
    core = await build_core(config, deps, store, state_health)
    if deps.preload_local_model:
        await _preload_local_model(core)
    servicer = RouterServicer(core.gateway, core.catalog)
    options = options_from_config(
        config.server,
        config.auth,
        telemetry=telemetry_layers,
        extra=deps.extra_interceptors,
        credentials=deps.server_credentials,
        request_check=convert.check_request,
    )
    serving = await start_server(
        options,
        domain="router.sekha.dev",
        register=lambda server: pb_grpc.add_RouterServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
    )
    app = RouterApp(
        serving=serving,
        gateway=core.gateway,
        registry=core.registry,
        breakers=core.breakers,
        probes=core.probes,
        spend=core.spend,
        store=store,
        state_health=state_health,
    )
    auth = options.auth
    app.reloader = ConfigReloader(app, servicer, core, deps, auth=auth)
    if config.server.http_port is not None:
        app.http_port = await _serve_http(config, servicer, auth, telemetry, serving)
    if telemetry is not None and config.server.metrics_port is not None:
        app.metrics_port = await _serve_metrics(
            telemetry, config.server.host, config.server.metrics_port, serving
        )
    # on_stop runs in reverse: the current core (probes, providers, ledger, breakers) closes before
    # the state store, which takes the breakers' and the ledger's final writes.
    if deps.state_store is None:
        serving.on_stop.append(store.close)
    events = deps.events
    assert events is not None  # set above

    async def flush_events() -> None:  # the last windows' suppressed counts, once all else stopped
        events.flush()

    serving.on_stop.insert(0, flush_events)
    serving.on_stop.append(app.reloader.close)
    core.probes.start()
    return app


async def _serve_http(
    config: RouterConfig,
    servicer: RouterServicer,
    auth: ApiKeyAuth | None,
    telemetry: Telemetry | None,
    serving: ServingServer,
) -> int:
    """Start the OpenAI-compatible door on the servicer's gateway and the gRPC server's keys."""
    # Imported here: aiohttp.web and the door's request schemas cost about 50 ms of start-up,
    # paid only by a router that opens the door (server.http_port).
    from router_service.http.app import HttpDoor

    door = HttpDoor(
        servicer,
        keys=lambda: auth.keys if auth is not None else None,
        serving=lambda: serving.accepting,
        telemetry=telemetry,
        max_body_bytes=config.server.max_message_bytes,
    )
    port = await door.start(
        config.server.http_host or config.server.host, config.server.http_port or 0, config.server.reuse_port
    )
    # Stopped after the gRPC server's grace period, so in-flight HTTP requests drain alongside.
    serving.on_stop.append(door.stop)
    log.info("router HTTP door (OpenAI-compatible) on port %d", port)
    return port


async def _serve_metrics(telemetry: Telemetry, host: str, port: int, serving: ServingServer) -> int | None:
    if telemetry.prometheus_registry is None:
        log.warning("server.metrics_port is set but the telemetry has no Prometheus registry")
        return None
    endpoint = MetricsEndpoint(telemetry.prometheus_registry)
    bound = await endpoint.start(host, port)
    serving.on_stop.append(endpoint.stop)
    return bound


async def _preload_local_model(core: RouterCore) -> None:
    """A model that fails to load is logged and left to its provider's probe and breaker."""
    embedder = core.local_embedder
    if embedder is None:
        return
    started = time.perf_counter()
    try:
        await embedder.ensure_loaded()
    except Exception as exc:
        log.error("local embedding model failed to load (%s); serving without it", type(exc).__name__)
        return
    log.info("local embedding model loaded in %.1f s", time.perf_counter() - started)
