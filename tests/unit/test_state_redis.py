"""State shared by router replicas through a real Redis: breakers, rate limits, outage and recovery.

Each test's "replicas" are separate `RedisStore` instances (own connection pools) on one
`redis-server` this module starts on a free port; time is an injected wall clock. The breaker
sync task is driven by calling `sync_once()` so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import calendar
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from router_service.breaker import BreakerState, CircuitBreaker
from router_service.config import CircuitBreakerConfig
from router_service.domain import Candidate, Cost, Usage
from router_service.shared_breaker import SharedBreakerRegistry
from router_service.spend import BudgetsConfig, Identity, RateLimitsConfig, RateLimitSettings, SpendGuard
from router_service.state import MemoryStore, SpendGrouping, SpendRecord
from router_service.state.base import (
    CLOSED_RECORD,
    BreakerEvent,
    RateLimit,
    apply_breaker_event,
    usd_to_nanos,
)
from router_service.state.redis_store import RedisStore, spend_buckets
from sekha_runtime.errors import BudgetExhaustedError, RateLimitedError, UnavailableError
from testkit.redis_server import RedisServer, redis_server_or_skip

T0 = float(calendar.timegm((2025, 3, 14, 10, 0, 0)))
HOUR = 3600.0

BREAKER = CircuitBreakerConfig(
    failure_threshold=3,
    failure_rate_threshold=0.5,
    window_size=10,
    minimum_calls=6,
    reset_timeout_s=30.0,
    half_open_max_probes=1,
    slow_call_threshold_s=5.0,
)
GROWING = BREAKER.model_copy(update={"initial_reset_timeout_s": 2.0})  # each opening lasts longer


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


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


class Replicas:
    """Stores sharing one key prefix on one server, as router replicas would."""

    def __init__(self, server: RedisServer, clock: WallClock) -> None:
        self.server = server
        self.clock = clock
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.stores: list[RedisStore] = []

    async def store(self, **kwargs: Any) -> RedisStore:
        options: dict = {"timeout_s": 5.0, "reconnect_interval_s": 0.05, "wall_clock": self.clock}
        options.update(kwargs)
        store = RedisStore(self.server.url, prefix=self.prefix, **options)
        await store.start()
        self.stores.append(store)
        return store

    async def breakers(self, n: int, config: CircuitBreakerConfig = BREAKER) -> list[SharedBreakerRegistry]:
        return [
            SharedBreakerRegistry(
                {"p": config}, await self.store(), wall_clock=self.clock, sync_interval_s=0.1
            )
            for _ in range(n)
        ]

    async def close(self) -> None:
        for store in self.stores:
            await store.close()


@pytest.fixture
async def replicas(redis_server: RedisServer, clock: WallClock) -> AsyncIterator[Replicas]:
    group = Replicas(redis_server, clock)
    yield group
    await group.close()


async def sync(*registries: SharedBreakerRegistry) -> None:
    for registry in registries:
        await registry.sync_once()


# ------------------------------------------------------------------------------ breakers


async def test_failures_seen_by_one_replica_open_the_breaker_for_the_other(replicas: Replicas) -> None:
    a, b = await replicas.breakers(2)
    seen_by_b: list[tuple[str, BreakerState, BreakerState]] = []
    b.add_listener(lambda name, old, new: seen_by_b.append((name, old, new)))
    a.get("p").record_failure("5xx")
    a.get("p").record_failure("timeout")
    b.get("p").record_failure("5xx")
    # Neither replica alone reached the threshold of three consecutive failures...
    assert a.get("p").state is BreakerState.CLOSED
    assert b.get("p").state is BreakerState.CLOSED
    await sync(a, b)
    # ...but the shared count did: B (whose failure was the third) sees it open at once, A after its sync.
    assert b.get("p").state is BreakerState.OPEN
    assert not b.is_available("p")
    assert a.get("p").state is BreakerState.CLOSED
    await sync(a)
    assert a.get("p").state is BreakerState.OPEN
    assert not a.get("p").try_acquire()
    assert seen_by_b == [("p", BreakerState.CLOSED, BreakerState.OPEN)]
    snapshot = a.get("p").snapshot()
    assert (snapshot.consecutive_failures, snapshot.window_calls) == (3, 3)
    assert snapshot.seconds_until_half_open == pytest.approx(30.0)
    assert a.seconds_until_available(["p"]) == pytest.approx(30.0)


async def test_a_replica_with_no_traffic_yet_learns_the_state_on_sync(replicas: Replicas) -> None:
    (a,) = await replicas.breakers(1)
    for _ in range(3):
        a.get("p").record_failure("5xx")
    await sync(a)
    late = SharedBreakerRegistry({"p": BREAKER}, await replicas.store(), wall_clock=replicas.clock)
    await late.start()  # adopts the shared state before serving
    try:
        assert late.get("p").state is BreakerState.OPEN
    finally:
        await late.stop()


@pytest.mark.parametrize(("max_probes", "replica_count"), [(1, 2), (2, 3)])
async def test_half_open_probes_are_bounded_across_replicas(
    replicas: Replicas, clock: WallClock, max_probes: int, replica_count: int
) -> None:
    config = BREAKER.model_copy(update={"half_open_max_probes": max_probes})
    registries = await replicas.breakers(replica_count, config)
    for _ in range(3):
        registries[0].get("p").record_failure("5xx")
    await sync(*registries)
    assert all(r.get("p").state is BreakerState.OPEN for r in registries)

    clock.advance(31.0)
    admitted = 0
    for _round in range(3):
        # Every replica is asked for the provider, then syncs (concurrently, like real replicas).
        for registry in registries:
            registry.is_available("p")
        await asyncio.gather(*(r.sync_once() for r in registries))
        for registry in registries:
            for _ in range(3):
                admitted += registry.get("p").try_acquire()
    assert admitted == max_probes

    # A probe succeeds: its replica closes the breaker, the others follow on their next sync.
    prober = next(r for r in registries if r.get("p")._cluster_probes)
    prober.get("p").record_success(0.1)
    assert prober.get("p").state is BreakerState.CLOSED
    await sync(prober)
    await sync(*registries)
    for registry in registries:
        assert registry.get("p").state is BreakerState.CLOSED
        assert registry.get("p").try_acquire()


async def test_a_failed_probe_reopens_the_breaker_for_every_replica(
    replicas: Replicas, clock: WallClock
) -> None:
    a, b = await replicas.breakers(2)
    for _ in range(3):
        a.get("p").record_failure("5xx")
    await sync(a, b)
    clock.advance(31.0)
    a.is_available("p")
    await sync(a)
    assert a.get("p").try_acquire()
    a.get("p").record_failure("429", retry_after_s=120.0)
    await sync(a, b)
    for registry in (a, b):
        breaker = registry.get("p")
        assert breaker.state is BreakerState.OPEN
        # Retry-After outlasts the reset timeout, so it decides when probing may resume.
        assert breaker.seconds_until_available() == pytest.approx(120.0)
    # The permit of the earlier open period admits nothing in the new one.
    clock.advance(121.0)
    b.is_available("p")
    await sync(b)
    assert b.get("p").try_acquire()
    assert not a.get("p").try_acquire()


async def test_an_idle_probe_permit_goes_to_a_replica_with_traffic(
    replicas: Replicas, clock: WallClock
) -> None:
    a, b = await replicas.breakers(2)
    for _ in range(3):
        a.get("p").record_failure("5xx")
    await sync(a, b)
    clock.advance(31.0)
    a.is_available("p")
    await sync(a)  # A takes the permit, but its caller went elsewhere
    assert a.is_available("p")
    b.is_available("p")
    await sync(b)
    assert not b.get("p").try_acquire()
    clock.advance(1.0)  # the permit hold time
    await sync(a)  # A gives the idle permit back...
    assert not a.is_available("p")
    b.is_available("p")
    await sync(b)  # ...and B, which is being asked, takes it
    assert b.get("p").try_acquire()


async def test_a_released_probe_permit_can_be_taken_again(replicas: Replicas, clock: WallClock) -> None:
    a, b = await replicas.breakers(2)
    for _ in range(3):
        a.get("p").record_failure("5xx")
    await sync(a, b)
    clock.advance(31.0)
    a.is_available("p")
    await sync(a)
    assert a.get("p").try_acquire()
    a.get("p").release()  # the caller cancelled: not an outcome, the permit goes back
    b.is_available("p")
    await sync(a, b)
    # The permit was not lost: one replica (either) may probe again, and only one.
    assert a.get("p").try_acquire() + b.get("p").try_acquire() == 1


async def test_the_sync_task_runs_in_the_background(replicas: Replicas) -> None:
    a, b = await replicas.breakers(2)
    await a.start()
    await b.start()
    try:
        for _ in range(3):
            a.get("p").record_failure("5xx")  # wakes A's sync task at once
        for _ in range(200):  # B's task polls every 0.1 s; wait for it, however slow the machine
            if b.get("p").state is BreakerState.OPEN:
                break
            await asyncio.sleep(0.05)
        assert b.get("p").state is BreakerState.OPEN
    finally:
        await a.stop()
        await b.stop()


def random_events(rng: random.Random, start: float, count: int) -> list[BreakerEvent]:
    events = []
    now = start
    failure_rate = rng.choice([0.2, 0.5, 0.8])
    for _ in range(count):
        now += rng.choice([0.0, 0.5, 3.0, 12.0, 31.0])
        failed = rng.random() < failure_rate
        retry_after = rng.choice([None, None, None, 5.0, 45.0]) if failed else None
        events.append(BreakerEvent(failed, now, "5xx" if failed else "", retry_after))
    return events


async def test_the_lua_breaker_matches_the_python_state_machine(replicas: Replicas) -> None:
    redis_store = await replicas.store()
    memory = MemoryStore()
    rng = random.Random(1234)
    configs = [
        BREAKER,
        BREAKER.model_copy(update={"failure_threshold": 10, "minimum_calls": 4, "window_size": 5}),
        GROWING,
    ]
    for case in range(60):
        config = configs[case % 3]
        events = random_events(rng, T0, 30)
        name = f"b{case}"
        while events:
            batch = events[: rng.randint(1, 3)]
            events = events[len(batch) :]
            expected = await memory.breaker_events(name, batch, config)
            got = await redis_store.breaker_events(name, batch, config)
            assert got == expected, (case, batch)
        assert await redis_store.breaker_load(name) == await memory.breaker_load(name)


def test_the_state_machine_agrees_with_the_local_breaker_on_its_own_rules() -> None:
    """Without the documented difference (failures after the reset timeout with no probe), the
    pure function and router_service.breaker.CircuitBreaker walk through the same states."""
    rng = random.Random(99)
    for case in range(200):
        config = (BREAKER, GROWING)[case % 2]
        clock = WallClock()
        local = CircuitBreaker("p", config, clock=clock, wall_clock=clock)
        record = CLOSED_RECORD
        for event in random_events(rng, T0, 25):
            clock.now = event.at
            if not local.try_acquire():  # a call the breaker refuses has no outcome
                assert not (record.state == "closed" or record.half_open(clock.now))
                continue
            if event.failed:
                local.record_failure(event.kind, event.retry_after_s)
            else:
                local.record_success(0.1)
            record = apply_breaker_event(record, event, config)
            assert local.seconds_until_available() == pytest.approx(
                max(0.0, record.open_until - clock.now) if record.state == "open" else 0.0
            )
            expected = {"closed": BreakerState.CLOSED, "open": BreakerState.OPEN}[record.state]
            if record.half_open(clock.now):
                expected = BreakerState.HALF_OPEN
            assert local.state is expected


# --------------------------------------------------------------------------- rate limits


async def test_rate_limits_hold_across_replicas(replicas: Replicas, clock: WallClock) -> None:
    limits = RateLimitsConfig(default_caller=RateLimitSettings(requests_per_minute=5))
    # Time moves by the test's clock here, so the stores measure on the time the callers pass.
    a = SpendGuard(await replicas.store(rate_clock="caller"), rate_limits=limits, wall_clock=clock)
    b = SpendGuard(await replicas.store(rate_clock="caller"), rate_limits=limits, wall_clock=clock)
    for i in range(3):
        await a.open(Identity("alice"), "chat", f"a{i}", 10)
    for i in range(2):
        await b.open(Identity("alice"), "chat", f"b{i}", 10)
    for guard in (a, b):
        with pytest.raises(RateLimitedError) as limited:
            await guard.open(Identity("alice"), "chat", "over", 10)
        assert limited.value.retry_after_s == pytest.approx(12.0, abs=0.01)
    clock.advance(12.0)
    await b.open(Identity("alice"), "chat", "b2", 10)
    with pytest.raises(RateLimitedError):
        await a.open(Identity("alice"), "chat", "a3", 10)


async def test_the_lua_rate_limiter_matches_the_python_one(replicas: Replicas) -> None:
    redis_store = await replicas.store(rate_clock="caller")  # both measured on the same given times
    memory = MemoryStore()
    rng = random.Random(5)
    now = T0
    for _ in range(400):
        now += rng.choice([0, 1, 50, 200, 1000, 7000]) / 1000
        limits = [
            RateLimit("k:rpm", 120, 60.0, 1),
            RateLimit("k:tpm", 1000, 60.0, rng.choice([1, 100, 400, 1500])),
        ][: rng.randint(1, 2)]
        if rng.random() < 0.2:
            refund = [RateLimit("k:tpm", 1000, 60.0, rng.choice([50, 300]))]
            await memory.refund_rate(refund, now)
            await redis_store.refund_rate(refund, now)
            continue
        expected = await memory.acquire_rate(limits, now)
        got = await redis_store.acquire_rate(limits, now)
        assert got.allowed == expected.allowed
        assert got.retry_after_s == pytest.approx(expected.retry_after_s, abs=1e-5)
        assert (got.refused.key if got.refused else None) == (
            expected.refused.key if expected.refused else None
        )


async def test_a_refusal_never_waits_less_than_the_real_wait_when_replica_clocks_disagree(
    replicas: Replicas,
) -> None:
    """Replicas on other hosts have other clocks; the limit is measured on Redis's, so a replica
    whose clock runs ahead cannot be told to retry before the slot really frees up."""
    limits = RateLimitsConfig(default_caller=RateLimitSettings(requests_per_minute=1))
    on_time = SpendGuard(await replicas.store(), rate_limits=limits, wall_clock=time.time)
    ahead = SpendGuard(await replicas.store(), rate_limits=limits, wall_clock=lambda: time.time() + 30.0)
    behind = SpendGuard(await replicas.store(), rate_limits=limits, wall_clock=lambda: time.time() - 30.0)
    await on_time.open(Identity("alice"), "chat", "first", 10)  # the one request of this minute
    for guard in (ahead, behind, on_time):
        with pytest.raises(RateLimitedError) as limited:
            await guard.open(Identity("alice"), "chat", "next", 10)
        # The slot frees 60 s after the first request (less the moments this test has run).
        assert 55.0 < limited.value.retry_after_s <= 60.0


async def test_concurrent_refusals_across_replicas_never_wait_less_than_the_real_wait(
    replicas: Replicas,
) -> None:
    """Many callers on two replicas at once: each refusal's wait reaches at least the moment the
    limit (2 per minute, so 30 s apart) admits the next request, measured on Redis's clock."""
    limits = RateLimitsConfig(default_caller=RateLimitSettings(requests_per_minute=2))
    guards = [SpendGuard(await replicas.store(), rate_limits=limits) for _ in range(2)]
    client = redis_asyncio.Redis.from_url(replicas.server.url)
    try:
        seconds, micros = await client.time()
        started = seconds + micros / 1e6

        async def attempt(i: int) -> float | None:
            try:
                await guards[i % 2].open(Identity("bob"), "chat", f"r{i}", 10)
                return None
            except RateLimitedError as refused:
                return refused.retry_after_s

        waits = await asyncio.gather(*(attempt(i) for i in range(40)))
        seconds, micros = await client.time()
        elapsed = seconds + micros / 1e6 - started
    finally:
        await client.aclose()
    refusals = [w for w in waits if w is not None]
    assert len(refusals) == 38  # a burst of two, then every other caller waits
    # The next slot frees 30 s after the bucket filled, which was within `elapsed` of the start.
    assert all(w >= 30.0 - elapsed - 0.001 for w in refusals), min(refusals)


