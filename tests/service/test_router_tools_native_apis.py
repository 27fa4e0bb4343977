"""Tool calls, thinking and cache tokens through LiteLLM to Anthropic's Messages API and Ollama's
/api/chat, over real gRPC against the fake provider's implementations of those APIs.

The router speaks OpenAI's shape to LiteLLM; these tests check what arrives at the provider
(Anthropic `tool_use` / `tool_result` blocks, `input_schema`, `tool_choice` types, `thinking`,
`metadata.user_id`; Ollama's tools and object arguments) and that the provider's answers (whole
and streamed as `input_json_delta`, `thinking` blocks, `cache_read_input_tokens` /
`cache_creation_input_tokens`, Ollama's tool calls) come back as the router's own fields.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf import struct_pb2

from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider, FakeToolCall, RecordedRequest
from testkit.harness import chat_model, router_config, running_router

MESSAGES = "/v1/messages"
OLLAMA_CHAT = "/api/chat"
# LiteLLM knows this model reasons, so it turns a reasoning effort into a thinking budget.
CLAUDE = "claude-3-7-sonnet-20250219"
CAPABILITIES = ["tools", "structured_output", "reasoning"]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def anthropic(fake: FakeProvider, price: dict[str, float] | None = None):  # type: ignore[no-untyped-def]
    model = chat_model(CLAUDE, capabilities=CAPABILITIES, price=None)
    model["price"] = price or {"input_per_million": 3.0, "output_per_million": 15.0}
    return router_config(
        [
            {
                "id": "anthropic",
                "type": "anthropic",
                "base_url": fake.base_url,
                "api_key": "sk-ant-test",
                "timeout_s": 5,
                "models": [model],
            }
        ]
    )


def ollama(fake: FakeProvider):  # type: ignore[no-untyped-def]
    model = chat_model("llama3.2", capabilities=CAPABILITIES, price=(0.0, 0.0))
    return router_config(
        [
            {
                "id": "ollama",
                "type": "ollama",
                "base_url": fake.base_url,
                "transport": "litellm",
                "models": [model],
            }
        ]
    )


def weather_tool() -> rt.Tool:
    return rt.Tool(name="get_weather", description="Current weather", parameters=struct(WEATHER_SCHEMA))


def ask(*messages: rt.ChatMessage, **fields: Any) -> rt.ChatRequest:
    generation = fields.pop("generation", rt.GenerationConfig(max_tokens=2048))
    return rt.ChatRequest(
        messages=list(messages) or [c.user("weather in Paris?")], generation=generation, **fields
    )


def streamed(request: rt.ChatRequest) -> rt.StreamChatRequest:
    out = rt.StreamChatRequest()
    out.ParseFromString(request.SerializeToString())
    return out


def calls_to(fake: FakeProvider, path: str) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.path == path]


def conversation(call: rt.ToolCall, result: str) -> list[rt.ChatMessage]:
    return [
        c.user("weather in Paris?"),
        rt.ChatMessage(role=rt.ROLE_ASSISTANT, tool_calls=[call]),
        rt.ChatMessage(role=rt.ROLE_TOOL, tool_call_id=call.id, parts=[rt.ContentPart(text=result)]),
    ]


# --------------------------------------------------------------------------- Anthropic


async def test_anthropic_tool_use_round_trip_with_tool_result_blocks(fake: FakeProvider) -> None:
    paris = FakeToolCall(name="get_weather", arguments='{"city": "Paris"}', id="toolu_paris")
    fake.script(CLAUDE, Behaviour(tool_calls=[paris], usage=(40, 12)), Behaviour(text="21 degrees."))
    async with running_router(anthropic(fake)) as (_, router):
        first = await router.chat(
            ask(tools=[weather_tool()], tool_choice=rt.ToolChoice(tool_name="get_weather"), user="user-42")
        )
        final = await router.chat(
            ask(*conversation(first.tool_calls[0], '{"temp_c": 21}'), tools=[weather_tool()])
        )
    assert first.finish_reason == rt.FINISH_REASON_TOOL_CALLS
    assert [(t.id, t.name) for t in first.tool_calls] == [("toolu_paris", "get_weather")]
    assert json.loads(first.tool_calls[0].arguments) == {"city": "Paris"}  # Anthropic sends an object
    assert final.text == "21 degrees." and final.finish_reason == rt.FINISH_REASON_STOP
    ask_tools, answer = calls_to(fake, MESSAGES)
    assert ask_tools.json["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": WEATHER_SCHEMA,
            "type": "custom",
        }
    ]
    assert ask_tools.json["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert ask_tools.json["metadata"] == {"user_id": "user-42"}
    assert answer.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_paris", "name": "get_weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_paris", "content": '{"temp_c": 21}'}],
        },
    ]


async def test_anthropic_parallel_calls_stream_as_input_json_deltas(fake: FakeProvider) -> None:
    calls = [
        FakeToolCall(
            name="get_weather",
            arguments='{"city": "Paris"}',
            id="toolu_a",
            chunks=['{"ci', 'ty": "Pa', 'ris"}'],
        ),
        FakeToolCall(
            name="get_weather", arguments='{"city": "Oslo"}', id="toolu_b", chunks=['{"city"', ': "Oslo"}']
        ),
    ]
    fake.script(CLAUDE, Behaviour(tool_calls=calls, usage=(30, 20)))
    request = ask(tools=[weather_tool()], parallel_tool_calls=False)
    async with running_router(anthropic(fake)) as (_, router):
        messages = [m async for m in router.stream_chat(streamed(request))]
    deltas = [m.tool_call for m in messages if m.HasField("tool_call")]
    assert [(d.index, d.id, d.name) for d in deltas if d.id] == [
        (0, "toolu_a", "get_weather"),
        (1, "toolu_b", "get_weather"),
    ]
    assert [(d.index, d.arguments) for d in deltas if d.arguments] == [
        (0, '{"ci'),
        (0, 'ty": "Pa'),
        (0, 'ris"}'),
        (1, '{"city"'),
        (1, ': "Oslo"}'),
    ]
    summary = messages[-1].summary
    assert [(t.id, t.arguments) for t in summary.tool_calls] == [
        ("toolu_a", '{"city": "Paris"}'),
        ("toolu_b", '{"city": "Oslo"}'),
    ]
    assert summary.finish_reason == rt.FINISH_REASON_TOOL_CALLS
    # parallel_tool_calls=false is Anthropic's disable_parallel_tool_use, on an auto choice
    assert calls_to(fake, MESSAGES)[0].json["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }


async def test_anthropic_thinking_is_reasoning_and_effort_is_a_budget(fake: FakeProvider) -> None:
    behaviour = Behaviour(text="42", reasoning="Six sevens are forty-two.", usage=(12, 30))
    fake.script(CLAUDE, behaviour, behaviour)
    generation = rt.GenerationConfig(max_tokens=2048, reasoning_effort=rt.REASONING_EFFORT_LOW)
    request = ask(c.user("6*7?"), generation=generation)
    async with running_router(anthropic(fake)) as (_, router):
        reply = await router.chat(request)
        messages = [m async for m in router.stream_chat(streamed(request))]
    assert reply.text == "42" and reply.reasoning == "Six sevens are forty-two."
    assert 0 < reply.usage.reasoning_tokens < reply.usage.output_tokens == 30
    assert (
        "".join(m.reasoning.text for m in messages if m.HasField("reasoning")) == "Six sevens are forty-two."
    )
    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == "42"
    for call in calls_to(fake, MESSAGES):
        assert call.json["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_anthropic_cache_tokens_are_reported_with_input_totals(fake: FakeProvider) -> None:
    # The fake reports Anthropic's split: input_tokens 120 = 1000 - 800 read - 80 written.
    behaviour = Behaviour(usage=(1000, 10), cached_tokens=800, cache_write_tokens=80)
    fake.script(CLAUDE, behaviour, behaviour)
    price = {
        "input_per_million": 3.0,
        "output_per_million": 15.0,
        "cached_input_per_million": 0.3,
        "cache_write_per_million": 3.75,
    }
    async with running_router(anthropic(fake, price)) as (_, router):
        reply = await router.chat(ask())
        messages = [m async for m in router.stream_chat(streamed(ask()))]
    usage = reply.usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_input_tokens) == (1000, 800, 80)
    expected = (120 * 3.0 + 800 * 0.3 + 80 * 3.75 + 10 * 15.0) / 1e6
    assert reply.cost.cost_usd == pytest.approx(expected)
    assert reply.cost.cache_write_input_cost_usd == pytest.approx(80 * 3.75 / 1e6)
    streamed_usage = messages[-1].summary.usage
    assert (streamed_usage.input_tokens, streamed_usage.cached_input_tokens) == (1000, 800)
    first = calls_to(fake, MESSAGES)[0]
    assert "tools" not in first.json


# --------------------------------------------------------------------------- Ollama


async def test_ollama_tool_calls_through_its_chat_api(fake: FakeProvider) -> None:
    paris = FakeToolCall(name="get_weather", arguments='{"city": "Paris"}')
    fake.script("llama3.2", Behaviour(tool_calls=[paris], usage=(20, 5)), Behaviour(tool_calls=[paris]))
    request = ask(tools=[weather_tool()])
    async with running_router(ollama(fake)) as (_, router):
        reply = await router.chat(request)
        messages = [m async for m in router.stream_chat(streamed(request))]
        final = await router.chat(ask(*conversation(reply.tool_calls[0], "21C"), tools=[weather_tool()]))
    (call,) = reply.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"} and call.id
    assert reply.finish_reason == rt.FINISH_REASON_TOOL_CALLS
    summary = messages[-1].summary
    assert [json.loads(t.arguments) for t in summary.tool_calls] == [{"city": "Paris"}]
    assert final.text == "echo: weather in Paris?"
    sent = calls_to(fake, OLLAMA_CHAT)
    assert sent[0].json["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": WEATHER_SCHEMA,
            },
        }
    ]
    # Ollama takes the assistant's call arguments as an object, and the result as a tool message.
    history = sent[-1].json["messages"]
    assert history[1]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert (history[2]["role"], history[2]["content"]) == ("tool", "21C")


async def test_anthropic_error_inside_a_tool_call_ends_unavailable_without_a_summary(
    fake: FakeProvider,
) -> None:
    call = FakeToolCall(
        name="get_weather", arguments='{"city": "Paris"}', id="toolu_a", chunks=['{"ci', 'ty": "Paris"}']
    )
    fake.script(CLAUDE, Behaviour(tool_calls=[call], stream_error_after_chunks=1))
    received: list[rt.StreamChatResponse] = []
    async with running_router(anthropic(fake)) as (_, router):
        with pytest.raises(c.UnavailableError) as exc:
            async for message in router.stream_chat(streamed(ask(tools=[weather_tool()]))):
                received.append(message)
    assert exc.value.details.reason == "STREAM_INTERRUPTED"
    assert [m.WhichOneof("event") for m in received] == ["tool_call", "tool_call"]
    assert (received[0].tool_call.id, received[1].tool_call.arguments) == ("toolu_a", '{"ci')
