"""Budgets, rate limits, GetSpend and shared state over real gRPC, against a fake provider.

Two routers sharing one real `redis-server` stand in for two replicas: a budget spent through
one is exhausted for the other, and a breaker opened by one is open for the other.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import chat_model, openai_provider, router_config, running_router
from testkit.redis_server import RedisServer, redis_server_or_skip

CHAT = "/v1/chat/completions"
# $1000 / $2000 per million tokens: a request estimates about $0.11 (prompt + 50 max_tokens)
# and really costs $0.018 (the fake reports 12 + 3 tokens).
PRICE = (1000.0, 2000.0)
REAL_COST = (12 * 1000.0 + 3 * 2000.0) / 1e6


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        provider.set_default(Behaviour(text="ok", usage=(12, 3)))
        yield provider


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = redis_server_or_skip()
    yield server
    server.close()


def config(fake: FakeProvider, **sections):  # type: ignore[no-untyped-def]
    return router_config(
        [
            openai_provider("primary", fake.base_url, [chat_model("alpha", price=PRICE)], priority=10),
            openai_provider("backup", fake.base_url, [chat_model("beta", price=PRICE)], priority=20),
        ],
        **sections,
    )


def ask(tenant: str = "acme") -> rt.ChatRequest:
    return rt.ChatRequest(
        messages=[c.user("hello there")],
        generation=rt.GenerationConfig(max_tokens=50),
        metadata={"tenant": tenant},
    )


async def spend_until_refused(router: c.RouterClient, tenant: str = "acme") -> tuple[int, c.SekhaError]:
    for served in range(100):
        try:
            await router.chat(ask(tenant))
        except c.ResourceExhaustedError as refused:
            return served, refused
    raise AssertionError("the budget never ran out")


async def test_an_exhausted_budget_refuses_without_calling_a_provider(fake: FakeProvider) -> None:
    budgets = {"tenants": {"acme": {"daily_usd": 0.15}}}
    async with running_router(config(fake, budgets=budgets)) as (_, router):
        served, refused = await spend_until_refused(router)
        assert served == 3  # 3 x 0.018 spent + a 0.11 estimate would pass 0.15
        assert fake.count(CHAT) == served
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.details.reason == "BUDGET_EXHAUSTED"
        assert refused.details.quota_violations[0][0] == "tenant:acme"
        await router.chat(ask("other-tenant"))  # other callers are not affected

        report = await router.get_spend(rt.GetSpendRequest(grouping=rt.SPEND_GROUPING_MODEL))
        [row] = report.rows
        assert (row.key, row.request_count) == ("primary/alpha", served + 1)
        assert row.cost_usd == pytest.approx((served + 1) * REAL_COST)
        assert report.total_cost_usd == pytest.approx((served + 1) * REAL_COST)
        by_caller = await router.get_spend(rt.GetSpendRequest(caller="acme"))
        assert [r.key for r in by_caller.rows] == ["acme"]
        [budget] = by_caller.budgets
        assert (budget.scope, budget.period, budget.limit_usd) == ("tenant:acme", "daily", 0.15)
        assert budget.spent_usd == pytest.approx(served * REAL_COST)
        assert budget.reserved_usd == 0


async def test_rate_limit_refuses_with_retry_info(fake: FakeProvider) -> None:
    limits = {"default_caller": {"requests_per_minute": 2}}
    async with running_router(config(fake, rate_limits=limits)) as (_, router):
        await router.chat(ask())
        await router.chat(ask())
        with pytest.raises(c.ResourceExhaustedError) as limited:
            await router.chat(ask())
        assert limited.value.details.reason == "RATE_LIMITED"
        assert 0 < (limited.value.details.retry_after_s or 0) <= 30
        assert fake.count(CHAT) == 2


async def test_a_model_of_unknown_price_is_not_served_under_a_budget(fake: FakeProvider) -> None:
    providers = [openai_provider("mystery", fake.base_url, [chat_model("m-unknown", price=None)])]
    budgets = {"default_caller": {"daily_usd": 10.0}}
    async with running_router(router_config(providers, budgets=budgets)) as (_, router):
        with pytest.raises(c.FailedPreconditionError) as refused:
            await router.chat(ask())
        assert "price" in refused.value.message
        assert fake.count(CHAT) == 0
    async with running_router(router_config(providers)) as (_, router):
        reply = await router.chat(ask())  # no budget: served, and its price stays unknown
        assert reply.cost.price_unknown
        report = await router.get_spend()
        assert [(r.key, r.request_count, r.cost_usd, r.price_unknown_count) for r in report.rows] == [
            ("acme", 1, 0.0, 1)
        ]


async def test_two_routers_on_one_redis_share_budgets_and_breakers(
    fake: FakeProvider, redis_server: RedisServer
) -> None:
    state = {"backend": "redis", "redis_url": redis_server.url, "key_prefix": f"t{uuid.uuid4().hex[:8]}"}
    sections = {
        "state": state,
        "budgets": {"tenants": {"acme": {"daily_usd": 0.15}}},
        "circuit_breaker": {"failure_threshold": 2, "minimum_calls": 2, "reset_timeout_s": 300},
    }
    async with (
        running_router(config(fake, **sections)) as (app_a, router_a),
        running_router(config(fake, **sections)) as (app_b, router_b),
    ):
        served, _ = await spend_until_refused(router_a)
        assert served == 3
        with pytest.raises(c.ResourceExhaustedError):  # the other replica sees the same budget
            await router_b.chat(ask())
        assert fake.count(CHAT) == served

        fake.script("alpha", Behaviour(status=503), Behaviour(status=503))
        for _ in range(2):
            reply = await router_a.chat(ask("other"))  # alpha fails, beta serves
            assert reply.attempts[-1].provider_id == "backup"
        await app_a.breakers.sync_once()
        await app_b.breakers.sync_once()
        reply = await router_b.chat(ask("other"))
        assert [a.provider_id for a in reply.attempts] == ["backup"]  # B never tried primary
        assert fake.count(CHAT, "alpha") == served + 2


async def test_failed_and_broken_requests_hold_no_reservation_and_bill_what_was_streamed(
    fake: FakeProvider,
) -> None:
    budgets = {"tenants": {"acme": {"daily_usd": 5.0}}}
    async with running_router(config(fake, budgets=budgets)) as (_, router):
        fake.script("alpha", Behaviour(status=503), Behaviour(status=503))
        fake.script("beta", Behaviour(status=503))
        with pytest.raises(c.UnavailableError):  # alpha, beta, alpha: three failed attempts
            await router.chat(ask())
        fake.script("alpha", Behaviour(text="one two three four", die_after_chunks=2))
        request = rt.StreamChatRequest(
            messages=[c.user("hello there")],
            generation=rt.GenerationConfig(max_tokens=50),
            metadata={"tenant": "acme"},
        )
        with pytest.raises(c.UnavailableError):
            async for _ in router.stream_chat(request):
                pass
        report = await router.get_spend(rt.GetSpendRequest(caller="acme"))
        [budget] = report.budgets
        assert budget.reserved_usd == 0  # the failed attempts gave their reservations back
        [row] = report.rows  # only the broken stream: its output was generated, so it is billed
        assert row.request_count == 1
        assert row.output_tokens > 0
        assert budget.spent_usd == pytest.approx(row.cost_usd) and row.cost_usd > 0
