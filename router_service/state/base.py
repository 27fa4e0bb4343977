"""The small interface every state backend implements, and the value types it speaks.

Router state that must outlive a request (spend, budget counters, rate-limit buckets, breaker
state) goes through `StateStore`. Three backends implement it: `MemoryStore` (one process, gone on
exit), `SqliteStore` (one process, spend and budget counters survive a restart) and `RedisStore`
(shared by every router replica). Domain code talks only to this interface.

Money is counted in integer nano-dollars (1e-9 USD) inside the stores: Redis `HINCRBY` and SQLite
integers add them exactly, so reservations that are added and taken back leave no float residue,
and the smallest real cost (a few embedding tokens at $0.02 per million is 1e-7 USD) is still
counted rather than rounded to $0. A price that is unknown stays unknown (`cost_nanos=None`); it is
never stored as 0.

Times are epoch seconds from the caller's injected wall clock, not the store's clock, so tests can
drive every time-dependent rule without sleeping. Replicas sharing a Redis are assumed to have
NTP-synchronised clocks; a skew of a second shifts a breaker's reset timeout or a rate-limit bucket
by that second, nothing worse.

The breaker types and rules the interface speaks (`BreakerRecord`, `BreakerEvent`,
`BreakerSettings`, `apply_breaker_event`) live in `router_service.breaker_rules`, the one home of
the breaker's rules; they are imported here because they are part of this interface.
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from router_service.breaker_rules import (
    CLOSED_RECORD,
    BreakerEvent,
    BreakerRecord,
    BreakerSettings,
    apply_breaker_event,
    reset_timeout_for,
)

__all__ = [
    "CLOSED_RECORD",
    "NANOS_PER_USD",
    "BreakerEvent",
    "BreakerRecord",
    "BreakerSettings",
    "BudgetKey",
    "BudgetUsage",
    "HealthListener",
    "RateDecision",
    "RateLimit",
    "ReserveOutcome",
    "SpendGrouping",
    "SpendRecord",
    "SpendRow",
    "StateConfig",
    "StateStore",
    "StoreUnavailableError",
    "apply_breaker_event",
    "nanos_to_usd",
    "reset_timeout_for",
    "usd_to_nanos",
]

NANOS_PER_USD = 1_000_000_000

HealthListener = Callable[[bool], None]


def usd_to_nanos(usd: float, *, round_up: bool = False) -> int:
    """US dollars as integer nano-dollars; `round_up` for reservations (never reserve too little)."""
    scaled = usd * NANOS_PER_USD
    return math.ceil(scaled - 1e-6) if round_up else round(scaled)


def nanos_to_usd(nanos: int) -> float:
    return nanos / NANOS_PER_USD


class StoreUnavailableError(Exception):
    """The shared store cannot be reached. Internal: callers of the domain never see it."""


class StateConfig(BaseModel):
    """Where the router keeps state that outlives a request (the `state:` config section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The model's default is memory so that a config without this section (tests, embedders)
    # writes no file; the embedded default_config.yaml picks sqlite for `make run`.
    backend: Literal["memory", "sqlite", "redis"] = Field(
        default="memory",
        description="memory: one process, lost on exit; sqlite: one process, spend survives a "
        "restart; redis: shared by every replica (budgets, rate limits and breakers hold cluster-wide)",
    )
    sqlite_path: str = "sekha-router-state.sqlite3"
    redis_url: SecretStr | None = Field(default=None, description="redis://[:password@]host:port/db")
    key_prefix: str = Field(default="sekha", min_length=1, description="prefix of every Redis key")
    redis_timeout_s: float = Field(
        default=0.5,
        gt=0,
        description="socket timeout; a slower Redis counts as down and the router serves on local state",
    )
    reconnect_interval_s: float = Field(default=1.0, gt=0, description="how often a down Redis is retried")
    max_pending_ops: int = Field(
        default=10_000, ge=0, description="spend writes buffered during a Redis outage, replayed after it"
    )
    reservation_ttl_s: float = Field(
        default=900.0,
        gt=0,
        description="a reservation whose request never settled (crashed replica) "
        "is returned to the budget after this long",
    )
    spend_log_max_rows: int = Field(default=100_000, ge=0, description="raw ledger rows kept in Redis")
    spend_hourly_retention_days: int = Field(default=35, ge=1)
    spend_daily_retention_days: int = Field(default=400, ge=1)
    shared_breakers: bool = Field(
        default=True, description="with redis: one breaker per provider cluster-wide"
    )
    breaker_sync_interval_s: float = Field(default=0.2, gt=0)
    probe_permit_ttl_s: float = Field(
        default=60.0,
        gt=0,
        description="a half-open probe permit held by a replica that died is freed after this",
    )

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StateConfig:
        if self.backend == "redis" and self.redis_url is None:
            # Imported here: this module must stay importable without the config loader's helpers.
            from sekha_runtime.configloader import ConfigPathError

            raise ConfigPathError([(("redis_url",), "required when backend is 'redis'")])
        return self


# --------------------------------------------------------------------------- budgets


@dataclass(frozen=True, slots=True)
class BudgetKey:
    """One budget counter: a scope (`caller:<id>`, `tenant:<id>`, `global`) in one period window.

    `window` names the UTC period (`2025-01-31` for daily, `2025-01` for monthly), so a new day
    starts a fresh counter by itself. `expires_at` is when the counter may be forgotten.
    """

    scope: str
    period: str  # "daily" | "monthly"
    window: str
    limit_nanos: int
    expires_at: float

    @property
    def key(self) -> str:
        return f"{self.scope}|{self.period}|{self.window}"


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    budget: BudgetKey
    spent_nanos: int
    reserved_nanos: int


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    """The result of an atomic reservation: all budgets took the amount, or none did."""

    ok: bool
    refused: BudgetKey | None = None
    usage: tuple[BudgetUsage, ...] = ()


# ----------------------------------------------------------------------------- spend


class SpendGrouping(enum.StrEnum):
    CALLER = "caller"
    PROVIDER = "provider"
    MODEL = "model"  # `provider_id/model`


@dataclass(frozen=True, slots=True)
class SpendRecord:
    """One served request in the ledger. `cost_nanos` is None exactly when the price is unknown."""

    time: float
    caller: str
    provider: str
    model: str
    operation: str
    input_tokens: int
    output_tokens: int
    cost_nanos: int | None
    request_id: str
    tenant: str = ""
    # Parts of input_tokens / output_tokens (prompt cache reads and writes, reasoning).
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def price_unknown(self) -> bool:
        return self.cost_nanos is None

    def group_key(self, grouping: SpendGrouping) -> str:
        if grouping is SpendGrouping.PROVIDER:
            return self.provider
        if grouping is SpendGrouping.MODEL:
            return f"{self.provider}/{self.model}"
        return self.caller


@dataclass(frozen=True, slots=True)
class SpendRow:
    """Spend of one group over a range; requests of unknown price are counted, never priced."""

    key: str
    cost_nanos: int = 0
    request_count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    price_unknown_count: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def cost_usd(self) -> float:
        return nanos_to_usd(self.cost_nanos)

    def plus(self, other: SpendRow) -> SpendRow:
        return SpendRow(
            self.key,
            self.cost_nanos + other.cost_nanos,
            self.request_count + other.request_count,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.price_unknown_count + other.price_unknown_count,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_input_tokens + other.cache_write_input_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


def sort_rows(rows: dict[str, SpendRow]) -> list[SpendRow]:
    """Largest spend first (then most requests, then key, so the order is stable)."""
    return sorted(rows.values(), key=lambda r: (-r.cost_nanos, -r.request_count, r.key))


# ------------------------------------------------------------------------ rate limits


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`limit` units per `period_s` for `key`; this request takes `cost` units (1 for requests,
    its tokens for a token limit). `scope` names the limit in errors (`caller:<id>`)."""

    key: str
    limit: int
    period_s: float
    cost: int
    scope: str = ""


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after_s: float = 0.0
    refused: RateLimit | None = None


def gcra_interval_us(limit: RateLimit) -> float:
    """Microseconds one unit occupies in the bucket (GCRA's emission interval)."""
    return limit.period_s * 1e6 / limit.limit


# ------------------------------------------------------------------------- interface


class StateStore(abc.ABC):
    """Router state behind one small async interface.

    Budget, spend and rate-limit operations never raise because a shared backend is down: a
    store that loses its backend serves them from local state, flips `healthy` to False and
    tells its health listeners (the Redis store replays the buffered spend writes once the
    backend is back). Breaker operations do raise `StoreUnavailableError` then, because the
    shared breaker keeps its own local mirror and must know it is on its own.
    """

    def __init__(self) -> None:
        self._healthy = True
        self._health_listeners: list[HealthListener] = []

    @property
    def healthy(self) -> bool:
        """False while a shared backend is unreachable and local state serves in its place."""
        return self._healthy

    @property
    def shared(self) -> bool:
        """Whether other processes see this store's state (only Redis)."""
        return False

    def add_health_listener(self, listener: HealthListener) -> None:
        """Call `listener(healthy)` whenever `healthy` changes (health checks, metrics)."""
        self._health_listeners.append(listener)

    def _set_healthy(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        for listener in self._health_listeners:
            try:
                listener(healthy)
            except Exception:  # a broken metrics hook must not break the store
                pass

    async def start(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Open connections and files. Idempotent."""

    async def close(self) -> None:  # noqa: B027
        """Flush what can be flushed and release connections and files."""

    # -- budgets --------------------------------------------------------------------------

    @abc.abstractmethod
    async def reserve(
        self, reservation_id: str, budgets: Sequence[BudgetKey], amount_nanos: int, now: float, ttl_s: float
    ) -> ReserveOutcome:
        """Atomically: if spent + reserved + amount <= limit for every budget, add the amount to
        each one's reserved total under `reservation_id` (forgotten after `ttl_s`) and return ok;
        otherwise change nothing and name the first budget that refused."""

    @abc.abstractmethod
    async def settle(self, reservation_id: str, budgets: Sequence[BudgetKey], record: SpendRecord) -> None:
        """Drop the reservation (if still held), add the real cost to each budget's spent total
        and append the ledger row; the real cost may differ from the amount reserved. Settling
        one reservation id twice counts once."""

    @abc.abstractmethod
    async def release(self, reservation_id: str, budgets: Sequence[BudgetKey]) -> None:
        """Give the reservation back (the call failed or was never made)."""

    @abc.abstractmethod
    async def budget_usage(self, budgets: Sequence[BudgetKey], now: float) -> list[BudgetUsage]: ...

    # -- spend ledger ---------------------------------------------------------------------

    async def record_spend(self, record: SpendRecord, record_id: str) -> None:
        """Append a ledger row that no budget covers (idempotent per `record_id`)."""
        await self.settle(record_id, (), record)

    @abc.abstractmethod
    async def aggregate_spend(
        self, start: float, end: float, grouping: SpendGrouping, caller: str | None = None
    ) -> list[SpendRow]:
        """Spend in [start, end) grouped, largest first. Redis answers per whole UTC hour."""

    # -- rate limits ----------------------------------------------------------------------

    @abc.abstractmethod
    async def acquire_rate(self, limits: Sequence[RateLimit], now: float) -> RateDecision:
        """GCRA over every limit at once: take `cost` units from each, or from none."""

    @abc.abstractmethod
    async def refund_rate(self, limits: Sequence[RateLimit], now: float) -> None:
        """Give `cost` units back to each limit (a token estimate that turned out too high)."""

    # -- breakers -------------------------------------------------------------------------

    @abc.abstractmethod
    async def breaker_events(
        self, name: str, events: Sequence[BreakerEvent], settings: BreakerSettings
    ) -> BreakerRecord:
        """Apply call outcomes in order to the named breaker; return its state afterwards."""

    @abc.abstractmethod
    async def breaker_load(self, name: str) -> BreakerRecord: ...

    @abc.abstractmethod
    async def breaker_acquire_probe(
        self, name: str, generation: int, max_probes: int, now: float, ttl_s: float
    ) -> bool:
        """Take one of the `max_probes` half-open probe permits of `generation`, cluster-wide.

        False unless the breaker is open, due for half-open, still in `generation`, and a permit
        is free. A permit not given back is freed after `ttl_s` (its holder may have died)."""

    @abc.abstractmethod
    async def breaker_release_probe(self, name: str, generation: int) -> None: ...