# -------------------------------------------------------------------------------- ledger


def test_spend_buckets_use_whole_days_inside_the_range_and_hours_at_its_edges() -> None:
    day = 86400.0
    start = T0 + 1800  # 10:30 on the 14th
    buckets = spend_buckets(start, T0 - 10 * HOUR + 3 * day + 2 * HOUR)  # to 02:00 on the 17th
    assert buckets[0] == ("h", "2025031410")
    assert buckets[13] == ("h", "2025031423")
    assert buckets[14:16] == [("d", "20250315"), ("d", "20250316")]
    assert buckets[16:] == [("h", "2025031700"), ("h", "2025031701")]


async def test_redis_ranges_are_rounded_outward_to_whole_hours(replicas: Replicas, clock: WallClock) -> None:
    store = await replicas.store()
    await store.record_spend(
        SpendRecord(T0 + 600, "alice", "openai", "gpt", "chat", 1, 1, usd_to_nanos(0.5), "r1"), "id-1"
    )
    [row] = await store.aggregate_spend(T0 + 1800, T0 + 2400, SpendGrouping.CALLER)  # 10:30-10:40
    assert (row.key, row.request_count) == ("alice", 1)
    assert await store.aggregate_spend(T0 + HOUR, T0 + 2 * HOUR, SpendGrouping.CALLER) == []
    [raw] = await store.raw_rows()
    assert (raw["caller"], raw["request_id"], raw["cost_nanos"]) == ("alice", "r1", "500000000")


