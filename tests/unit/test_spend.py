"""Budgets, rate limits and the spend ledger over every state backend (memory, SQLite, real Redis).

Time is an injected wall clock; nothing sleeps. The Redis backend runs against a real
`redis-server` this module starts on a free port.
"""

from __future__ import annotations

import asyncio
import calendar
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from router_service.domain import Candidate, Cost, Usage
from router_service.spend import (
    ANONYMOUS,
    BudgetLimits,
    BudgetsConfig,
    Identity,
    RateLimitsConfig,
    RateLimitSettings,
    SpendGuard,
    period_window,
    resolve_identity,
)
from router_service.state import MemoryStore, SpendGrouping, SpendRecord, SqliteStore, StateStore
from router_service.state.base import BudgetKey, usd_to_nanos
from router_service.state.redis_store import RedisStore
from sekha_runtime.errors import BudgetExhaustedError, NoRouteError, RateLimitedError
from testkit.redis_server import RedisServer, redis_server_or_skip

T0 = float(calendar.timegm((2025, 3, 14, 10, 0, 0)))  # a Friday, 10:00 UTC
HOUR = 3600.0


class WallClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = redis_server_or_skip()
    yield server
    server.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class StoreFactory:
    """Opens stores of one backend; a second store of the same factory is a second replica
    (Redis) or the same file reopened (SQLite)."""

    def __init__(
        self, backend: str, tmp_path: Path, request: pytest.FixtureRequest, clock: WallClock
    ) -> None:
        self.backend = backend
        self.path = tmp_path / "x" / "state.sqlite3"  # the store makes missing directories
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.request = request
        self.clock = clock
        self.opened: list[StateStore] = []
        self._memory: MemoryStore | None = None

    async def open(self) -> StateStore:
        store: StateStore
        if self.backend == "memory":
            self._memory = self._memory or MemoryStore()
            return self._memory
        if self.backend == "sqlite":
            store = SqliteStore(self.path)
        else:
            server: RedisServer = self.request.getfixturevalue("redis_server")
            # Time moves by the test's clock: rate limits measured on it, not on Redis's own.
            store = RedisStore(
                server.url, prefix=self.prefix, timeout_s=5.0, wall_clock=self.clock, rate_clock="caller"
            )
        await store.start()
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            # A Redis store that fell back to local state would pass these tests for the wrong reason.
            assert store.healthy
            if isinstance(store, RedisStore):
                assert store.pending_ops == 0
            await store.close()
        self.opened.clear()


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
async def stores(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, clock: WallClock
) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(backend, tmp_path, request, clock)
    yield factory
    await factory.close_all()


def candidate(cost_usd: float | None, provider: str = "openai", model: str = "gpt") -> Candidate:
    return Candidate(provider, model, 50, cost_usd)


def global_daily(limit_usd: float) -> BudgetsConfig:
    return BudgetsConfig.model_validate({"global": {"daily_usd": limit_usd}})


# ------------------------------------------------------------------------------- budgets


async def test_fifty_concurrent_reservations_against_a_budget_holding_ten(
    stores: StoreFactory, clock: WallClock
) -> None:
    guard = SpendGuard(await stores.open(), global_daily(10.0), wall_clock=clock)

    async def one(i: int) -> bool:
        ticket = await guard.open(Identity(f"c{i}", ""), "chat", f"r{i}", 100)
        try:
            await ticket.reserve(candidate(1.0))
        except BudgetExhaustedError as exc:
            assert (exc.scope, exc.period) == ("global", "daily")
            return False
        return True

    admitted = await asyncio.gather(*(one(i) for i in range(50)))
    # Every reservation was in flight at once: exactly the ten that fit got through.
    assert sum(admitted) == 10
    [usage] = await guard.store.budget_usage(guard.budgets_for(Identity("x")), clock())
    assert usage.reserved_nanos == usd_to_nanos(10.0)
    assert usage.spent_nanos == 0


