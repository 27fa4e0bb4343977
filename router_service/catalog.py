"""Read models for ListModels and GetProviderStatus.

Joins the registry, the price table, the breakers, provider enablement, the
latest health probes and the state backend's health into plain views; the
servicer only converts them.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from router_service import domain as d
from router_service.breaker import Breakers, BreakerSnapshot
from router_service.events import StateBackendHealth, StateBackendView
from router_service.model_registry import ModelEntry, Registry
from router_service.pricing import PriceTable
from router_service.probes import ProbeResult, ProbeScheduler
from sekha_runtime.errors import FieldViolation, InvalidArgumentError, NotFoundError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class ModelView:
    entry: ModelEntry
    price: d.Price | None
    breaker_state: str
    available: bool


@dataclass(frozen=True)
class ProviderView:
    provider_id: str
    type: str
    enabled: bool
    disabled_reason: str
    breaker: BreakerSnapshot
    last_probe: ProbeResult | None
    priority: int
    model_count: int


def encode_page_token(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode()).decode()


def decode_page_token(token: str, field: str = "page_token") -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgumentError(FieldViolation(field, "not a token returned by this server")) from None


def page_size_or_default(page_size: int, field: str = "page_size") -> int:
    if page_size < 0:
        raise InvalidArgumentError(FieldViolation(field, "must be >= 0"))
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class Catalog:
    def __init__(
        self,
        registry: Registry,
        prices: PriceTable,
        breakers: Breakers,
        probes: ProbeScheduler,
        state: StateBackendHealth | None = None,
    ) -> None:
        self.registry = registry
        self.prices = prices
        self.breakers = breakers
        self.probes = probes
        self.state = state

    def state_backend(self) -> StateBackendView | None:
        """The state backend's health (None when no store is watched)."""
        return self.state.view() if self.state is not None else None

    def _provider_enabled(self, provider_id: str) -> bool:
        return self.registry.disabled_reason(provider_id) is None

    def list_models(
        self, task: d.Task | None, provider_id: str, page_size: int, page_token: str
    ) -> tuple[list[ModelView], str]:
        size = page_size_or_default(page_size)
        after = tuple(decode_page_token(page_token).split("/", 1)) if page_token else None
        entries = sorted(self.registry.entries, key=lambda e: (e.provider_id, e.model))
        views: list[ModelView] = []
        for entry in entries:
            if task is not None and task not in entry.tasks:
                continue
            if provider_id and entry.provider_id != provider_id:
                continue
            if after is not None and (entry.provider_id, entry.model) <= after:
                continue
            if len(views) == size:
                return views, encode_page_token(views[-1].entry.key)
            breaker = self.breakers.get(entry.provider_id)
            views.append(
                ModelView(
                    entry=entry,
                    price=self.prices.price(entry),
                    breaker_state=breaker.snapshot().state.value,
                    available=self._provider_enabled(entry.provider_id) and breaker.is_available(),
                )
            )
        return views, ""

    def provider_status(self, provider_id: str) -> list[ProviderView]:
        providers = self.registry.providers
        if provider_id and provider_id not in providers:
            raise NotFoundError("provider", provider_id)
        views = []
        for pid, provider in providers.items():
            if provider_id and pid != provider_id:
                continue
            reason = self.registry.disabled_reason(pid)
            views.append(
                ProviderView(
                    provider_id=pid,
                    type=provider.type,
                    enabled=reason is None,
                    disabled_reason=reason or "",
                    breaker=self.breakers.get(pid).snapshot(),
                    last_probe=self.probes.results.get(pid) if self.probes else None,
                    priority=provider.priority,
                    model_count=len(provider.models),
                )
            )
        views.sort(key=lambda v: (v.priority, v.provider_id))
        return views