async def test_counters_expire(replicas: Replicas, clock: WallClock) -> None:
    store = await replicas.store()
    guard = SpendGuard(
        store,
        BudgetsConfig.model_validate({"global": {"daily_usd": 5.0}}),
        RateLimitsConfig(default_caller=RateLimitSettings(requests_per_minute=60)),
        wall_clock=clock,
    )
    ticket = await guard.open(Identity("x"), "chat", "r", 10)
    await ticket.reserve(Candidate("openai", "gpt", 50, 1.0))
    await ticket.settle("openai", "gpt", Usage(1, 1), Cost(1.0))
    client = redis_asyncio.Redis.from_url(replicas.server.url, decode_responses=True)
    try:
        keys = await client.keys(f"{replicas.prefix}:*")
        ttls = {key: await client.ttl(key) for key in keys}
    finally:
        await client.aclose()
    # Everything but the capped raw log expires by itself.
    assert all(ttl > 0 for key, ttl in ttls.items() if not key.endswith(":s:log")), ttls
    budget_ttl = ttls[f"{replicas.prefix}:b:global|daily|2025-03-14"]
    assert 14 * HOUR + 86400 - 60 < budget_ttl <= 14 * HOUR + 86400 + 2  # end of day plus a day's grace


# -------------------------------------------------------------------------------- outage


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    server = redis_server_or_skip()
    yield server
    server.close()