async def test_concurrent_requests_never_spend_past_budget_plus_one_request(
    stores: StoreFactory, clock: WallClock
) -> None:
    """Reserve, call, then settle or fail: 50 requests interleaved; on Redis they are spread over
    two replicas. The estimate (prompt + max_tokens) bounds the real cost, so spend stays within
    the budget, and always within budget + one request's maximum cost."""
    first = await stores.open()
    second = await stores.open() if stores.backend == "redis" else first
    guards = [SpendGuard(s, global_daily(10.0), wall_clock=clock) for s in (first, second)]
    rng = random.Random(7)
    max_cost = 1.0
    plan = [(rng.random() < 0.15, rng.uniform(0.3, max_cost), rng.randint(0, 3)) for _ in range(50)]
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        fails, real_cost, yields = plan[i]
        guard = guards[i % 2]
        ticket = await guard.open(Identity(f"c{i}"), "chat", f"r{i}", 100)
        try:
            await ticket.reserve(candidate(1.0))
        except BudgetExhaustedError:
            refused += 1
            return
        for _ in range(yields):
            await asyncio.sleep(0)
        if fails:
            await ticket.close()
        else:
            await ticket.settle("openai", "gpt", Usage(10, 10), Cost(real_cost))
            await ticket.close()

    await asyncio.gather(*(one(i) for i in range(50)))
    [usage] = await first.budget_usage(guards[0].budgets_for(Identity("x")), clock())
    assert usage.reserved_nanos == 0
    assert usage.spent_nanos <= usd_to_nanos(10.0)
    assert usage.spent_nanos <= usd_to_nanos(10.0 + max_cost)
    assert 0 < refused <= 40  # the budget did bind, and at least the first ten fitted
    rows = await first.aggregate_spend(T0 - HOUR, T0 + HOUR, SpendGrouping.PROVIDER)
    assert rows[0].cost_nanos == usage.spent_nanos


async def test_budget_refusals_name_scope_and_period(stores: StoreFactory, clock: WallClock) -> None:
    budgets = BudgetsConfig.model_validate(
        {
            "callers": {"alice": {"daily_usd": 5.0, "monthly_usd": 8.0}},
            "tenants": {"acme": {"monthly_usd": 100.0}},
        }
    )
    guard = SpendGuard(await stores.open(), budgets, wall_clock=clock)
    alice = Identity("alice", "acme")
    assert {(b.scope, b.period) for b in guard.budgets_for(alice)} == {
        ("caller:alice", "daily"),
        ("caller:alice", "monthly"),
        ("tenant:acme", "monthly"),
    }
    ticket = await guard.open(alice, "chat", "r1", 10)
    await ticket.reserve(candidate(4.0))
    await ticket.settle("openai", "gpt", Usage(1, 1), Cost(4.0))
    ticket = await guard.open(alice, "chat", "r2", 10)
    with pytest.raises(BudgetExhaustedError) as refused:
        await ticket.reserve(candidate(2.0))
    assert (refused.value.scope, refused.value.period) == ("caller:alice", "daily")
    assert "daily spend budget of caller alice" in refused.value.message

    clock.advance(24 * HOUR)  # a new day: the daily budget is fresh, the monthly one is not
    ticket = await guard.open(alice, "chat", "r3", 10)
    await ticket.reserve(candidate(3.0))
    await ticket.settle("openai", "gpt", Usage(1, 1), Cost(3.0))
    ticket = await guard.open(alice, "chat", "r4", 10)
    with pytest.raises(BudgetExhaustedError) as refused:
        await ticket.reserve(candidate(1.5))
    assert (refused.value.scope, refused.value.period) == ("caller:alice", "monthly")
    # Another caller of no budget of its own is untouched.
    ticket = await guard.open(Identity("bob"), "chat", "r5", 10)
    await ticket.reserve(candidate(50.0))


