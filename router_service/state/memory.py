"""The in-process state backend: `MemoryStore`, one router process, gone on exit.

It serves one router process. Every check-and-change runs without an `await` between the check
and the change, and the server runs on one event loop, so a reservation or a rate-limit decision
is atomic without locks.

`MemoryStore` is also what `SqliteStore` (`sqlite.py`) builds on, and the Redis store's fallback
during an outage (see `redis_store.py`).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

from router_service.state.base import (
    CLOSED_RECORD,
    BreakerEvent,
    BreakerRecord,
    BreakerSettings,
    BudgetKey,
    BudgetUsage,
    RateDecision,
    RateLimit,
    ReserveOutcome,
    SpendGrouping,
    SpendRecord,
    SpendRow,
    StateStore,
    apply_breaker_event,
    gcra_interval_us,
    sort_rows,
)

__all__ = ["MemoryStore", "aggregate_records"]

# Settled reservation ids remembered for idempotent settles; a settle is never retried later
# than the last few thousand requests.
_SETTLED_IDS_KEPT = 10_000


@dataclass
class _Budget:
    spent: int = 0
    reserved: int = 0
    reservations: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (amount, expires_at)
    next_expiry: float = float("inf")
    expires_at: float = 0.0

    def purge(self, now: float) -> None:
        if now < self.next_expiry:
            return
        for rid, (amount, expires_at) in list(self.reservations.items()):
            if expires_at <= now:
                del self.reservations[rid]
                self.reserved -= amount
        self.next_expiry = min((e for _, e in self.reservations.values()), default=float("inf"))


class MemoryStore(StateStore):
    """Everything in process memory; the raw ledger keeps the last `max_rows` rows."""

    def __init__(self, max_rows: int = 100_000) -> None:
        super().__init__()
        self._budgets: dict[str, _Budget] = {}
        self._next_sweep = 0.0
        self._rows: collections.deque[SpendRecord] = collections.deque(maxlen=max_rows or None)
        self._settled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._rate_tat: dict[str, float] = {}
        self._breakers: dict[str, BreakerRecord] = {}
        self._probes: dict[tuple[str, int], tuple[int, float]] = {}  # (name, gen) -> (count, expires_at)

    # -- budgets --------------------------------------------------------------------------

    def _budget(self, key: BudgetKey) -> _Budget:
        budget = self._budgets.get(key.key)
        if budget is None:
            budget = self._budgets[key.key] = _Budget(expires_at=key.expires_at)
        return budget

    def seed_spent(self, key: BudgetKey, spent_nanos: int) -> None:
        """Start a counter this store has not seen at a known spent total (last value from Redis)."""
        if key.key not in self._budgets:
            self._budgets[key.key] = _Budget(spent=spent_nanos, expires_at=key.expires_at)

    def has_budget(self, key: BudgetKey) -> bool:
        return key.key in self._budgets

    def _forget_expired(self, now: float) -> None:
        for name in [k for k, b in self._budgets.items() if b.expires_at <= now and not b.reservations]:
            del self._budgets[name]

    def _reserve_now(
        self, reservation_id: str, budgets: Sequence[BudgetKey], amount: int, now: float, ttl_s: float
    ) -> ReserveOutcome:
        if now >= self._next_sweep:  # counters of past periods would otherwise pile up
            self._forget_expired(now)
            self._next_sweep = now + 3600.0
        states = [self._budget(key) for key in budgets]
        usage = []
        for key, budget in zip(budgets, states, strict=True):
            budget.purge(now)
            usage.append(BudgetUsage(key, budget.spent, budget.reserved))
            if budget.spent + budget.reserved + amount > key.limit_nanos:
                return ReserveOutcome(False, key, tuple(usage))
        expires_at = now + ttl_s
        for budget in states:
            budget.reserved += amount
            budget.reservations[reservation_id] = (amount, expires_at)
            budget.next_expiry = min(budget.next_expiry, expires_at)
        return ReserveOutcome(True, None, tuple(usage))

    async def reserve(
        self, reservation_id: str, budgets: Sequence[BudgetKey], amount_nanos: int, now: float, ttl_s: float
    ) -> ReserveOutcome:
        return self._reserve_now(reservation_id, budgets, amount_nanos, now, ttl_s)

    def _release_now(self, reservation_id: str, budgets: Sequence[BudgetKey]) -> None:
        for key in budgets:
            budget = self._budgets.get(key.key)
            if budget is None:
                continue
            held = budget.reservations.pop(reservation_id, None)
            if held is not None:
                budget.reserved -= held[0]

    async def release(self, reservation_id: str, budgets: Sequence[BudgetKey]) -> None:
        self._release_now(reservation_id, budgets)

    def _settle_now(self, reservation_id: str, budgets: Sequence[BudgetKey], record: SpendRecord) -> bool:
        """Apply a settle in memory; False when this id was settled already."""
        if reservation_id in self._settled:
            return False
        self._settled[reservation_id] = None
        if len(self._settled) > _SETTLED_IDS_KEPT:
            self._settled.popitem(last=False)
        self._release_now(reservation_id, budgets)
        cost = record.cost_nanos or 0
        for key in budgets:
            self._budget(key).spent += cost
        self._rows.append(record)
        return True

    async def settle(self, reservation_id: str, budgets: Sequence[BudgetKey], record: SpendRecord) -> None:
        self._settle_now(reservation_id, budgets, record)

    async def budget_usage(self, budgets: Sequence[BudgetKey], now: float) -> list[BudgetUsage]:
        self._forget_expired(now)
        usage = []
        for key in budgets:
            budget = self._budgets.get(key.key)
            if budget is not None:
                budget.purge(now)
            usage.append(BudgetUsage(key, budget.spent if budget else 0, budget.reserved if budget else 0))
        return usage

    # -- ledger ---------------------------------------------------------------------------

    async def aggregate_spend(
        self, start: float, end: float, grouping: SpendGrouping, caller: str | None = None
    ) -> list[SpendRow]:
        return aggregate_records(self._rows, start, end, grouping, caller)

    def records(self) -> list[SpendRecord]:
        """The raw rows held (the Redis store replays these after an outage)."""
        return list(self._rows)

    # -- rate limits ----------------------------------------------------------------------

    async def acquire_rate(self, limits: Sequence[RateLimit], now: float) -> RateDecision:
        now_us = now * 1e6
        updates: list[tuple[str, float]] = []
        for limit in limits:
            period_us = limit.period_s * 1e6
            tat = max(self._rate_tat.get(limit.key, now_us), now_us)
            new_tat = tat + gcra_interval_us(limit) * limit.cost
            if new_tat - period_us > now_us:
                oversize = limit.cost > limit.limit
                if not (oversize and tat <= now_us):
                    wait_us = (tat - now_us) if oversize else (new_tat - period_us - now_us)
                    return RateDecision(False, wait_us / 1e6, limit)
            updates.append((limit.key, new_tat))
        for key, new_tat in updates:
            self._rate_tat[key] = new_tat
        if len(self._rate_tat) > 4 * 1024:
            # Keys whose bucket is empty again carry no information: forget them.
            for key in [k for k, tat in self._rate_tat.items() if tat <= now_us]:
                del self._rate_tat[key]
        return RateDecision(True)

    async def refund_rate(self, limits: Sequence[RateLimit], now: float) -> None:
        now_us = now * 1e6
        for limit in limits:
            tat = self._rate_tat.get(limit.key)
            if tat is None:
                continue
            tat -= gcra_interval_us(limit) * limit.cost
            if tat <= now_us:
                del self._rate_tat[limit.key]
            else:
                self._rate_tat[limit.key] = tat

    # -- breakers -------------------------------------------------------------------------

    async def breaker_events(
        self, name: str, events: Sequence[BreakerEvent], settings: BreakerSettings
    ) -> BreakerRecord:
        record = self._breakers.get(name, CLOSED_RECORD)
        for event in events:
            record = apply_breaker_event(record, event, settings)
        self._breakers[name] = record
        if record.state == "closed":
            self._probes = {k: v for k, v in self._probes.items() if k[0] != name}
        return record

    async def breaker_load(self, name: str) -> BreakerRecord:
        return self._breakers.get(name, CLOSED_RECORD)

    async def breaker_acquire_probe(
        self, name: str, generation: int, max_probes: int, now: float, ttl_s: float
    ) -> bool:
        record = self._breakers.get(name, CLOSED_RECORD)
        if not record.half_open(now) or record.generation != generation:
            return False
        count, expires_at = self._probes.get((name, generation), (0, 0.0))
        if expires_at <= now:
            count = 0
        if count >= max_probes:
            return False
        self._probes[(name, generation)] = (count + 1, now + ttl_s)
        return True

    async def breaker_release_probe(self, name: str, generation: int) -> None:
        held = self._probes.get((name, generation))
        if held is not None and held[0] > 0:
            self._probes[(name, generation)] = (held[0] - 1, held[1])


def aggregate_records(
    records: Sequence[SpendRecord] | collections.deque[SpendRecord],
    start: float,
    end: float,
    grouping: SpendGrouping,
    caller: str | None,
) -> list[SpendRow]:
    rows: dict[str, SpendRow] = {}
    for record in records:
        if not start <= record.time < end or (caller is not None and record.caller != caller):
            continue
        key = record.group_key(grouping)
        row = SpendRow(
            key,
            record.cost_nanos or 0,
            1,
            record.input_tokens,
            record.output_tokens,
            1 if record.price_unknown else 0,
            record.cached_input_tokens,
            record.cache_write_input_tokens,
            record.reasoning_tokens,
        )
        previous = rows.get(key)
        rows[key] = row if previous is None else previous.plus(row)
    return sort_rows(rows)