async def test_a_redis_outage_falls_back_to_local_state_and_resyncs(
    own_server: RedisServer, clock: WallClock
) -> None:
    group = Replicas(own_server, clock)
    try:
        store = await group.store(timeout_s=1.0)
        health: list[bool] = []
        store.add_health_listener(health.append)
        guard = SpendGuard(
            store,
            BudgetsConfig.model_validate({"global": {"daily_usd": 10.0}}),
            RateLimitsConfig(default_caller=RateLimitSettings(requests_per_minute=100)),
            wall_clock=clock,
        )
        registry = SharedBreakerRegistry({"p": BREAKER}, store, wall_clock=clock)
        breaker = registry.get("p")
        ticket = await guard.open(Identity("x"), "chat", "before", 10)
        await ticket.reserve(Candidate("openai", "gpt", 50, 2.0))
        await ticket.settle("openai", "gpt", Usage(1, 1), Cost(2.0))

        own_server.stop()
        # The data path keeps working on local state: nothing raises to the caller.
        ticket = await guard.open(Identity("x"), "chat", "during", 10)
        assert not store.healthy
        assert health == [False]
        await ticket.reserve(Candidate("openai", "gpt", 50, 3.0))
        await ticket.settle("openai", "gpt", Usage(30, 3), Cost(3.0))
        over = await guard.open(Identity("x"), "chat", "over", 10)
        with pytest.raises(BudgetExhaustedError):  # 2 before + 3 during: the local counter knows
            await over.reserve(Candidate("openai", "gpt", 50, 5.5))
        await over.close()
        for _ in range(3):
            breaker.record_failure("5xx")
        await registry.sync_once()  # no store: the breaker runs on its own
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(UnavailableError):  # a partial report would look complete
            await guard.report(T0, T0 + HOUR)
        assert store.pending_ops == 1

        own_server.start()  # same port, empty (no persistence)
        for _ in range(100):
            if await store.try_recover():
                break
            await asyncio.sleep(0.05)
        assert store.healthy
        assert health == [False, True]
        assert store.pending_ops == 0
        await registry.sync_once()  # the breaker's outage outcomes reach the store

        other = await group.store()  # another replica sees what happened during the outage
        rows = await other.aggregate_spend(T0, T0 + HOUR, SpendGrouping.CALLER)
        assert [(r.key, r.cost_usd, r.request_count, r.input_tokens) for r in rows] == [("x", 3.0, 1, 30)]
        [usage] = await other.budget_usage(guard.budgets_for(Identity("x")), clock())
        assert (usage.spent_nanos, usage.reserved_nanos) == (usd_to_nanos(3.0), 0)
        peer = SharedBreakerRegistry({"p": BREAKER}, other, wall_clock=clock)
        await peer.sync_once()
        assert peer.get("p").state is BreakerState.OPEN
    finally:
        await group.close()