async def test_release_and_settle_move_the_reservation(stores: StoreFactory, clock: WallClock) -> None:
    guard = SpendGuard(await stores.open(), global_daily(10.0), wall_clock=clock)
    keys = guard.budgets_for(Identity("x"))
    ticket = await guard.open(Identity("x"), "chat", "r1", 10)
    await ticket.reserve(candidate(3.0))
    [usage] = await guard.store.budget_usage(keys, clock())
    assert (usage.spent_nanos, usage.reserved_nanos) == (0, usd_to_nanos(3.0))
    await ticket.reserve(candidate(2.0))  # the next attempt: the first reservation goes back
    [usage] = await guard.store.budget_usage(keys, clock())
    assert usage.reserved_nanos == usd_to_nanos(2.0)
    # The real cost differs from the estimate: spent is the real one.
    await ticket.settle("openai", "gpt", Usage(10, 20), Cost(0.25))
    await ticket.close()
    [usage] = await guard.store.budget_usage(keys, clock())
    assert (usage.spent_nanos, usage.reserved_nanos) == (usd_to_nanos(0.25), 0)
    ticket = await guard.open(Identity("x"), "chat", "r2", 10)
    await ticket.reserve(candidate(1.0))
    await ticket.close()  # failed request: nothing settled, nothing held
    [usage] = await guard.store.budget_usage(keys, clock())
    assert (usage.spent_nanos, usage.reserved_nanos) == (usd_to_nanos(0.25), 0)


async def test_a_reservation_never_settled_returns_to_the_budget_after_its_ttl(
    stores: StoreFactory, clock: WallClock
) -> None:
    guard = SpendGuard(await stores.open(), global_daily(1.0), wall_clock=clock, reservation_ttl_s=60.0)
    crashed = await guard.open(Identity("x"), "chat", "r1", 10)
    await crashed.reserve(candidate(1.0))  # its replica dies: never settled, never released
    ticket = await guard.open(Identity("x"), "chat", "r2", 10)
    with pytest.raises(BudgetExhaustedError):
        await ticket.reserve(candidate(0.5))
    clock.advance(61.0)
    await ticket.reserve(candidate(0.5))


async def test_settling_one_reservation_twice_counts_once(stores: StoreFactory, clock: WallClock) -> None:
    store = await stores.open()
    guard = SpendGuard(store, global_daily(10.0), wall_clock=clock)
    keys = guard.budgets_for(Identity("x"))
    assert (await store.reserve("res-1", keys, usd_to_nanos(1.0), clock(), 60.0)).ok
    record = SpendRecord(clock(), "x", "openai", "gpt", "chat", 1, 2, usd_to_nanos(0.5), "req")
    await store.settle("res-1", keys, record)
    await store.settle("res-1", keys, record)  # e.g. replayed after an outage
    [usage] = await store.budget_usage(keys, clock())
    assert (usage.spent_nanos, usage.reserved_nanos) == (usd_to_nanos(0.5), 0)
    [row] = await store.aggregate_spend(T0 - HOUR, T0 + HOUR, SpendGrouping.CALLER)
    assert row.request_count == 1


async def test_price_unknown_is_refused_under_a_budget_and_recorded_as_unknown_without(
    stores: StoreFactory, clock: WallClock
) -> None:
    store = await stores.open()
    budgets = BudgetsConfig.model_validate({"callers": {"alice": {"daily_usd": 5.0}}})
    guard = SpendGuard(store, budgets, wall_clock=clock)
    ticket = await guard.open(Identity("alice"), "chat", "r1", 10)
    with pytest.raises(NoRouteError) as refused:
        await ticket.reserve(candidate(None))
    assert refused.value.violation_type == "PRICE_UNKNOWN"
    assert not ticket.reserved

    ticket = await guard.open(Identity("bob"), "chat", "r2", 10)  # no budget applies to bob
    await ticket.reserve(candidate(None))
    await ticket.settle("mystery", "m1", Usage(100, 50), Cost(None))
    [row] = await store.aggregate_spend(T0 - HOUR, T0 + HOUR, SpendGrouping.CALLER)
    assert (row.key, row.request_count, row.price_unknown_count, row.cost_nanos) == ("bob", 1, 1, 0)
    assert (row.input_tokens, row.output_tokens) == (100, 50)


async def test_a_free_candidate_is_served_when_the_budget_is_used_up(
    stores: StoreFactory, clock: WallClock
) -> None:
    guard = SpendGuard(await stores.open(), global_daily(1.0), wall_clock=clock)
    ticket = await guard.open(Identity("x"), "chat", "r1", 10)
    await ticket.reserve(candidate(1.0))
    await ticket.settle("openai", "gpt", Usage(1, 1), Cost(1.0))
    ticket = await guard.open(Identity("x"), "embeddings", "r2", 10)
    with pytest.raises(BudgetExhaustedError):
        await ticket.reserve(candidate(0.001))
    await ticket.reserve(candidate(0.0, "local", "minilm"))
    await ticket.settle("local", "minilm", Usage(5, 0), Cost(0.0))


