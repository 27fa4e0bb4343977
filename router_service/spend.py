"""Spend ledger, budgets and rate limits: the facade the gateway calls around provider calls.

Per request the gateway opens a `SpendTicket` (rate limits are checked there), reserves each
attempt's estimated cost before the provider call (`ticket.reserve`), settles the real cost after
it (`ticket.settle`, which also writes the ledger row) and closes the ticket on the way out
(`ticket.close`, which gives back whatever was not settled). The state lives in a `StateStore`,
so with Redis every replica enforces the same budgets and limits.

Identity: the caller is the API key id when auth is on; otherwise the request's
`metadata["tenant"]`, else `anonymous`. With auth off the tenant is that same metadata value (a
caller could name any tenant then; auth is what makes budgets binding). Budgets exist per caller,
per tenant and globally, daily and monthly (UTC), in US dollars; every budget that applies must
have room, and a reservation takes from all of them at once or from none.

The guarantee: reserve is an atomic check-and-add (`spent + reserved + amount <= limit`), so
concurrent requests cannot all pass a check made before any of them was counted. Settled spend
exceeds a budget only by what real costs exceed their estimates (the estimate assumes the whole
`max_tokens` is generated, so usually it does not at all).

Decisions worth knowing:

* A candidate whose price is unknown is not served while any budget applies to the caller: its
  cost could not be reserved, and spending an unknown amount against a budget would make the
  budget meaningless. It is skipped like a candidate over `max_cost`; when no candidate is left,
  the caller gets FAILED_PRECONDITION naming the reason (configure a `price:` to allow it). With
  no budget, such requests are served and recorded with `price_unknown`, never as $0.
* A free candidate (estimate $0) needs no reservation and is served even when the budget is
  used up: budgets limit money, and it costs none.
* Tokens per minute are charged up front with the estimate (prompt tokens plus `max_tokens`);
  the unused part is given back at settle, the whole charge when the request fails.
* Bookkeeping errors after a provider answered are logged, not raised: the caller has the answer
  and the tokens are spent; failing the request would only hide that.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from router_service.domain import Candidate, Cost, Usage
from router_service.state.base import (
    BudgetKey,
    RateLimit,
    SpendGrouping,
    SpendRecord,
    SpendRow,
    StateStore,
    StoreUnavailableError,
    nanos_to_usd,
    usd_to_nanos,
)
from sekha_runtime.errors import (
    BudgetExhaustedError,
    NoRouteError,
    PermissionDeniedError,
    RateLimitedError,
    UnavailableError,
)

__all__ = [
    "ANONYMOUS",
    "BudgetLimits",
    "BudgetStatus",
    "BudgetsConfig",
    "Identity",
    "RateLimitSettings",
    "RateLimitsConfig",
    "SpendGuard",
    "SpendReport",
    "SpendTicket",
    "resolve_identity",
    "visible_caller",
]

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
GLOBAL_SCOPE = "global"
DAILY = "daily"
MONTHLY = "monthly"
_MAX_TENANT_CHARS = 128
# Counters are kept a day past their period so a report right after midnight still shows them.
_COUNTER_GRACE_S = 86400.0

Usd = Annotated[float, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)


class BudgetLimits(_Section):
    """Spend limits in US dollars per UTC day and per UTC month; None means no limit."""

    daily_usd: Usd | None = None
    monthly_usd: Usd | None = None


class BudgetsConfig(_Section):
    """The `budgets:` config section."""

    global_: BudgetLimits | None = Field(default=None, alias="global", description="all callers together")
    default_caller: BudgetLimits | None = Field(default=None, description="each caller without its own entry")
    callers: dict[str, BudgetLimits] = Field(default_factory=dict, description="by API key id (or tenant)")
    tenants: dict[str, BudgetLimits] = Field(default_factory=dict)


class RateLimitSettings(_Section):
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1, description="prompt + max_tokens, trued up")


class RateLimitsConfig(_Section):
    """The `rate_limits:` config section."""

    default_caller: RateLimitSettings | None = None
    callers: dict[str, RateLimitSettings] = Field(default_factory=dict)
    tenants: dict[str, RateLimitSettings] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who pays: `caller` (API key id, or tenant when auth is off) and its `tenant` ("" = none)."""

    caller: str
    tenant: str = ""