async def test_a_store_started_while_redis_is_down_serves_locally(
    own_server: RedisServer, clock: WallClock
) -> None:
    own_server.stop()
    store = RedisStore(
        own_server.url, prefix="down", timeout_s=0.5, reconnect_interval_s=0.05, wall_clock=clock
    )
    try:
        await store.start()
        assert not store.healthy
        guard = SpendGuard(
            store, BudgetsConfig.model_validate({"global": {"daily_usd": 1.0}}), wall_clock=clock
        )
        ticket = await guard.open(Identity("x"), "chat", "r", 10)
        await ticket.reserve(Candidate("openai", "gpt", 50, 0.75))
        second = await guard.open(Identity("x"), "chat", "r2", 10)
        with pytest.raises(BudgetExhaustedError):
            await second.reserve(Candidate("openai", "gpt", 50, 0.5))
        own_server.start()
        for _ in range(200):  # the background reconnect task notices on its own
            if store.healthy:
                break
            await asyncio.sleep(0.05)
        assert store.healthy
        # A reservation made locally during the outage settles into Redis afterwards.
        await ticket.settle("openai", "gpt", Usage(1, 1), Cost(0.5))
        [usage] = await store.budget_usage(guard.budgets_for(Identity("x")), clock())
        assert (usage.spent_nanos, usage.reserved_nanos) == (usd_to_nanos(0.5), 0)
    finally:
        await store.close()


async def test_without_the_store_a_shared_breaker_probes_on_its_own(clock: WallClock) -> None:
    store = MemoryStore()
    registry = SharedBreakerRegistry({"p": BREAKER}, store, wall_clock=clock)
    breaker = registry.get("p")
    for _ in range(3):
        breaker.record_failure("5xx")
    store._set_healthy(False)  # what a RedisStore does when Redis stops answering
    await registry.sync_once()
    assert breaker.state is BreakerState.OPEN
    clock.advance(31.0)
    assert breaker.is_available()
    assert breaker.try_acquire()  # a local permit: no store to ask
    assert not breaker.try_acquire()  # but still at most half_open_max_probes of them
    breaker.record_success(0.1)
    assert breaker.state is BreakerState.CLOSED
    store._set_healthy(True)
    await registry.sync_once()  # recent outcomes reach the store once it is back...
    shared = await store.breaker_load("p")
    # ...and those older than the reset timeout (the three failures) are dropped as stale.
    assert (shared.state, shared.window, shared.generation) == ("closed", (False,), 0)
    assert breaker.state is BreakerState.CLOSED