async def test_tiny_costs_are_counted_not_rounded_to_zero(stores: StoreFactory, clock: WallClock) -> None:
    guard = SpendGuard(await stores.open(), wall_clock=clock)
    ticket = await guard.open(Identity("x"), "embeddings", "r1", 10)
    await ticket.settle("openai", "embed-small", Usage(10, 0), Cost(10 * 0.02 / 1e6))
    [row] = await guard.store.aggregate_spend(T0 - HOUR, T0 + HOUR, SpendGrouping.MODEL)
    assert row.key == "openai/embed-small"
    assert row.cost_nanos == 200


# -------------------------------------------------------------------------------- ledger


async def record_fixture_rows(guard: SpendGuard, clock: WallClock) -> None:
    """Six requests over three hours, three callers, two providers."""
    plan = [
        (0.0, "alice", "openai", "gpt", 1.0, 100, 10),
        (0.1, "alice", "openai", "mini", 0.5, 50, 5),
        (1.0, "bob", "openai", "gpt", 2.0, 200, 20),
        (1.5, "bob", "anthropic", "claude", None, 300, 30),
        (2.0, "carol", "anthropic", "claude", 4.0, 400, 40),
        (2.9, "alice", "anthropic", "claude", 8.0, 800, 80),
    ]
    for i, (hours, caller, provider, model, cost, inp, out) in enumerate(plan):
        clock.now = T0 + hours * HOUR
        ticket = await guard.open(Identity(caller), "chat", f"r{i}", inp + out)
        await ticket.settle(provider, model, Usage(inp, out), Cost(cost))
    clock.now = T0 + 4 * HOUR


def summary(rows: list) -> list[tuple[str, float, int, int, int, int]]:
    return [
        (r.key, round(r.cost_usd, 6), r.request_count, r.input_tokens, r.output_tokens, r.price_unknown_count)
        for r in rows
    ]


async def test_spend_aggregates_by_caller_provider_and_model_over_a_range(
    stores: StoreFactory, clock: WallClock
) -> None:
    store = await stores.open()
    guard = SpendGuard(store, wall_clock=clock)
    await record_fixture_rows(guard, clock)
    everything = (T0, T0 + 3 * HOUR)
    assert summary(await store.aggregate_spend(*everything, SpendGrouping.CALLER)) == [
        ("alice", 9.5, 3, 950, 95, 0),
        ("carol", 4.0, 1, 400, 40, 0),
        ("bob", 2.0, 2, 500, 50, 1),
    ]
    assert summary(await store.aggregate_spend(*everything, SpendGrouping.PROVIDER)) == [
        ("anthropic", 12.0, 3, 1500, 150, 1),
        ("openai", 3.5, 3, 350, 35, 0),
    ]
    assert summary(await store.aggregate_spend(*everything, SpendGrouping.MODEL)) == [
        ("anthropic/claude", 12.0, 3, 1500, 150, 1),
        ("openai/gpt", 3.0, 2, 300, 30, 0),
        ("openai/mini", 0.5, 1, 50, 5, 0),
    ]
    # The second hour only, one caller only.
    assert summary(await store.aggregate_spend(T0 + HOUR, T0 + 2 * HOUR, SpendGrouping.MODEL)) == [
        ("openai/gpt", 2.0, 1, 200, 20, 0),
        ("anthropic/claude", 0.0, 1, 300, 30, 1),
    ]
    assert summary(await store.aggregate_spend(*everything, SpendGrouping.PROVIDER, caller="alice")) == [
        ("anthropic", 8.0, 1, 800, 80, 0),
        ("openai", 1.5, 2, 150, 15, 0),
    ]
    assert await store.aggregate_spend(T0 + 5 * HOUR, T0 + 9 * HOUR, SpendGrouping.CALLER) == []


