"""Builds the Router server from a config: the one place where parts are wired.

`build_server(config, deps)` is used by `__main__` and by the tests alike;
tests pass `RouterDeps` to inject a clock, static model info or providers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from router_service.breaker import BreakerRegistry
from router_service.catalog import Catalog
from router_service.config import ProviderConfig, RouterConfig
from router_service.gateway import Gateway, Observer, RetryPolicy
from router_service.limits import Limits
from router_service.pricing import PriceTable, TokenEstimator
from router_service.probes import ProbeScheduler
from router_service.providers.base import ProviderClient, ProviderSpec
from router_service.providers.factory import make_provider
from router_service.registry import Registry
from router_service.routing import Router
from router_service.rpc.servicer import RouterServicer
from router_service.shared_breaker import SharedBreakerRegistry
from router_service.spend import SpendGuard
from router_service.state import StateStore, open_store
from sekha.router.v1 import router_service_pb2 as pb
from sekha.router.v1 import router_service_pb2_grpc as pb_grpc
from sekha.server.lifecycle import ServerOptions, ServingServer, start_server
from sekha.server.auth import auth_interceptors, warn_if_open
from sekha.server.tls import server_credentials

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RouterService"].full_name


@dataclass
class RouterDeps:
    """What tests (and embedders of the router) may replace."""

    clock: Callable[[], float] = time.monotonic
    model_info: Any = None  # registry.ModelInfoSource; None = LiteLLM's bundled model info
    providers: Mapping[str, ProviderClient] | None = None
    local_embedder: Any = None  # providers.local.LocalEmbedder shared by `local` providers
    observer: Observer | None = None
    extra_interceptors: list[Any] = field(default_factory=list)
    server_credentials: Any = None
    wall_clock: Callable[[], float] = time.time  # budgets' periods, rate limits, shared breakers
    state_store: StateStore | None = None  # used instead of opening config.state (not closed by us)


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


def build_providers(config: RouterConfig, local_embedder: Any = None) -> dict[str, ProviderClient]:
    shared: dict[str, Any] = {"embedder": local_embedder}

    def local_embedder_factory() -> Any:
        if shared["embedder"] is None:
            from router_service.providers.local import LocalEmbedder

            shared["embedder"] = LocalEmbedder()
        return shared["embedder"]

    return {p.id: make_provider(provider_spec(p), local_embedder_factory) for p in config.providers}


async def build_server(config: RouterConfig, deps: RouterDeps | None = None) -> RouterApp:
    deps = deps or RouterDeps()
    registry = Registry.from_config(config, deps.model_info)
    prices = PriceTable(registry)
    estimator = TokenEstimator()
    store = deps.state_store or await open_store(config.state, deps.wall_clock)
    breakers: BreakerRegistry | SharedBreakerRegistry
    if store.shared and config.state.shared_breakers:
        breakers = SharedBreakerRegistry.from_config(config, store, wall_clock=deps.wall_clock)
        await breakers.start()
    else:
        breakers = BreakerRegistry(
            {p.id: p.circuit_breaker or config.circuit_breaker for p in config.providers}, clock=deps.clock
        )
    spend = SpendGuard(
        store,
        config.budgets,
        config.rate_limits,
        reservation_ttl_s=config.state.reservation_ttl_s,
        wall_clock=deps.wall_clock,
    )
    router = Router(registry, prices, breakers)  # type: ignore[arg-type]  # same API, duck-typed
    providers = dict(deps.providers) if deps.providers is not None else build_providers(config, deps.local_embedder)
    timeouts = {p.id: p.timeout_s for p in config.providers}
    limits = Limits(
        max_messages=config.limits.max_messages,
        max_message_chars=config.limits.max_message_chars,
        max_images=config.limits.max_images,
        max_image_bytes=config.limits.max_image_bytes,
        max_output_tokens=config.limits.max_output_tokens,
        max_embed_inputs=config.limits.max_embed_inputs,
        max_input_chars=config.limits.max_input_chars,
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
    )
    probes = ProbeScheduler(
        providers,
        {p.id: p.health_probe_interval_s for p in config.providers},
        timeouts,
        breakers,
        clock=deps.clock,
    )
    servicer = RouterServicer(gateway, Catalog(registry, prices, breakers, probes))
    options = ServerOptions(
        host=config.server.host,
        port=config.server.port,
        max_message_bytes=config.server.max_message_bytes,
        max_concurrent_rpcs=config.server.max_concurrent_rpcs,
        reflection=config.server.reflection,
        grace_period_s=config.server.grace_period_s,
        extra_interceptors=(*deps.extra_interceptors, *auth_interceptors(config.auth)),
        server_credentials=deps.server_credentials or server_credentials(config.server.tls),
    )
    warn_if_open(config.auth, config.server.host, "router")
    serving = await start_server(
        options,
        domain="router.sekha.dev",
        register=lambda server: pb_grpc.add_RouterServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
    )
    # on_stop runs in reverse: probes stop before the provider clients they use are closed, and
    # the state store closes last, after the breakers' and the ledger's final writes.
    if deps.state_store is None:
        serving.on_stop.append(store.close)
    if isinstance(breakers, SharedBreakerRegistry):
        serving.on_stop.append(breakers.stop)
    serving.on_stop.append(spend.drain)
    for provider in providers.values():
        serving.on_stop.append(provider.aclose)
    probes.start()
    serving.on_stop.append(probes.stop)
    return RouterApp(
        serving=serving,
        gateway=gateway,
        registry=registry,
        breakers=breakers,
        probes=probes,
        spend=spend,
        store=store,
    )