def resolve_identity(
    api_key_id: str | None, metadata: Mapping[str, str] | None = None, key_tenant: str | None = None
) -> Identity:
    """The request's identity: the API key when auth is on, else `metadata["tenant"]`, else anonymous.

    With auth on the metadata is ignored: a caller must not pick whom its spend is billed to.
    """
    if api_key_id:
        return Identity(api_key_id, key_tenant or "")
    tenant = ((metadata or {}).get("tenant") or "").strip()[:_MAX_TENANT_CHARS]
    if tenant:
        return Identity(tenant, tenant)
    return Identity(ANONYMOUS)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    scope: str
    period: str
    limit_usd: float
    spent_usd: float
    reserved_usd: float


@dataclass(frozen=True, slots=True)
class SpendReport:
    rows: list[SpendRow]
    total_cost_usd: float
    budgets: list[BudgetStatus]


def period_window(period: str, now: float) -> tuple[str, float]:
    """The UTC window containing `now` (`2025-01-31` or `2025-01`) and when it ends (epoch s)."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == DAILY:
        start = calendar.timegm((moment.year, moment.month, moment.day, 0, 0, 0))
        return moment.strftime("%Y-%m-%d"), start + 86400.0
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return moment.strftime("%Y-%m"), float(calendar.timegm((year, month, 1, 0, 0, 0)))


def _scope_words(scope: str) -> str:
    return "all callers" if scope == GLOBAL_SCOPE else scope.replace(":", " ", 1)


class SpendGuard:
    """Budgets, rate limits and the ledger over one StateStore (see the module docstring)."""

    def __init__(
        self,
        store: StateStore,
        budgets: BudgetsConfig | None = None,
        rate_limits: RateLimitsConfig | None = None,
        *,
        reservation_ttl_s: float = 900.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.budgets = budgets or BudgetsConfig()
        self.rate_limits = rate_limits or RateLimitsConfig()
        self.reservation_ttl_s = reservation_ttl_s
        self.wall_clock = wall_clock
        self._background: set[asyncio.Task[None]] = set()

    # -- policy ---------------------------------------------------------------------------

    def _scoped_limits(self, identity: Identity) -> list[tuple[str, BudgetLimits]]:
        config = self.budgets
        scoped: list[tuple[str, BudgetLimits]] = []
        caller_limits = config.callers.get(identity.caller, config.default_caller)
        if caller_limits is not None:
            scoped.append((f"caller:{identity.caller}", caller_limits))
        if identity.tenant and identity.tenant in config.tenants:
            scoped.append((f"tenant:{identity.tenant}", config.tenants[identity.tenant]))
        if config.global_ is not None:
            scoped.append((GLOBAL_SCOPE, config.global_))
        return scoped

    def budget_keys(self, scoped: list[tuple[str, BudgetLimits]], now: float) -> tuple[BudgetKey, ...]:
        keys: list[BudgetKey] = []
        for scope, limits in scoped:
            for period, limit in ((DAILY, limits.daily_usd), (MONTHLY, limits.monthly_usd)):
                if limit is None:
                    continue
                window, ends = period_window(period, now)
                keys.append(BudgetKey(scope, period, window, usd_to_nanos(limit), ends + _COUNTER_GRACE_S))
        return tuple(keys)

    def budgets_for(self, identity: Identity, now: float | None = None) -> tuple[BudgetKey, ...]:
        """Every budget counter that applies to the identity now."""
        return self.budget_keys(self._scoped_limits(identity), self.wall_clock() if now is None else now)

    def has_budget(self, identity: Identity) -> bool:
        return bool(self.budgets_for(identity))

    def rate_limits_for(self, identity: Identity, tokens: int) -> list[RateLimit]:
        config = self.rate_limits
        scoped: list[tuple[str, RateLimitSettings]] = []
        caller_settings = config.callers.get(identity.caller, config.default_caller)
        if caller_settings is not None:
            scoped.append((f"caller:{identity.caller}", caller_settings))
        if identity.tenant and identity.tenant in config.tenants:
            scoped.append((f"tenant:{identity.tenant}", config.tenants[identity.tenant]))
        limits: list[RateLimit] = []
        for scope, settings in scoped:
            if settings.requests_per_minute is not None:
                limits.append(RateLimit(f"{scope}:rpm", settings.requests_per_minute, 60.0, 1, scope))
            if settings.tokens_per_minute is not None:
                limits.append(
                    RateLimit(f"{scope}:tpm", settings.tokens_per_minute, 60.0, max(tokens, 1), scope)
                )
        return limits

    # -- requests -------------------------------------------------------------------------

    async def open(
        self, identity: Identity, operation: str, request_id: str, estimated_tokens: int
    ) -> SpendTicket:
        """Start a request's bookkeeping; raises RateLimitedError when a rate limit is reached."""
        now = self.wall_clock()
        limits = self.rate_limits_for(identity, estimated_tokens)
        if limits:
            decision = await self.store.acquire_rate(limits, now)
            if not decision.allowed:
                refused = decision.refused
                assert refused is not None
                what = "requests-per-minute" if refused.key.endswith(":rpm") else "tokens-per-minute"
                raise RateLimitedError(
                    f"{what} limit of {_scope_words(refused.scope)} reached",
                    scope=refused.scope,
                    retry_after_s=max(decision.retry_after_s, 0.001),
                    limit=what.replace("-", "_"),
                )
        token_limits = tuple(limit for limit in limits if limit.key.endswith(":tpm"))
        return SpendTicket(
            self, identity, operation, request_id, self.budgets_for(identity, now), token_limits
        )

    def spawn(self, work: Awaitable[None]) -> None:
        """Run bookkeeping in the background (from code that must not await, e.g. on cancel)."""

        async def run() -> None:
            try:
                await work
            except Exception as exc:
                logger.error("spend bookkeeping failed (%s)", type(exc).__name__)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background bookkeeping (shutdown, tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- reports --------------------------------------------------------------------------

    async def report(
        self,
        start: float,
        end: float,
        grouping: SpendGrouping = SpendGrouping.CALLER,
        caller: str | None = None,
    ) -> SpendReport:
        """GetSpend: rows grouped and largest first, their total, and the budgets that apply
        (the caller's, or with no caller every configured caller and tenant budget, plus global)."""
        try:
            rows = await self.store.aggregate_spend(start, end, grouping, caller)
        except StoreUnavailableError:
            raise UnavailableError(
                "the spend ledger is unreachable; try again shortly", retry_after_s=1.0
            ) from None
        now = self.wall_clock()
        if caller:
            scoped = self._scoped_limits(Identity(caller, caller if caller in self.budgets.tenants else ""))
        else:
            scoped = [(f"caller:{c}", limits) for c, limits in sorted(self.budgets.callers.items())]
            scoped += [(f"tenant:{t}", limits) for t, limits in sorted(self.budgets.tenants.items())]
            if self.budgets.global_ is not None:
                scoped.append((GLOBAL_SCOPE, self.budgets.global_))
        usage = await self.store.budget_usage(self.budget_keys(scoped, now), now)
        statuses = [
            BudgetStatus(
                u.budget.scope,
                u.budget.period,
                nanos_to_usd(u.budget.limit_nanos),
                nanos_to_usd(u.spent_nanos),
                nanos_to_usd(u.reserved_nanos),
            )
            for u in usage
        ]
        return SpendReport(rows, nanos_to_usd(sum(r.cost_nanos for r in rows)), statuses)


def visible_caller(requested: str | None, requester: str, authenticated: bool, admin: bool) -> str | None:
    """Whose spend a GetSpend may show: with auth on, a key that is not admin sees only its own
    (asking for another caller's is PERMISSION_DENIED); an admin key, or any caller when auth is
    off (loopback-only by default), sees whichever it asks for, or everyone's."""
    if not authenticated or admin:
        return requested
    if requested and requested != requester:
        raise PermissionDeniedError(
            "caller: this API key may read only its own spend (leave caller empty or use its own id); "
            "keys with admin: true may read every caller's"
        )
    return requester


class SpendTicket:
    """One request's bookkeeping: at most one reservation at a time (one per attempt)."""

    def __init__(
        self,
        guard: SpendGuard,
        identity: Identity,
        operation: str,
        request_id: str,
        budgets: tuple[BudgetKey, ...],
        token_limits: tuple[RateLimit, ...],
    ) -> None:
        self.guard = guard
        self.identity = identity
        self.operation = operation
        self.request_id = request_id
        self.budgets = budgets
        self._token_limits = token_limits
        self._held: str | None = None  # reservation id
        self.settled = False
        self._closed = False

    @property
    def reserved(self) -> bool:
        return self._held is not None

    async def reserve(self, candidate: Candidate) -> None:
        """Reserve the candidate's estimated cost against every budget that applies.

        Raises BudgetExhaustedError when a budget lacks room, and NoRouteError when the price is
        unknown and a budget applies (see the module docstring); nothing is held then. A
        reservation still held from an earlier attempt is given back first.
        """
        await self.release()
        if not self.budgets:
            return
        estimate = candidate.estimated_cost_usd
        if estimate is None:
            raise NoRouteError(
                "the model's price is unknown and a spend budget applies to the caller",
                subject="budgets",
                violation_type="PRICE_UNKNOWN",
            )
        amount = usd_to_nanos(estimate, round_up=True)
        if amount <= 0:
            return
        guard = self.guard
        reservation_id = os.urandom(16).hex()
        outcome = await guard.store.reserve(
            reservation_id, self.budgets, amount, guard.wall_clock(), guard.reservation_ttl_s
        )
        if not outcome.ok:
            refused = outcome.refused
            assert refused is not None
            raise BudgetExhaustedError(
                f"the {refused.period} spend budget of {_scope_words(refused.scope)} is used up",
                scope=refused.scope,
                period=refused.period,
            )
        self._held = reservation_id

    async def release(self) -> None:
        """Give back the held reservation (the attempt failed or was never made)."""
        held, self._held = self._held, None
        if held is None:
            return
        try:
            await self.guard.store.release(held, self.budgets)
        except Exception as exc:
            # The reservation expires by itself after reservation_ttl_s.
            logger.error("releasing a budget reservation failed (%s)", type(exc).__name__)

    async def settle(self, provider_id: str, model: str, usage: Usage, cost: Cost) -> None:
        """Record the served attempt: ledger row, real cost into the budgets, unused tokens back."""
        if self.settled:
            return
        self.settled = True
        held, self._held = self._held, None
        guard = self.guard
        now = guard.wall_clock()
        record = SpendRecord(
            time=now,
            caller=self.identity.caller,
            tenant=self.identity.tenant,
            provider=provider_id,
            model=model,
            operation=self.operation,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_nanos=None if cost.cost_usd is None else usd_to_nanos(cost.cost_usd),
            request_id=self.request_id,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_input_tokens=usage.cache_write_input_tokens,
            reasoning_tokens=usage.reasoning_tokens,
        )
        try:
            await guard.store.settle(held or os.urandom(16).hex(), self.budgets, record)
        except Exception as exc:
            logger.error("recording spend failed (%s)", type(exc).__name__)
        used = usage.input_tokens + usage.output_tokens
        await self._refund_tokens(used, now)

    def settle_soon(self, provider_id: str, model: str, usage: Usage, cost: Cost) -> None:
        """`settle` from code that must not await (a cancelled stream that already used tokens)."""
        if not self.settled:
            self.guard.spawn(self.settle(provider_id, model, usage, cost))

    async def close(self) -> None:
        """End the request: give back an unsettled reservation and, when nothing was served, the
        whole token charge. Idempotent; call it on every way out of a request."""
        if self._closed:
            return
        self._closed = True
        await self.release()
        if not self.settled:
            await self._refund_tokens(0, self.guard.wall_clock())

    async def _refund_tokens(self, used: int, now: float) -> None:
        refunds = [
            RateLimit(limit.key, limit.limit, limit.period_s, limit.cost - used, limit.scope)
            for limit in self._token_limits
            if limit.cost > used
        ]
        if not refunds:
            return
        try:
            await self.guard.store.refund_rate(refunds, now)
        except Exception as exc:
            logger.error("refunding rate-limit tokens failed (%s)", type(exc).__name__)