async def test_report_lists_rows_total_and_budgets(stores: StoreFactory, clock: WallClock) -> None:
    budgets = BudgetsConfig.model_validate(
        {"global": {"daily_usd": 100.0}, "callers": {"alice": {"daily_usd": 20.0, "monthly_usd": 50.0}}}
    )
    guard = SpendGuard(await stores.open(), budgets, wall_clock=clock)
    await record_fixture_rows(guard, clock)
    held = await guard.open(Identity("alice"), "chat", "r9", 10)
    await held.reserve(candidate(1.25))
    report = await guard.report(T0, T0 + 3 * HOUR, SpendGrouping.CALLER, caller="alice")
    assert [r.key for r in report.rows] == ["alice"]
    assert report.total_cost_usd == pytest.approx(9.5)
    statuses = {(b.scope, b.period): b for b in report.budgets}
    assert set(statuses) == {("caller:alice", "daily"), ("caller:alice", "monthly"), ("global", "daily")}
    alice_daily = statuses[("caller:alice", "daily")]
    assert (alice_daily.limit_usd, alice_daily.spent_usd, alice_daily.reserved_usd) == (20.0, 9.5, 1.25)
    assert statuses[("global", "daily")].spent_usd == pytest.approx(15.5)
    everyone = await guard.report(T0, T0 + 3 * HOUR)
    assert [r.key for r in everyone.rows] == ["alice", "carol", "bob"]
    assert everyone.total_cost_usd == pytest.approx(15.5)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])  # memory forgets on exit by design
async def test_spend_and_budgets_survive_a_restart(stores: StoreFactory, clock: WallClock) -> None:
    budgets = global_daily(16.0)
    store = await stores.open()
    await record_fixture_rows(SpendGuard(store, budgets, wall_clock=clock), clock)
    before = {g: await store.aggregate_spend(T0, T0 + 3 * HOUR, g) for g in SpendGrouping}
    await store.close()
    stores.opened.remove(store)

    reopened = await stores.open()
    after = {g: await reopened.aggregate_spend(T0, T0 + 3 * HOUR, g) for g in SpendGrouping}
    assert all(before.values())
    assert after == before
    guard = SpendGuard(reopened, budgets, wall_clock=clock)
    ticket = await guard.open(Identity("dave"), "chat", "r", 10)
    with pytest.raises(BudgetExhaustedError):  # 15.50 of 16.00 spent before the restart
        await ticket.reserve(candidate(0.75))
    await ticket.reserve(candidate(0.5))


# --------------------------------------------------------------------------- rate limits


async def test_requests_per_minute(stores: StoreFactory, clock: WallClock) -> None:
    limits = RateLimitsConfig(default_caller=RateLimitSettings(requests_per_minute=3))
    guard = SpendGuard(await stores.open(), rate_limits=limits, wall_clock=clock)
    for i in range(3):
        await guard.open(Identity("alice"), "chat", f"r{i}", 10)
    with pytest.raises(RateLimitedError) as limited:
        await guard.open(Identity("alice"), "chat", "r3", 10)
    assert limited.value.scope == "caller:alice"
    assert limited.value.retry_after_s == pytest.approx(20.0, abs=0.01)
    await guard.open(Identity("bob"), "chat", "b0", 10)  # a different caller has its own bucket
    clock.advance(20.0)
    await guard.open(Identity("alice"), "chat", "r4", 10)
    with pytest.raises(RateLimitedError):
        await guard.open(Identity("alice"), "chat", "r5", 10)


async def test_tokens_per_minute_are_trued_up_after_the_call(stores: StoreFactory, clock: WallClock) -> None:
    limits = RateLimitsConfig(
        callers={"alice": RateLimitSettings(tokens_per_minute=1000)},
        tenants={"acme": RateLimitSettings(requests_per_minute=100)},
    )
    guard = SpendGuard(await stores.open(), rate_limits=limits, wall_clock=clock)
    alice = Identity("alice", "acme")
    first = await guard.open(alice, "chat", "r1", 600)
    with pytest.raises(RateLimitedError) as limited:
        await guard.open(alice, "chat", "r2", 600)
    assert limited.value.scope == "caller:alice"
    await first.settle("openai", "gpt", Usage(80, 20), Cost(0.01))  # used 100 of the 600 charged
    second = await guard.open(alice, "chat", "r2", 600)
    await second.close()  # failed: the whole charge goes back
    await guard.open(alice, "chat", "r3", 800)


