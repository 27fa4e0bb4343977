"""Routing rules and the errors for an empty candidate list (static model info, fake clock)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from router_service.breaker import BreakerRegistry, BreakerState
from router_service.config import RouterConfig
from router_service.domain import Capability, Price, RoutingPreferences, Task
from router_service.model_registry import Registry, StaticModelInfo
from router_service.pricing import PriceTable
from router_service.routing import Router
from sekha_runtime.errors import CostLimitExceededError, NoRouteError, NotFoundError, UnavailableError

VISION = Capability.VISION
TOOLS = Capability.TOOLS


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    router: Router
    registry: Registry
    breakers: BreakerRegistry
    clock: FakeClock

    def decide(
        self,
        task: Task = Task.CHAT_SMART,
        input_tokens: int = 1000,
        output_tokens: int = 500,
        has_images: bool = False,
        **prefs: Any,
    ) -> Any:
        return self.router.decide(task, RoutingPreferences(**prefs), input_tokens, output_tokens, has_images)

    def open_breaker(self, provider_id: str) -> None:
        breaker = self.breakers.get(provider_id)
        for _ in range(breaker.config.failure_threshold):
            breaker.record_failure("5xx")
        assert breaker.state is BreakerState.OPEN


def model(
    model_id: str,
    tasks: list[str],
    price: tuple[float, float] | None = (1.0, 2.0),
    caps: list[str] | None = None,
    context: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": model_id, "tasks": tasks, "capabilities": caps or []}
    if price is not None:
        spec["price"] = {"input_per_million": price[0], "output_per_million": price[1]}
    if context is not None:
        spec["context_window"] = context
    return spec


def build(providers: list[dict[str, Any]], max_candidates: int | None = None, **breaker: Any) -> Setup:
    source = StaticModelInfo({})  # everything the routing needs is in the config
    for p in providers:
        p.setdefault("type", "openai")
    raw: dict[str, Any] = {"providers": providers}
    if breaker:
        raw["circuit_breaker"] = breaker
    cfg = RouterConfig.model_validate(raw, context={"model_info": source})
    registry = Registry.from_config(cfg, source)
    clock = FakeClock()
    breakers = BreakerRegistry.from_config(cfg, clock=clock)
    router = Router(registry, PriceTable(registry), breakers, max_candidates=max_candidates)
    return Setup(router, registry, breakers, clock)


def keys(decision: Any) -> list[str]:
    return [c.key for c in decision.candidates]


def rejected(decision: Any) -> dict[str, str]:
    return {f"{r.provider_id}/{r.model}": r.reason for r in decision.rejected}


@pytest.fixture
def standard() -> Setup:
    return build(
        [
            {
                "id": "alpha",
                "priority": 10,
                "models": [
                    model("a-smart", ["chat_smart"], (3.0, 6.0), ["tools"], context=8000),
                    model("a-cheap", ["chat_smart", "chat_small"], (0.5, 1.0), context=8000),
                    model("a-eyes", ["chat_smart", "vision"], (2.0, 4.0), ["vision", "tools"], context=8000),
                ],
            },
            {
                "id": "beta",
                "priority": 20,
                "models": [
                    model("b-smart", ["chat_smart"], (0.1, 0.2), ["tools"], context=128000),
                    model("b-mystery", ["chat_smart"], None, ["tools"]),
                ],
            },
            {
                "id": "emb",
                "priority": 5,
                "models": [{**model("e", ["embedding"], (0.02, 0.0)), "embedding_dimension": 8}],
            },
        ]
    )


# -- order --------------------------------------------------------------------------------------


def test_priority_first_then_cost_then_unknown_price_last(standard: Setup) -> None:
    decision = standard.decide()
    assert keys(decision) == [
        "alpha/a-cheap",
        "alpha/a-eyes",
        "alpha/a-smart",
        "beta/b-smart",
        "beta/b-mystery",
    ]
    assert decision.chosen.estimated_cost_usd == pytest.approx(Price(0.5, 1.0).cost(1000, 500))
    assert decision.candidates[-1].price_unknown
    assert decision.reason == f"task chat_smart; priority 10; est ${Price(0.5, 1.0).cost(1000, 500):.6f}"
    assert decision.task is Task.CHAT_SMART
    assert (decision.estimated_input_tokens, decision.estimated_output_tokens) == (1000, 500)
    assert decision.rejected == ()


def test_cost_tie_break_depends_on_the_token_mix() -> None:
    setup = build(
        [
            {
                "id": "p",
                "models": [
                    model("input-heavy", ["chat_smart"], (10.0, 1.0)),
                    model("output-heavy", ["chat_smart"], (1.0, 10.0)),
                ],
            }
        ]
    )
    assert keys(setup.decide(input_tokens=10_000, output_tokens=10)) == ["p/output-heavy", "p/input-heavy"]
    assert keys(setup.decide(input_tokens=10, output_tokens=10_000)) == ["p/input-heavy", "p/output-heavy"]


def test_equal_priority_and_cost_is_ordered_by_key() -> None:
    setup = build(
        [
            {"id": "zeta", "priority": 10, "models": [model("m", ["chat_smart"], (1.0, 1.0))]},
            {"id": "eta", "priority": 10, "models": [model("m", ["chat_smart"], (1.0, 1.0))]},
        ]
    )
    assert keys(setup.decide()) == ["eta/m", "zeta/m"]


def test_task_match_only(standard: Setup) -> None:
    assert keys(standard.decide(Task.CHAT_SMALL)) == ["alpha/a-cheap"]
    assert keys(standard.decide(Task.EMBEDDING, output_tokens=0)) == ["emb/e"]


def test_max_candidates_caps_the_fallbacks(standard: Setup) -> None:
    capped = build(
        [{"id": "p", "models": [model(f"m{i}", ["chat_smart"], (float(i + 1), 1.0)) for i in range(6)]}],
        max_candidates=3,
    )
    assert keys(capped.decide()) == ["p/m0", "p/m1", "p/m2"]


def test_disable_fallback_keeps_only_the_first(standard: Setup) -> None:
    assert keys(standard.decide(disable_fallback=True)) == ["alpha/a-cheap"]


# -- errors when nothing fits ----------------------------------------------------------------------


def test_no_model_for_the_task(standard: Setup) -> None:
    with pytest.raises(NoRouteError) as caught:
        standard.decide(Task.AUDIO)
    assert type(caught.value) is NoRouteError
    assert caught.value.message == "no configured model serves task audio"


def test_no_model_with_the_required_capabilities(standard: Setup) -> None:
    with pytest.raises(NoRouteError) as caught:
        standard.decide(Task.CHAT_SMALL, required_capabilities=frozenset({TOOLS}))
    assert caught.value.message == "no configured model serves task chat_small with capabilities tools"
    assert caught.value.violation_type == "NO_MODEL_WITH_CAPABILITY"


def test_images_imply_vision(standard: Setup) -> None:
    decision = standard.decide(has_images=True)
    assert keys(decision) == ["alpha/a-eyes"]
    assert rejected(decision)["alpha/a-cheap"] == "lacks vision (the request has images)"
    with pytest.raises(NoRouteError) as caught:
        standard.decide(Task.CHAT_SMALL, has_images=True)
    assert (
        caught.value.message
        == "no configured model serves task chat_small with capabilities vision (the request has images)"
    )


def test_required_capabilities_filter(standard: Setup) -> None:
    decision = standard.decide(required_capabilities=frozenset({TOOLS}))
    assert keys(decision) == ["alpha/a-eyes", "alpha/a-smart", "beta/b-smart", "beta/b-mystery"]
    assert rejected(decision) == {"alpha/a-cheap": "lacks tools"}


# -- preferred model ----------------------------------------------------------------------------


def test_preferred_model_goes_first_and_others_stay_as_fallbacks(standard: Setup) -> None:
    decision = standard.decide(preferred_model="b-smart")
    assert keys(decision) == [
        "beta/b-smart",
        "alpha/a-cheap",
        "alpha/a-eyes",
        "alpha/a-smart",
        "beta/b-mystery",
    ]
    cost = Price(0.1, 0.2).cost(1000, 500)
    assert decision.reason == f"task chat_smart; preferred model b-smart; priority 20; est ${cost:.6f}"


def test_preferred_model_by_key_and_without_fallback(standard: Setup) -> None:
    decision = standard.decide(preferred_model="beta/b-smart", disable_fallback=True)
    assert keys(decision) == ["beta/b-smart"]


def test_unknown_preferred_model_is_not_found(standard: Setup) -> None:
    with pytest.raises(NotFoundError) as caught:
        standard.decide(preferred_model="gpt-17")
    assert caught.value.resource_type == "model"
    assert caught.value.resource_name == "gpt-17"


def test_preferred_model_lacking_a_capability_is_named(standard: Setup) -> None:
    with pytest.raises(NoRouteError) as caught:
        standard.decide(preferred_model="a-cheap", required_capabilities=frozenset({TOOLS, VISION}))
    assert caught.value.message == "model 'a-cheap' lacks tools, vision"
    assert caught.value.subject == "routing.preferred_model"
    with pytest.raises(NoRouteError) as caught:
        standard.decide(preferred_model="b-smart", has_images=True)
    assert caught.value.message == "model 'b-smart' lacks vision (the request has images)"


def test_preferred_model_for_another_task(standard: Setup) -> None:
    with pytest.raises(NoRouteError) as caught:
        standard.decide(Task.CHAT_SMALL, preferred_model="b-smart")
    assert caught.value.message == "model 'b-smart' cannot serve task chat_small; it serves chat_smart"


def test_ineligible_preferred_model_falls_back_unless_fallback_is_disabled(standard: Setup) -> None:
    standard.open_breaker("beta")
    decision = standard.decide(preferred_model="b-smart")
    assert keys(decision) == ["alpha/a-cheap", "alpha/a-eyes", "alpha/a-smart"]
    assert decision.reason.startswith("task chat_smart; preferred model b-smart not eligible; priority 10")
    assert rejected(decision)["beta/b-smart"] == "circuit breaker open"
    with pytest.raises(UnavailableError) as caught:
        standard.decide(preferred_model="b-smart", disable_fallback=True)
    assert caught.value.reason == "ALL_BREAKERS_OPEN"


# -- provider state -------------------------------------------------------------------------------


def test_disabled_provider_is_skipped_with_its_reason(standard: Setup) -> None:
    standard.registry.disable_provider("alpha", "credentials rejected (HTTP 401)")
    decision = standard.decide()
    assert keys(decision) == ["beta/b-smart", "beta/b-mystery"]
    assert rejected(decision)["alpha/a-cheap"] == "provider disabled: credentials rejected (HTTP 401)"
    standard.registry.disable_provider("beta", "credentials rejected (HTTP 403)")
    with pytest.raises(UnavailableError) as caught:
        standard.decide()
    assert caught.value.reason == "PROVIDERS_DISABLED"
    assert "alpha: credentials rejected (HTTP 401)" in caught.value.message
    standard.registry.enable_provider("alpha")
    assert keys(standard.decide())[0] == "alpha/a-cheap"


def test_open_breaker_is_skipped(standard: Setup) -> None:
    standard.open_breaker("alpha")
    decision = standard.decide()
    assert keys(decision) == ["beta/b-smart", "beta/b-mystery"]
    assert set(rejected(decision).values()) == {"circuit breaker open"}


def test_all_breakers_open_gives_retry_after_of_the_earliest_half_open() -> None:
    setup = build(
        [
            {"id": "slow", "priority": 1, "models": [model("m", ["chat_smart"])]},
            {"id": "soon", "priority": 2, "models": [model("m", ["chat_smart"])]},
        ],
        failure_threshold=1,
        reset_timeout_s=60,
    )
    setup.breakers.get("slow").record_failure("5xx")
    setup.clock.now += 20
    setup.breakers.get("soon").record_failure("429", retry_after_s=45)
    setup.clock.now += 5
    # slow half-opens at +60 (35 s from now); soon at +20+60 (75 s from now)
    with pytest.raises(UnavailableError) as caught:
        setup.decide()
    assert caught.value.reason == "ALL_BREAKERS_OPEN"
    assert caught.value.retry_after_s == pytest.approx(35.0)


def test_decide_does_not_take_probe_permits() -> None:
    setup = build(
        [{"id": "p", "models": [model("m", ["chat_smart"])]}], failure_threshold=1, reset_timeout_s=10
    )
    setup.breakers.get("p").record_failure("5xx")
    setup.clock.now += 10
    for _ in range(3):
        assert keys(setup.decide()) == ["p/m"]
    assert setup.breakers.get("p").try_acquire()  # the single probe slot is still free


# -- context window and cost ceiling ----------------------------------------------------------------


def test_context_window_too_small_is_skipped(standard: Setup) -> None:
    decision = standard.decide(input_tokens=7800, output_tokens=500)
    assert keys(decision) == ["beta/b-smart", "beta/b-mystery"]  # b-mystery has no known window
    assert rejected(decision)["alpha/a-cheap"] == "context window of 8000 tokens is too small for the request"


def test_request_too_long_for_every_model() -> None:
    setup = build([{"id": "p", "models": [model("m", ["chat_smart"], context=4096)]}])
    with pytest.raises(NoRouteError) as caught:
        setup.decide(input_tokens=4000, output_tokens=512)
    assert caught.value.violation_type == "CONTEXT_WINDOW"
    assert "4512 tokens" in caught.value.message and "largest 4096" in caught.value.message


def test_cost_ceiling_excludes_expensive_and_unknown_price(standard: Setup) -> None:
    ceiling = Price(2.0, 4.0).cost(1000, 500)  # a-eyes sits exactly on the ceiling: allowed
    decision = standard.decide(max_cost_usd=ceiling)
    assert keys(decision) == ["alpha/a-cheap", "alpha/a-eyes", "beta/b-smart"]
    assert rejected(decision) == {
        "alpha/a-smart": "estimated cost exceeds max_cost",
        "beta/b-mystery": "price unknown and max_cost is set",
    }


def test_every_candidate_over_the_ceiling(standard: Setup) -> None:
    with pytest.raises(CostLimitExceededError) as caught:
        standard.decide(max_cost_usd=0.00001)
    cheapest = Price(0.1, 0.2).cost(1000, 500)
    assert caught.value.cheapest_usd == pytest.approx(cheapest)
    assert caught.value.reason == "COST_LIMIT_EXCEEDED"
    assert f"${cheapest:.6f}" in caught.value.message
    assert "1 model(s) with an unknown price were left out" in caught.value.message


def test_only_unknown_prices_under_a_ceiling() -> None:
    setup = build([{"id": "p", "models": [model("m", ["chat_smart"], price=None)]}])
    assert keys(setup.decide()) == ["p/m"]  # no ceiling: unknown price is fine
    with pytest.raises(CostLimitExceededError) as caught:
        setup.decide(max_cost_usd=1.0)
    assert caught.value.cheapest_usd is None


def test_permanent_reasons_win_over_open_breakers() -> None:
    setup = build(
        [
            {"id": "big", "models": [model("m", ["chat_smart"], context=100_000)]},
            {"id": "small", "models": [model("m", ["chat_smart"], context=1_000)]},
        ],
        failure_threshold=1,
    )
    setup.breakers.get("big").record_failure("5xx")
    # The only model the request fits in is behind an open breaker: waiting helps.
    with pytest.raises(UnavailableError) as caught:
        setup.decide(input_tokens=5_000)
    assert caught.value.reason == "ALL_BREAKERS_OPEN"
    # Too long for every model: waiting does not help, whatever the breakers say.
    with pytest.raises(NoRouteError):
        setup.decide(input_tokens=200_000)


def test_free_models_share_one_candidate_object() -> None:
    setup = build([{"id": "p", "models": [model("m", ["chat_smart"], price=(0.0, 0.0))]}])
    first, second = setup.decide(input_tokens=10), setup.decide(input_tokens=99_000)
    assert first.chosen is second.chosen
    assert first.chosen.estimated_cost_usd == 0.0


# -- what the request itself needs ----------------------------------------------------------------

STRUCTURED = Capability.STRUCTURED_OUTPUT
REASONING = Capability.REASONING


def test_a_request_with_tools_routes_only_to_tool_models_and_says_why(standard: Setup) -> None:
    decision = standard.router.decide(
        Task.CHAT_SMART, RoutingPreferences(), 1000, 500, False, needed=frozenset({TOOLS})
    )
    assert keys(decision) == ["alpha/a-eyes", "alpha/a-smart", "beta/b-smart", "beta/b-mystery"]
    assert rejected(decision)["alpha/a-cheap"] == "lacks tools (the request has tools)"


def test_a_preferred_model_without_the_needed_capability_is_refused(standard: Setup) -> None:
    with pytest.raises(NoRouteError) as caught:
        standard.router.decide(
            Task.CHAT_SMART,
            RoutingPreferences(preferred_model="a-cheap"),
            10,
            10,
            True,
            needed=frozenset({TOOLS}),
        )
    assert caught.value.message == (
        "model 'a-cheap' lacks tools, vision (the request has tools; the request has images)"
    )


def test_no_model_for_a_json_schema_or_a_reasoning_effort(standard: Setup) -> None:
    with pytest.raises(NoRouteError) as caught:
        standard.router.decide(
            Task.CHAT_SMART, RoutingPreferences(), 10, 10, False, needed=frozenset({STRUCTURED, REASONING})
        )
    assert caught.value.message == (
        "no configured model serves task chat_smart with capabilities reasoning, structured_output "
        "(the request sets a reasoning effort; the request asks for a JSON schema)"
    )
    assert caught.value.violation_type == "NO_MODEL_WITH_CAPABILITY"
