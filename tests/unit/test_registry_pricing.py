"""Registry (model info from LiteLLM and config) and pricing / token estimates."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from router_service.config import RouterConfig
from router_service.domain import (
    Capability,
    ChatMessage,
    ChatRequest,
    ContentPart,
    Cost,
    CostPart,
    GenerationConfig,
    ImagePart,
    Price,
    Role,
    Task,
    Usage,
    price_tokens,
)
from router_service.litellm_import import import_litellm
from router_service.model_registry import LiteLLMModelInfo, ModelInfo, Registry, StaticModelInfo
from router_service.pricing import PriceTable, estimate_cost, real_cost
from router_service.tokens import IMAGE_TOKENS_HIGH_DETAIL, IMAGE_TOKENS_LOW_DETAIL, TokenEstimator
from sekha_runtime.errors import NotFoundError


@pytest.fixture(scope="module")
def litellm() -> ModuleType:
    """LiteLLM, imported when a test needs it rather than while the suite is collected (it takes ~2 s)."""
    return import_litellm()


def config(providers: list[dict[str, Any]], model_info: Any = None) -> RouterConfig:
    context = {"model_info": model_info} if model_info is not None else None
    return RouterConfig.model_validate({"providers": providers}, context=context)


def text_message(role: Role, text: str) -> ChatMessage:
    return ChatMessage(role=role, parts=(ContentPart(text=text),))


# -- model info from LiteLLM's bundled map ----------------------------------------------------


@pytest.fixture(scope="module")
def litellm_registry() -> Registry:
    cfg = config(
        [
            {
                "id": "openai",
                "type": "openai",
                "priority": 10,
                "models": [
                    {"id": "gpt-4o", "tasks": ["chat_smart"]},
                    {"id": "gpt-4o-mini", "tasks": ["chat_small"]},
                    {"id": "text-embedding-3-small", "tasks": ["embedding"]},
                ],
            },
            {
                "id": "openai-pinned",
                "type": "openai",
                "priority": 20,
                "models": [
                    {
                        "id": "gpt-4o",
                        "tasks": ["chat_smart"],
                        "capabilities": ["tools"],
                        "context_window": 4096,
                        "price": {"input_per_million": 1.0, "output_per_million": 2.0},
                    }
                ],
            },
            {
                "id": "compat",
                "type": "openai_compatible",
                "base_url": "http://127.0.0.1:9/v1",
                "models": [{"id": "house-model-7b", "tasks": ["chat_small"]}],
            },
            {
                "id": "local",
                "type": "local",
                "models": [{"id": "all-minilm-l6-v2", "tasks": ["embedding"]}],
            },
        ]
    )
    return Registry.from_config(cfg)


def test_litellm_supplies_capabilities_and_context_window(litellm_registry: Registry) -> None:
    entry = litellm_registry.by_key("openai/gpt-4o")
    assert entry.litellm_model == "openai/gpt-4o"
    assert Capability.VISION in entry.capabilities
    assert Capability.TOOLS in entry.capabilities
    assert entry.context_window == 128000


def test_litellm_supplies_structured_output_and_reasoning() -> None:
    # supports_function_calling / supports_response_schema / supports_reasoning in LiteLLM's map
    cfg = config([{"id": "openai", "type": "openai", "models": [{"id": "o3-mini", "tasks": ["chat_smart"]}]}])
    entry = Registry.from_config(cfg).by_key("openai/o3-mini")
    assert {Capability.TOOLS, Capability.STRUCTURED_OUTPUT, Capability.REASONING} <= entry.capabilities
    no_tools = config(
        [{"id": "ds", "type": "deepseek", "models": [{"id": "deepseek-reasoner", "tasks": ["chat_smart"]}]}]
    )
    reasoner = Registry.from_config(no_tools).by_key("ds/deepseek-reasoner")
    assert Capability.REASONING in reasoner.capabilities and Capability.TOOLS not in reasoner.capabilities


def test_litellm_supplies_the_embedding_dimension(litellm_registry: Registry) -> None:
    assert litellm_registry.by_key("openai/text-embedding-3-small").embedding_dimension == 1536


def test_litellm_supplies_prices_per_million(litellm_registry: Registry, litellm: ModuleType) -> None:
    entry = litellm_registry.by_key("openai/gpt-4o-mini")
    expected_in = litellm.model_cost["gpt-4o-mini"]["input_cost_per_token"] * 1e6
    expected_out = litellm.model_cost["gpt-4o-mini"]["output_cost_per_token"] * 1e6
    expected_cached = litellm.model_cost["gpt-4o-mini"]["cache_read_input_token_cost"] * 1e6
    assert entry.price == Price(
        pytest.approx(expected_in),
        pytest.approx(expected_out),
        cached_input_per_million=pytest.approx(expected_cached),
    )
    assert entry.price.cached_input_per_million < entry.price.input_per_million
    assert entry.price_source == "litellm"


def test_litellm_supplies_cache_and_reasoning_rates(litellm: ModuleType) -> None:
    # cache_read_input_token_cost, cache_creation_input_token_cost, output_cost_per_reasoning_token
    with_rates = {
        name: entry
        for name, entry in litellm.model_cost.items()
        if isinstance(entry, dict)
        and entry.get("cache_creation_input_token_cost")
        and entry.get("cache_read_input_token_cost")
        and isinstance(entry.get("input_cost_per_token"), float)
        and "/" not in name
    }
    name, raw = sorted(with_rates.items())[0]
    source = LiteLLMModelInfo()
    info = source.lookup(name, "anthropic")
    assert info is not None and info.price is not None
    assert info.price.cached_input_per_million == pytest.approx(raw["cache_read_input_token_cost"] * 1e6)
    assert info.price.cache_write_per_million == pytest.approx(raw["cache_creation_input_token_cost"] * 1e6)
    reasoning_name, reasoning_raw = next(
        (n, e)
        for n, e in sorted(litellm.model_cost.items())
        if isinstance(e, dict) and e.get("output_cost_per_reasoning_token") and e.get("input_cost_per_token")
    )
    provider = reasoning_name.partition("/")[0]
    priced = source.lookup(reasoning_name, provider)
    assert priced is not None and priced.price is not None
    assert priced.price.reasoning_per_million == pytest.approx(
        reasoning_raw["output_cost_per_reasoning_token"] * 1e6
    )


def test_config_overrides_win_over_model_info(litellm_registry: Registry) -> None:
    entry = litellm_registry.by_key("openai-pinned/gpt-4o")
    assert entry.capabilities == frozenset({Capability.TOOLS})
    assert entry.context_window == 4096
    assert entry.price == Price(1.0, 2.0)
    assert entry.price_source == "config"


def test_unknown_model_has_unknown_price_not_zero(litellm_registry: Registry) -> None:
    entry = litellm_registry.by_key("compat/house-model-7b")
    assert entry.litellm_model == "openai/house-model-7b"
    assert entry.price is None
    assert entry.price_unknown
    prices = PriceTable(litellm_registry)
    assert prices.is_unknown("compat/house-model-7b")
    assert prices.estimate("compat/house-model-7b", 1000, 1000) is None


def test_local_provider_is_free_and_knows_its_dimension(litellm_registry: Registry) -> None:
    entry = litellm_registry.by_key("local/all-minilm-l6-v2")
    assert entry.litellm_model == "all-minilm-l6-v2"
    assert entry.price == Price(0.0, 0.0)
    assert entry.price_source == "local"
    assert entry.embedding_dimension == 384


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def ollama_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A real HTTP server posing as Ollama; LiteLLM would call it if it looked models up online."""
    hits: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("OLLAMA_API_BASE", url)
    yield hits
    server.shutdown()
    server.server_close()