async def test_a_request_larger_than_the_token_limit_passes_only_on_an_idle_bucket(
    stores: StoreFactory, clock: WallClock
) -> None:
    limits = RateLimitsConfig(default_caller=RateLimitSettings(tokens_per_minute=1000))
    guard = SpendGuard(await stores.open(), rate_limits=limits, wall_clock=clock)
    await guard.open(Identity("x"), "chat", "r1", 100)
    with pytest.raises(RateLimitedError) as limited:
        await guard.open(Identity("x"), "chat", "big", 5000)
    assert limited.value.retry_after_s == pytest.approx(6.0, abs=0.01)  # until the bucket is empty
    clock.advance(6.0)
    await guard.open(Identity("x"), "chat", "big", 5000)
    with pytest.raises(RateLimitedError):
        await guard.open(Identity("x"), "chat", "small", 10)


# -------------------------------------------------------------------------------- policy


def test_identity_resolution() -> None:
    assert resolve_identity("key-1", {"tenant": "spoofed"}, key_tenant="acme") == Identity("key-1", "acme")
    assert resolve_identity(None, {"tenant": " acme "}) == Identity("acme", "acme")
    assert resolve_identity(None, {}) == Identity(ANONYMOUS, "")
    assert resolve_identity("", None) == Identity(ANONYMOUS, "")
    assert len(resolve_identity(None, {"tenant": "t" * 1000}).caller) == 128


def test_period_windows_are_utc_days_and_months() -> None:
    assert period_window("daily", T0) == ("2025-03-14", calendar.timegm((2025, 3, 15, 0, 0, 0)))
    assert period_window("monthly", T0) == ("2025-03", calendar.timegm((2025, 4, 1, 0, 0, 0)))
    december = calendar.timegm((2024, 12, 31, 23, 59, 59))
    assert period_window("monthly", december) == ("2024-12", calendar.timegm((2025, 1, 1, 0, 0, 0)))


def test_budget_config_reads_the_global_key_and_rejects_typos() -> None:
    config = BudgetsConfig.model_validate({"global": {"daily_usd": 3}, "default_caller": {"monthly_usd": 1}})
    assert config.global_ == BudgetLimits(daily_usd=3.0)
    guard = SpendGuard(MemoryStore(), config, wall_clock=WallClock())
    assert {(b.scope, b.period) for b in guard.budgets_for(Identity("anyone"))} == {
        ("caller:anyone", "monthly"),
        ("global", "daily"),
    }
    with pytest.raises(ValueError, match="dayly_usd"):
        BudgetsConfig.model_validate({"global": {"dayly_usd": 3}})
    with pytest.raises(ValueError):
        BudgetLimits(daily_usd=-1)


def test_usd_to_nanos_rounds_reservations_up() -> None:
    assert usd_to_nanos(1e-10, round_up=True) == 1
    assert usd_to_nanos(1.0, round_up=True) == 1_000_000_000
    assert usd_to_nanos(0.1 + 0.2, round_up=True) == 300_000_000  # float noise is not a nano-dollar
    assert usd_to_nanos(2e-7) == 200
    key = BudgetKey("global", "daily", "2025-03-14", 5, 0.0)
    assert key.key == "global|daily|2025-03-14"


async def test_state_config_builds_each_backend(tmp_path: Path) -> None:
    from router_service.state import StateConfig, open_store

    with pytest.raises(ValueError, match="redis_url"):
        StateConfig(backend="redis")
    assert StateConfig().backend == "memory"  # a config without `state:` writes no file
    memory = await open_store(StateConfig())
    assert isinstance(memory, MemoryStore) and not memory.shared
    sqlite = await open_store(StateConfig(backend="sqlite", sqlite_path=str(tmp_path / "a" / "s.db")))
    assert isinstance(sqlite, SqliteStore)
    await sqlite.close()
    assert (tmp_path / "a" / "s.db").exists()
    redis_config = StateConfig.model_validate(
        {"backend": "redis", "redis_url": "redis://:secret@127.0.0.1:1/0"}
    )
    assert "secret" not in repr(redis_config)


