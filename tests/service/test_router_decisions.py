"""The Router's decision plane over real gRPC: Route, ListModels, GetProviderStatus, errors, health."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.harness import chat_model, embedding_model, openai_provider, router_config, running_router

BASE = "http://127.0.0.1:9"  # never called: Route makes no provider call


def _config(**sections):  # type: ignore[no-untyped-def]
    return router_config(
        [
            openai_provider(
                "cheap",
                BASE,
                [
                    chat_model("small-a", tasks=("chat_small", "chat_smart"), price=(0.1, 0.2)),
                    chat_model("smart-b", price=(3.0, 15.0)),
                ],
                priority=10,
            ),
            openai_provider(
                "premium",
                BASE,
                [
                    chat_model(
                        "vision-c", tasks=("chat_smart", "vision"), price=(2.0, 8.0), capabilities=["vision"]
                    ),
                    chat_model("mystery", price=None),
                    embedding_model("embed-768", 768),
                ],
                priority=20,
            ),
        ],
        **sections,
    )


def _route(task: int = rt.TASK_CHAT_SMART, **routing) -> rt.RouteRequest:  # type: ignore[no-untyped-def]
    return rt.RouteRequest(
        routing=rt.RoutingPreferences(task=task, **routing),
        messages=[c.user("How do I sort a list in Python?")],
        max_tokens=100,
    )


async def test_health_serving_and_route_orders_by_priority_then_cost() -> None:
    async with running_router(_config()) as (_, router):
        assert await router.health() == "SERVING"
        assert await router.health("sekha.router.v1.RouterService") == "SERVING"
        decision = (await router.route(_route())).decision
        order = [(decision.chosen.provider_id, decision.chosen.model)] + [
            (f.provider_id, f.model) for f in decision.fallbacks
        ]
        # priority 10 first (cheaper model of the two first), then priority 20 by cost, unknown price last
        assert order == [
            ("cheap", "small-a"),
            ("cheap", "smart-b"),
            ("premium", "vision-c"),
            ("premium", "mystery"),
        ]
        assert decision.estimated_output_tokens == 100
        assert decision.estimated_input_tokens > 5
        expected = (decision.estimated_input_tokens * 0.1 + 100 * 0.2) / 1e6
        assert decision.chosen.estimated_cost_usd == pytest.approx(expected)
        assert decision.fallbacks[-1].price_unknown and not decision.fallbacks[-1].HasField(
            "estimated_cost_usd"
        )
        assert "chat_smart" in decision.reason


async def test_task_match_capability_and_preferred_model() -> None:
    async with running_router(_config()) as (_, router):
        small = (await router.route(_route(rt.TASK_CHAT_SMALL))).decision
        assert [small.chosen.model] + [f.model for f in small.fallbacks] == ["small-a"]

        vision = (await router.route(_route(required_capabilities=[rt.CAPABILITY_VISION]))).decision
        assert vision.chosen.model == "vision-c" and not vision.fallbacks
        assert {r.model for r in vision.rejected} >= {"small-a", "smart-b"}

        preferred = (await router.route(_route(preferred_model="premium/vision-c"))).decision
        assert preferred.chosen.model == "vision-c"
        assert "small-a" in [f.model for f in preferred.fallbacks]

        only = (await router.route(_route(preferred_model="smart-b", disable_fallback=True))).decision
        assert only.chosen.model == "smart-b" and not only.fallbacks

        embed = (
            await router.route(
                rt.RouteRequest(routing=rt.RoutingPreferences(task=rt.TASK_EMBEDDING), inputs=["x"])
            )
        ).decision
        assert embed.chosen.model == "embed-768" and embed.estimated_output_tokens == 0


async def test_route_errors_carry_the_reason() -> None:
    async with running_router(_config()) as (_, router):
        with pytest.raises(c.FailedPreconditionError) as no_task:
            await router.route(_route(rt.TASK_AUDIO))
        assert no_task.value.details.precondition_violations
        assert no_task.value.details.reason == "NO_ROUTE"

        with pytest.raises(c.FailedPreconditionError) as lacking:
            await router.route(
                _route(preferred_model="smart-b", required_capabilities=[rt.CAPABILITY_VISION])
            )
        assert "smart-b" in lacking.value.message

        with pytest.raises(c.NotFoundError) as unknown:
            await router.route(_route(preferred_model="nope-9000"))
        assert unknown.value.details.resource == ("model", "nope-9000")

        with pytest.raises(c.FailedPreconditionError) as too_dear:
            await router.route(_route(max_cost_usd=1e-9))
        assert too_dear.value.details.reason == "COST_LIMIT_EXCEEDED"


async def test_price_unknown_model_never_chosen_under_a_cost_ceiling() -> None:
    async with running_router(_config()) as (_, router):
        decision = (await router.route(_route(preferred_model="mystery"))).decision
        assert decision.chosen.model == "mystery" and decision.chosen.price_unknown
        capped = (await router.route(_route(preferred_model="mystery", max_cost_usd=1.0))).decision
        models = [capped.chosen.model] + [f.model for f in capped.fallbacks]
        assert "mystery" not in models
        assert any(r.model == "mystery" for r in capped.rejected)


async def test_open_breakers_are_skipped_then_unavailable_with_retry_info() -> None:
    config = _config(circuit_breaker={"failure_threshold": 2, "reset_timeout_s": 30})
    async with running_router(config) as (app, router):
        for _ in range(2):
            assert app.breakers.get("cheap").try_acquire()
            app.breakers.get("cheap").record_failure("http_503")
        decision = (await router.route(_route())).decision
        assert decision.chosen.provider_id == "premium"
        status = (
            await router.get_provider_status(rt.GetProviderStatusRequest(provider_id="cheap"))
        ).providers[0]
        assert status.breaker.state == rt.BREAKER_STATE_OPEN
        assert status.breaker.consecutive_failures == 2
        assert status.breaker.HasField("half_open_time")

        for _ in range(2):
            assert app.breakers.get("premium").try_acquire()
            app.breakers.get("premium").record_failure("timeout")
        with pytest.raises(c.UnavailableError) as exc:
            await router.route(_route())
        assert exc.value.details.reason == "ALL_BREAKERS_OPEN"
        assert exc.value.details.retry_after_s is not None and 0 < exc.value.details.retry_after_s <= 30


async def test_list_models_paginates_and_reports_state() -> None:
    async with running_router(_config()) as (_, router):
        seen, token, pages = [], "", 0
        while True:
            page = await router.list_models(rt.ListModelsRequest(page_size=2, page_token=token))
            seen.extend((m.provider_id, m.model) for m in page.models)
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert pages == 3
        assert seen == sorted(seen) and len(seen) == 5
        vision = await router.list_models(rt.ListModelsRequest(task=rt.TASK_VISION))
        assert [m.model for m in vision.models] == ["vision-c"]
        model = vision.models[0]
        assert rt.CAPABILITY_VISION in model.capabilities
        assert model.price.input_usd_per_million_tokens == 2.0 and model.available
        assert model.breaker_state == rt.BREAKER_STATE_CLOSED
        mystery = next(m for m in (await router.list_models()).models if m.model == "mystery")
        assert mystery.price_unknown
        with pytest.raises(c.InvalidArgumentError) as bad:
            await router.list_models(rt.ListModelsRequest(page_token="!!not-a-token"))
        assert bad.value.details.field_violations[0][0] == "page_token"


async def test_bad_requests_name_the_field() -> None:
    async with running_router(_config()) as (_, router):
        with pytest.raises(c.InvalidArgumentError) as exc:
            await router.chat(
                rt.ChatRequest(
                    messages=[rt.ChatMessage(role=rt.ROLE_USER, parts=[rt.ContentPart()])],
                    generation=rt.GenerationConfig(temperature=5.0),
                )
            )
        fields = {f for f, _ in exc.value.details.field_violations}
        assert fields == {"messages[0].parts[0]", "generation.temperature"}
        with pytest.raises(c.InvalidArgumentError) as empty:
            await router.chat(rt.ChatRequest())
        assert empty.value.details.field_violations[0][0] == "messages"


async def test_get_spend_on_an_empty_ledger() -> None:
    async with running_router(_config()) as (_, router):
        report = await router.get_spend()
        assert list(report.rows) == [] and report.total_cost_usd == 0
        with pytest.raises(c.InvalidArgumentError) as bad:
            await router.get_spend(
                rt.GetSpendRequest(start_time=Timestamp(seconds=200), end_time=Timestamp(seconds=100))
            )
        assert bad.value.details.field_violations[0][0] == "end_time"


async def test_unknown_provider_status_is_not_found() -> None:
    async with running_router(_config()) as (_, router):
        with pytest.raises(c.NotFoundError):
            await router.get_provider_status(rt.GetProviderStatusRequest(provider_id="ghost"))
        everyone = await router.get_provider_status()
        assert [p.provider_id for p in everyone.providers] == ["cheap", "premium"]
        assert all(p.enabled and p.breaker.state == rt.BREAKER_STATE_CLOSED for p in everyone.providers)