def test_ollama_models_are_looked_up_without_network(ollama_server: list[str], litellm: ModuleType) -> None:
    url = os.environ["OLLAMA_API_BASE"]
    cfg = config(
        [
            {
                "id": "ollama",
                "type": "ollama",
                "base_url": url,
                "models": [
                    {"id": "llama3", "tasks": ["chat_small"]},
                    {"id": "llama3.2:3b", "tasks": ["chat_smart"]},
                ],
            }
        ]
    )
    registry = Registry.from_config(cfg, LiteLLMModelInfo())
    assert ollama_server == []
    known = registry.by_key("ollama/llama3")  # in LiteLLM's bundled map
    assert known.litellm_model == "ollama/llama3"
    assert known.context_window == litellm.model_cost["ollama/llama3"]["max_input_tokens"]
    unknown = registry.by_key("ollama/llama3.2:3b")
    assert unknown.price is None and unknown.context_window is None


# -- registry lookups ------------------------------------------------------------------------


@pytest.fixture
def static_registry() -> Registry:
    source = StaticModelInfo(
        {
            "openai/gpt-x": ModelInfo(context_window=1000, capabilities=frozenset({Capability.VISION})),
            "anthropic/gpt-x": ModelInfo(capabilities=frozenset()),
        }
    )
    cfg = config(
        [
            {
                "id": "b-prov",
                "type": "anthropic",
                "priority": 5,
                "models": [{"id": "gpt-x", "tasks": ["chat_smart"]}],
            },
            {
                "id": "a-prov",
                "type": "openai",
                "priority": 5,
                "models": [
                    {"id": "gpt-x", "tasks": ["chat_smart", "chat_small"]},
                    {"id": "seer", "tasks": ["vision"]},
                ],
            },
            {
                "id": "off",
                "type": "openai",
                "enabled": False,
                "models": [{"id": "z", "tasks": ["chat_small"]}],
            },
        ],
        source,
    )
    return Registry.from_config(cfg, source)