async def test_the_ledger_keeps_cache_and_reasoning_tokens(stores: StoreFactory, clock: WallClock) -> None:
    store = await stores.open()
    guard = SpendGuard(store, BudgetsConfig(), wall_clock=clock)
    for request_id in ("r1", "r2"):
        ticket = await guard.open(Identity("alice"), "chat", request_id, 10)
        await ticket.reserve(candidate(0.01))
        usage = Usage(1000, 300, cached_input_tokens=600, cache_write_input_tokens=100, reasoning_tokens=200)
        await ticket.settle("openai", "o3", usage, Cost(0.002))
    [row] = await store.aggregate_spend(T0 - HOUR, T0 + HOUR, SpendGrouping.MODEL)
    assert (row.key, row.input_tokens, row.output_tokens) == ("openai/o3", 2000, 600)
    assert (row.cached_input_tokens, row.cache_write_input_tokens, row.reasoning_tokens) == (1200, 200, 400)


async def test_a_ledger_written_before_cache_columns_existed_still_opens(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE spend (id INTEGER PRIMARY KEY, record_id TEXT NOT NULL UNIQUE, ts REAL NOT NULL,
            caller TEXT NOT NULL, tenant TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
            operation TEXT NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
            cost_nanos INTEGER, request_id TEXT NOT NULL);
        INSERT INTO spend (record_id, ts, caller, tenant, provider, model, operation, input_tokens,
            output_tokens, cost_nanos, request_id)
            VALUES ('old', 1741946400.0, 'bob', '', 'p', 'm', 'chat', 5, 6, 7, 'r');
        """
    )
    old.close()
    store = SqliteStore(path)
    await store.start()
    try:
        await store.settle("new", [], SpendRecord(T0, "bob", "p", "m", "chat", 10, 20, 30, "r2", "", 4, 0, 9))
        [row] = await store.aggregate_spend(T0 - HOUR, T0 + HOUR, SpendGrouping.CALLER)
    finally:
        await store.close()
    assert (row.request_count, row.input_tokens, row.cached_input_tokens, row.reasoning_tokens) == (
        2,
        15,
        4,
        9,
    )


async def test_sqlite_writes_behind_yet_a_graceful_close_loses_no_acknowledged_record(
    tmp_path: Path, clock: WallClock
) -> None:
    """Settles return from memory; the file has every one of them once the store closes."""
    path = tmp_path / "ledger.sqlite3"
    # A flush interval far longer than the test: nothing reaches the file until close().
    store = SqliteStore(path, flush_interval_s=3600.0)
    await store.start()
    guard = SpendGuard(store, global_daily(100.0), wall_clock=clock)
    keys = guard.budgets_for(Identity("x"))
    for index in range(250):
        record = SpendRecord(clock(), "x", "openai", "gpt", "chat", 1, 2, usd_to_nanos(0.01), f"req-{index}")
        await store.settle(f"res-{index}", keys, record)
    await store.close()

    reopened = SqliteStore(path)
    await reopened.start()
    try:
        [row] = await reopened.aggregate_spend(T0 - HOUR, T0 + HOUR, SpendGrouping.CALLER)
        [usage] = await reopened.budget_usage(keys, clock())
    finally:
        await reopened.close()
    assert row.request_count == 250
    assert usage.spent_nanos == 250 * usd_to_nanos(0.01)


async def test_sqlite_report_reads_every_acknowledged_record_before_the_batch_is_due(
    tmp_path: Path, clock: WallClock
) -> None:
    store = SqliteStore(tmp_path / "ledger.sqlite3", flush_interval_s=3600.0)
    await store.start()
    try:
        record = SpendRecord(clock(), "x", "openai", "gpt", "chat", 1, 2, usd_to_nanos(0.5), "req")
        await store.settle("res-1", [], record)
        [row] = await store.aggregate_spend(T0 - HOUR, T0 + HOUR, SpendGrouping.CALLER)
    finally:
        await store.close()
    assert row.request_count == 1