def test_find_matches_model_id_or_key(static_registry: Registry) -> None:
    assert {e.key for e in static_registry.find("gpt-x")} == {"b-prov/gpt-x", "a-prov/gpt-x"}
    assert [e.key for e in static_registry.find("a-prov/gpt-x")] == ["a-prov/gpt-x"]
    assert static_registry.find("nope") == []
    with pytest.raises(NotFoundError):
        static_registry.by_key("a-prov/nope")


def test_for_task_is_ordered_by_priority_then_key(static_registry: Registry) -> None:
    assert [e.key for e in static_registry.for_task(Task.CHAT_SMART)] == ["a-prov/gpt-x", "b-prov/gpt-x"]
    assert [e.key for e in static_registry.for_task(Task.CHAT_SMALL)] == ["a-prov/gpt-x", "off/z"]
    assert static_registry.for_task(Task.AUDIO) == ()


def test_static_source_and_vision_task_imply_capabilities(static_registry: Registry) -> None:
    assert static_registry.by_key("a-prov/gpt-x").capabilities == frozenset({Capability.VISION})
    assert static_registry.by_key("a-prov/gpt-x").context_window == 1000
    assert static_registry.by_key("b-prov/gpt-x").capabilities == frozenset()
    assert Capability.VISION in static_registry.by_key("a-prov/seer").capabilities


def test_providers_can_be_disabled_and_enabled(static_registry: Registry) -> None:
    assert static_registry.disabled_reason("off") == "disabled in the configuration"
    assert static_registry.disabled_reason("a-prov") is None
    static_registry.disable_provider("a-prov", "credentials rejected (HTTP 401)")
    assert static_registry.disabled_reason("a-prov") == "credentials rejected (HTTP 401)"
    assert static_registry.is_disabled("a-prov")
    static_registry.enable_provider("a-prov")
    assert static_registry.disabled_reason("a-prov") is None
    with pytest.raises(NotFoundError):
        static_registry.disable_provider("ghost", "x")
    assert set(static_registry.providers) == {"a-prov", "b-prov", "off"}


# -- prices and costs ------------------------------------------------------------------------


def test_one_formula_prices_cache_reads_writes_and_reasoning_at_their_own_rates() -> None:
    price = Price(
        3.0, 15.0, cached_input_per_million=0.3, cache_write_per_million=3.75, reasoning_per_million=20.0
    )
    usage = Usage(
        input_tokens=1000,
        output_tokens=500,
        cached_input_tokens=600,
        cache_write_input_tokens=100,
        reasoning_tokens=200,
    )
    cost = Cost.of(price, usage)
    assert cost.parts == price_tokens(price, 1000, 500, 600, 100, 200)
    assert cost.parts is not None
    assert cost.parts.input_usd == pytest.approx(300 * 3.0 / 1e6)
    assert cost.parts.cached_input_usd == pytest.approx(600 * 0.3 / 1e6)
    assert cost.parts.cache_write_input_usd == pytest.approx(100 * 3.75 / 1e6)
    assert cost.parts.output_usd == pytest.approx(300 * 15.0 / 1e6)
    assert cost.parts.reasoning_usd == pytest.approx(200 * 20.0 / 1e6)
    assert cost.cost_usd == pytest.approx(
        (300 * 3.0 + 600 * 0.3 + 100 * 3.75 + 300 * 15.0 + 200 * 20.0) / 1e6
    )
    assert cost.parts.unknown_rate_parts == frozenset()
    # Without a rate of their own the parts are priced at the base rate, and the cost says so.
    base = Cost.of(Price(3.0, 15.0), usage)
    assert base.cost_usd == pytest.approx((1000 * 3.0 + 500 * 15.0) / 1e6)
    assert base.parts is not None
    assert base.parts.unknown_rate_parts == {
        CostPart.CACHED_INPUT,
        CostPart.CACHE_WRITE_INPUT,
        CostPart.REASONING,
    }
    assert Cost.of(Price(3.0, 15.0), Usage(10, 10)).parts.unknown_rate_parts == frozenset()  # type: ignore[union-attr]
    assert Cost.of(None, usage).price_unknown  # an unknown price stays unknown, never $0
    # The routing estimate is the same formula with no cache or reasoning tokens.
    assert price.cost(1000, 500) == pytest.approx(Cost.of(price, Usage(1000, 500)).cost_usd)


def test_estimate_and_real_cost(static_registry: Registry) -> None:
    price = Price(input_per_million=2.0, output_per_million=8.0)
    assert estimate_cost(price, 1_000, 500) == pytest.approx((1_000 * 2.0 + 500 * 8.0) / 1e6)
    assert estimate_cost(None, 1_000, 500) is None
    entry = static_registry.by_key("a-prov/gpt-x")
    assert real_cost(entry, Usage(10, 10)).price_unknown  # the static source knew no price
    table = PriceTable({"a-prov/gpt-x": price})
    cost = table.real_cost(entry, Usage(input_tokens=1_000, output_tokens=500))
    assert cost.cost_usd == pytest.approx(0.006)
    assert table.price(entry) == price
    assert table.estimate("a-prov/gpt-x", 1_000, 500) == pytest.approx(0.006)


# -- token estimates -------------------------------------------------------------------------


class CountingCounter:
    """litellm.token_counter, counting how often it is called (a spy, the real counter runs)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, **kwargs: Any) -> int:
        self.calls += 1
        return int(import_litellm().token_counter(**kwargs))


def test_chat_estimate_equals_litellm_token_counter_and_is_computed_once(litellm: ModuleType) -> None:
    counter = CountingCounter()
    estimator = TokenEstimator(default_max_tokens=256, counter=counter)
    messages = (
        text_message(Role.SYSTEM, "You are terse."),
        text_message(Role.USER, "Summarise the plot of Hamlet in one sentence, please."),
        text_message(Role.ASSISTANT, "A prince avenges his father and everyone dies."),
        text_message(Role.USER, "Shorter."),
    )
    request = ChatRequest(messages=messages)
    estimate = estimator.estimate_chat(request, "openai/gpt-4o")
    expected = litellm.token_counter(
        model="openai/gpt-4o", messages=[{"role": str(m.role), "content": m.text} for m in messages]
    )
    assert estimate.input_tokens == expected
    assert estimate.output_tokens == 256  # no max_tokens in the request: the configured default
    assert counter.calls == 1  # one call for the whole conversation, not one per message


def test_output_estimate_is_the_request_max_tokens() -> None:
    estimator = TokenEstimator(default_max_tokens=256, counter=CountingCounter())
    request = ChatRequest(
        messages=(text_message(Role.USER, "hi"),), generation=GenerationConfig(max_tokens=42)
    )
    assert estimator.estimate_chat(request).output_tokens == 42


def test_images_add_a_fixed_estimate_by_detail() -> None:
    estimator = TokenEstimator(counter=CountingCounter())
    text_only = (text_message(Role.USER, "what is this?"),)
    with_images = (
        ChatMessage(
            role=Role.USER,
            parts=(
                ContentPart(text="what is this?"),
                ContentPart(image=ImagePart(url="https://example.invalid/a.png", detail="low")),
                ContentPart(image=ImagePart(data=b"\x89PNG", mime_type="image/png")),  # auto counts as high
            ),
        ),
    )
    base = estimator.count_messages(text_only)
    assert estimator.count_messages(with_images) == base + IMAGE_TOKENS_LOW_DETAIL + IMAGE_TOKENS_HIGH_DETAIL


def test_embedding_inputs_are_counted_in_one_call(litellm: ModuleType) -> None:
    counter = CountingCounter()
    estimator = TokenEstimator(counter=counter)
    inputs = ["first document", "second, longer document about routers"]
    estimate = estimator.estimate_embed(inputs, "openai/text-embedding-3-small")
    assert estimate.input_tokens == litellm.token_counter(model="openai/text-embedding-3-small", text=inputs)
    assert estimate.output_tokens == 0
    assert counter.calls == 1
    assert estimator.count_text("") == 0
    assert estimator.count_text("hello world") == litellm.token_counter(model="gpt-4o", text="hello world")


def test_tokenizers_that_would_be_downloaded_are_replaced_and_the_choice_is_cached() -> None:
    estimator = TokenEstimator(counter=CountingCounter())
    # LiteLLM would fetch a llama-3 tokenizer from the Hugging Face hub: use bundled tiktoken instead.
    assert estimator.tokenizer_model("openrouter/meta-llama/llama-3-70b-instruct") == "gpt-3.5-turbo"
    assert estimator.tokenizer_model("anthropic/claude-sonnet-4-5") == "anthropic/claude-sonnet-4-5"
    assert estimator.tokenizer_model("openai/gpt-4o") == "openai/gpt-4o"
    assert estimator.tokenizer_model(None) == "gpt-4o"
    assert estimator._tokenizer_model["openrouter/meta-llama/llama-3-70b-instruct"] == "gpt-3.5-turbo"
    messages = (text_message(Role.USER, "count me offline"),)
    assert estimator.count_messages(messages, "openrouter/meta-llama/llama-3-70b-instruct") > 0
