"""Tool calling, structured output, reasoning and cache usage over real gRPC, on both provider paths.

The lean OpenAI-compatible path ("native") and LiteLLM's real HTTP path ("litellm") talk to the
fake provider's OpenAI endpoint; every test asserts the JSON the fake received (tools,
tool_choice, response_format, tool messages) as well as what the caller got back.
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
from testkit.harness import chat_model, openai_provider, router_config, running_router

CHAT = "/v1/chat/completions"
TRANSPORTS = ["native", "litellm"]
PRICE = (1.0, 2.0)
ALL_CAPABILITIES = ["tools", "structured_output", "reasoning"]

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_SCHEMA,
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def config(fake: FakeProvider, transport: str, capabilities: list[str] | None = None, **model: Any):  # type: ignore[no-untyped-def]
    caps = ALL_CAPABILITIES if capabilities is None else capabilities
    return router_config(
        [
            openai_provider(
                "primary",
                fake.base_url,
                [chat_model("alpha", price=PRICE, capabilities=caps, **model)],
                transport=transport,
            )
        ]
    )


def weather_tool() -> rt.Tool:
    return rt.Tool(
        name="get_weather", description="Current weather in a city", parameters=struct(WEATHER_SCHEMA)
    )


def time_tool() -> rt.Tool:
    return rt.Tool(name="get_time")


def ask(*messages: rt.ChatMessage, **fields: Any) -> rt.ChatRequest:
    generation = fields.pop("generation", rt.GenerationConfig(max_tokens=64))
    return rt.ChatRequest(
        messages=list(messages) or [c.user("weather in Paris?")], generation=generation, **fields
    )


def streamed(request: rt.ChatRequest) -> rt.StreamChatRequest:
    out = rt.StreamChatRequest()
    out.ParseFromString(request.SerializeToString())  # the two requests share their field numbers
    return out


def last_chat(fake: FakeProvider) -> RecordedRequest:
    return [r for r in fake.requests if r.path == CHAT][-1]


PARIS = FakeToolCall(name="get_weather", arguments='{"city": "Paris", "unit": "c"}', id="call_paris")


# --------------------------------------------------------------------------- tool calls


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tool_call_round_trip(fake: FakeProvider, transport: str) -> None:
    fake.script(
        "alpha", Behaviour(tool_calls=[PARIS], usage=(30, 12)), Behaviour(text="21 degrees in Paris.")
    )
    async with running_router(config(fake, transport)) as (_, router):
        first = await router.chat(ask(tools=[weather_tool()]))
        assert first.finish_reason == rt.FINISH_REASON_TOOL_CALLS and first.text == ""
        assert [(t.id, t.name, t.arguments) for t in first.tool_calls] == [
            ("call_paris", "get_weather", '{"city": "Paris", "unit": "c"}')  # verbatim, not re-serialized
        ]
        assert first.cost.cost_usd == pytest.approx((30 * 1.0 + 12 * 2.0) / 1e6)
        sent_tools = last_chat(fake).json
        assert sent_tools["tools"] == [WEATHER_TOOL]
        assert "tool_choice" not in sent_tools and "response_format" not in sent_tools

        conversation = [
            c.user("weather in Paris?"),
            rt.ChatMessage(role=rt.ROLE_ASSISTANT, tool_calls=first.tool_calls),
            rt.ChatMessage(
                role=rt.ROLE_TOOL, tool_call_id="call_paris", parts=[rt.ContentPart(text='{"temp_c": 21}')]
            ),
        ]
        final = await router.chat(ask(*conversation, tools=[weather_tool()]))
    assert final.text == "21 degrees in Paris." and final.finish_reason == rt.FINISH_REASON_STOP
    assert not final.tool_calls
    # LiteLLM leaves out the null content of a calls-only turn; both are OpenAI's wire format.
    sent_messages = [{k: v for k, v in m.items() if v is not None} for m in last_chat(fake).json["messages"]]
    assert sent_messages == [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_paris",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_paris", "content": '{"temp_c": 21}'},
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_parallel_tool_calls(fake: FakeProvider, transport: str) -> None:
    calls = [PARIS, FakeToolCall(name="get_time", arguments="{}", id="call_time")]
    fake.script("alpha", Behaviour(tool_calls=calls), Behaviour(tool_calls=calls))
    request = ask(tools=[weather_tool(), time_tool()], parallel_tool_calls=True)
    async with running_router(config(fake, transport)) as (_, router):
        reply = await router.chat(request)
        messages = [m async for m in router.stream_chat(streamed(request))]
    assert [(t.id, t.name) for t in reply.tool_calls] == [
        ("call_paris", "get_weather"),
        ("call_time", "get_time"),
    ]
    summary = messages[-1].summary
    assert [(t.id, t.name, t.arguments) for t in summary.tool_calls] == [
        ("call_paris", "get_weather", PARIS.arguments),
        ("call_time", "get_time", "{}"),
    ]
    assert summary.finish_reason == rt.FINISH_REASON_TOOL_CALLS
    firsts = [m.tool_call for m in messages if m.HasField("tool_call") and m.tool_call.id]
    assert [(d.index, d.id, d.name) for d in firsts] == [
        (0, "call_paris", "get_weather"),
        (1, "call_time", "get_time"),
    ]
    for record in fake.requests:
        assert record.json["parallel_tool_calls"] is True
        assert record.json["tools"] == [WEATHER_TOOL, TIME_TOOL]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_streamed_argument_fragments_are_forwarded_and_concatenate(
    fake: FakeProvider, transport: str
) -> None:
    fragments = ['{"ci', 'ty": "Pa', 'ris", "un', 'it": "c"}']
    call = FakeToolCall(name="get_weather", arguments="".join(fragments), id="call_paris", chunks=fragments)
    fake.script("alpha", Behaviour(tool_calls=[call], usage=(20, 9)))
    async with running_router(config(fake, transport)) as (_, router):
        messages = [m async for m in router.stream_chat(streamed(ask(tools=[weather_tool()])))]
    deltas = [m.tool_call for m in messages if m.HasField("tool_call")]
    assert not any(m.HasField("delta") for m in messages)  # no text was made up
    assert (deltas[0].index, deltas[0].id, deltas[0].name) == (0, "call_paris", "get_weather")
    assert all(d.id == "" and d.name == "" and d.index == 0 for d in deltas[1:])  # id and name once
    # Forwarded as the provider sent them: one event per fragment, none held back.
    assert [d.arguments for d in deltas if d.arguments] == fragments
    summary = messages[-1].summary
    assert [(t.id, t.name, t.arguments) for t in summary.tool_calls] == [
        ("call_paris", "get_weather", "".join(fragments))
    ]
    assert json.loads(summary.tool_calls[0].arguments) == {"city": "Paris", "unit": "c"}
    assert (summary.usage.input_tokens, summary.usage.output_tokens) == (20, 9)
    assert last_chat(fake).json["stream"] is True and last_chat(fake).json["tools"] == [WEATHER_TOOL]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("choice", "upstream"),
    [
        (rt.ToolChoice(tool_name="get_time"), {"type": "function", "function": {"name": "get_time"}}),
        (rt.ToolChoice(mode=rt.TOOL_CHOICE_MODE_REQUIRED), "required"),
        (rt.ToolChoice(mode=rt.TOOL_CHOICE_MODE_NONE), "none"),
        (rt.ToolChoice(mode=rt.TOOL_CHOICE_MODE_AUTO), "auto"),
    ],
    ids=["named", "required", "none", "auto"],
)
async def test_tool_choice_forcing_goes_upstream(
    fake: FakeProvider, transport: str, choice: rt.ToolChoice, upstream: Any
) -> None:
    forced = upstream != "none" and upstream != "auto"
    fake.script(
        "alpha", Behaviour(tool_calls=[FakeToolCall(name="get_time", id="call_t")]) if forced else Behaviour()
    )
    async with running_router(config(fake, transport)) as (_, router):
        reply = await router.chat(ask(tools=[weather_tool(), time_tool()], tool_choice=choice))
    assert last_chat(fake).json["tool_choice"] == upstream
    assert [t.name for t in reply.tool_calls] == (["get_time"] if forced else [])


# --------------------------------------------------------------------------- structured output


def json_schema_request(**fields: Any) -> rt.ChatRequest:
    fmt = rt.ResponseFormat(
        type=rt.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        json_schema=rt.JsonSchema(
            name="person", description="A person", schema=struct(PERSON_SCHEMA), strict=True
        ),
    )
    return ask(c.user("Ada Lovelace, 36"), response_format=fmt, **fields)


UPSTREAM_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "description": "A person", "schema": PERSON_SCHEMA, "strict": True},
}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_json_schema_answer_that_conforms(fake: FakeProvider, transport: str) -> None:
    answer = '{"name": "Ada Lovelace", "age": 36}'
    fake.script(
        "alpha", Behaviour(text=answer), Behaviour(chunks=['{"name": "Ada', ' Lovelace", ', '"age": 36}'])
    )
    request = json_schema_request()
    async with running_router(config(fake, transport)) as (_, router):
        reply = await router.chat(request)
        messages = [m async for m in router.stream_chat(streamed(request))]
    assert reply.text == answer
    assert reply.HasField("conformance") and reply.conformance.conforms and reply.conformance.reason == ""
    summary = messages[-1].summary
    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == answer
    assert summary.conformance.conforms
    for record in fake.requests:
        assert record.json["response_format"] == UPSTREAM_SCHEMA_FORMAT


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ('{"name": "Ada", "age": -1}', "$.age: minimum"),
        ('{"name": "Ada"}', "$: required"),
        ("Ada is 36", "not JSON"),
        ('```json\n{"name": "Ada", "age": 36}\n```', "not JSON"),
    ],
    ids=["minimum", "missing", "prose", "fenced"],
)
async def test_json_schema_answer_that_does_not_conform(
    fake: FakeProvider, transport: str, answer: str, reason: str
) -> None:
    fake.script("alpha", Behaviour(text=answer), Behaviour(text=answer))
    request = json_schema_request()
    async with running_router(config(fake, transport)) as (_, router):
        reply = await router.chat(request)
        messages = [m async for m in router.stream_chat(streamed(request))]
    assert reply.text == answer  # returned as generated, never repaired
    assert not reply.conformance.conforms and reply.conformance.reason == reason
    assert not messages[-1].summary.conformance.conforms
    assert [a.outcome for a in reply.attempts] == [rt.ATTEMPT_OUTCOME_SUCCEEDED]  # fallback is off by default


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_json_object_format_goes_upstream_and_is_checked(fake: FakeProvider, transport: str) -> None:
    fake.script("alpha", Behaviour(text='{"ok": true}'), Behaviour(text="[1, 2]"))
    request = ask(response_format=rt.ResponseFormat(type=rt.RESPONSE_FORMAT_TYPE_JSON_OBJECT))
    async with running_router(config(fake, transport)) as (_, router):
        good = await router.chat(request)
        array = await router.chat(request)
        text = await router.chat(ask())
    assert good.conformance.conforms and not array.conformance.conforms
    assert array.conformance.reason == "not a JSON object"
    assert not text.HasField("conformance")  # nothing asked, nothing checked
    assert [r.json.get("response_format") for r in fake.requests] == [{"type": "json_object"}] * 2 + [None]


# --------------------------------------------------------------------------- reasoning and usage


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reasoning_text_has_its_own_field_and_events(fake: FakeProvider, transport: str) -> None:
    behaviour = Behaviour(
        text="42",
        reasoning="Six times seven is forty-two.",
        reasoning_chunks=["Six times seven ", "is forty-two."],
        usage=(10, 50),
        reasoning_tokens=40,
    )
    fake.script("alpha", behaviour, behaviour)
    request = ask(
        c.user("6*7?"),
        generation=rt.GenerationConfig(max_tokens=64, reasoning_effort=rt.REASONING_EFFORT_HIGH),
    )
    async with running_router(config(fake, transport)) as (_, router):
        reply = await router.chat(request)
        messages = [m async for m in router.stream_chat(streamed(request))]
    assert reply.text == "42" and reply.reasoning == "Six times seven is forty-two."
    assert (reply.usage.output_tokens, reply.usage.reasoning_tokens) == (50, 40)
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds == ["reasoning", "reasoning", "delta", "summary"]
    assert [m.reasoning.text for m in messages[:2]] == ["Six times seven ", "is forty-two."]
    assert messages[2].delta.text == "42"
    assert messages[-1].summary.usage.reasoning_tokens == 40
    for record in fake.requests:
        assert record.json["reasoning_effort"] == "high"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cached_input_tokens_are_reported(fake: FakeProvider, transport: str) -> None:
    behaviour = Behaviour(usage=(1000, 10), cached_tokens=800)
    fake.script("alpha", behaviour, behaviour)
    async with running_router(config(fake, transport)) as (_, router):
        reply = await router.chat(ask())
        messages = [m async for m in router.stream_chat(streamed(ask()))]
    for usage in (reply.usage, messages[-1].summary.usage):
        assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (1000, 800, 10)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_seed_penalties_and_user_go_upstream(fake: FakeProvider, transport: str) -> None:
    generation = rt.GenerationConfig(max_tokens=64, seed=1234, presence_penalty=0.5, frequency_penalty=-0.25)
    async with running_router(config(fake, transport)) as (_, router):
        await router.chat(ask(generation=generation, user="end-user-7"))
    sent = last_chat(fake).json
    assert (sent["seed"], sent["presence_penalty"], sent["frequency_penalty"]) == (1234, 0.5, -0.25)
    # LiteLLM sends `user` only to OpenAI itself (other compatible servers may refuse it); the
    # Anthropic tests check its `metadata.user_id`.
    assert sent.get("user") == ("end-user-7" if transport == "native" else None)


# --------------------------------------------------------------------------- capability routing


def two_models(fake: FakeProvider, transport: str, plain_caps: list[str], capable_caps: list[str]):  # type: ignore[no-untyped-def]
    """`plain` (priority 10) lacks what `capable` (priority 20) has; both on the same fake."""
    return router_config(
        [
            openai_provider(
                "plain",
                fake.base_url,
                [chat_model("basic", capabilities=plain_caps)],
                priority=10,
                transport=transport,
            ),
            openai_provider(
                "capable",
                fake.base_url,
                [chat_model("clever", capabilities=capable_caps, price=(10.0, 20.0))],
                priority=20,
                transport=transport,
            ),
        ]
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("capability", "request_fields", "why"),
    [
        ("tools", {"tools": [weather_tool()]}, "lacks tools (the request has tools)"),
        (
            "structured_output",
            {
                "response_format": rt.ResponseFormat(
                    type=rt.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                    json_schema=rt.JsonSchema(schema=struct(PERSON_SCHEMA)),
                )
            },
            "lacks structured_output (the request asks for a JSON schema)",
        ),
        (
            "reasoning",
            {"generation": rt.GenerationConfig(max_tokens=64, reasoning_effort=rt.REASONING_EFFORT_LOW)},
            "lacks reasoning (the request sets a reasoning effort)",
        ),
    ],
    ids=["tools", "json-schema", "reasoning-effort"],
)
async def test_capability_routing_refuses_models_without_the_capability(
    fake: FakeProvider, transport: str, capability: str, request_fields: dict[str, Any], why: str
) -> None:
    async with running_router(two_models(fake, transport, [], [capability])) as (_, router):
        plain = await router.chat(ask())  # without the feature the cheaper, preferred model serves
        reply = await router.chat(ask(**request_fields))
        fake.script("clever", Behaviour(status=503), Behaviour(status=503), Behaviour(status=503))
        # A fallback never drops what the caller asked for: the model without it is not tried.
        with pytest.raises(c.UnavailableError):
            await router.chat(ask(**request_fields))
    assert [a.provider_id for a in plain.attempts] == ["plain"]
    assert [a.provider_id for a in reply.attempts] == ["capable"]
    assert [(r.provider_id, r.reason) for r in reply.routing.rejected] == [("plain", why)]
    assert fake.count(CHAT, "basic") == 1 and fake.count(CHAT, "clever") == 4


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_tool_request_with_no_tool_model_is_refused_naming_the_cause(
    fake: FakeProvider, transport: str
) -> None:
    async with running_router(config(fake, transport, capabilities=[])) as (_, router):
        with pytest.raises(c.FailedPreconditionError) as exc:
            await router.chat(ask(tools=[weather_tool()]))
    assert "tools (the request has tools)" in exc.value.message
    assert fake.count() == 0


# --------------------------------------------------------------------------- fallback on non-conformance


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_nonconforming_answer_falls_back_only_when_the_caller_asks(
    fake: FakeProvider, transport: str
) -> None:
    caps = ["structured_output"]
    good = '{"name": "Ada", "age": 36}'
    fake.set_default(Behaviour(text='{"name": "Ada"}', usage=(10, 5)), model="basic")
    fake.set_default(Behaviour(text=good, usage=(10, 5)), model="clever")
    async with running_router(two_models(fake, transport, caps, caps)) as (_, router):
        default = await router.chat(json_schema_request())
        retried = await router.chat(
            json_schema_request(routing=rt.RoutingPreferences(fallback_on_nonconforming=True))
        )
        stream_request = streamed(
            json_schema_request(routing=rt.RoutingPreferences(fallback_on_nonconforming=True))
        )
        messages = [m async for m in router.stream_chat(stream_request)]
    assert not default.conformance.conforms and [a.provider_id for a in default.attempts] == ["plain"]
    assert retried.text == good and retried.conformance.conforms
    assert [(a.provider_id, a.outcome, a.error_kind) for a in retried.attempts] == [
        ("plain", rt.ATTEMPT_OUTCOME_FAILED, "nonconforming"),
        ("capable", rt.ATTEMPT_OUTCOME_SUCCEEDED, ""),
    ]
    assert retried.cost.cost_usd == pytest.approx((10 * 10.0 + 5 * 20.0) / 1e6)  # the answer returned
    # A stream's text went out before it could be checked: reported, never retried.
    assert not messages[-1].summary.conformance.conforms
    assert [a.provider_id for a in messages[-1].summary.attempts] == ["plain"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_when_no_answer_conforms_the_last_is_returned_as_nonconforming(
    fake: FakeProvider, transport: str
) -> None:
    caps = ["structured_output"]
    fake.set_default(Behaviour(text="not json at all"))
    request = json_schema_request(routing=rt.RoutingPreferences(fallback_on_nonconforming=True))
    async with running_router(two_models(fake, transport, caps, caps)) as (_, router):
        reply = await router.chat(request)
    assert not reply.conformance.conforms and reply.conformance.reason == "not JSON"
    assert [(a.provider_id, a.outcome) for a in reply.attempts] == [
        ("plain", rt.ATTEMPT_OUTCOME_FAILED),
        ("capable", rt.ATTEMPT_OUTCOME_FAILED),
        ("plain", rt.ATTEMPT_OUTCOME_SUCCEEDED),
    ]  # retry.max_attempts (3) calls, the last answer returned
    assert fake.count(CHAT) == 3


# --------------------------------------------------------------------------- prices of the new token kinds

RATES = {
    "input_per_million": 2.0,
    "output_per_million": 8.0,
    "cached_input_per_million": 0.5,
    "cache_write_per_million": 2.5,
    "reasoning_per_million": 10.0,
}


def priced(fake: FakeProvider, transport: str, **price: float):  # type: ignore[no-untyped-def]
    model = chat_model("alpha", price=None, capabilities=ALL_CAPABILITIES)
    model["price"] = price
    return router_config([openai_provider("primary", fake.base_url, [model], transport=transport)])


def parts(cost: rt.Cost) -> tuple[float, float, float, float, float]:
    return (
        cost.input_cost_usd,
        cost.cached_input_cost_usd,
        cost.cache_write_input_cost_usd,
        cost.output_cost_usd,
        cost.reasoning_cost_usd,
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reasoning_and_cached_tokens_are_priced_at_their_own_rates(
    fake: FakeProvider, transport: str
) -> None:
    behaviour = Behaviour(
        text="42", reasoning="think", usage=(1000, 300), cached_tokens=600, reasoning_tokens=200
    )
    fake.script("alpha", behaviour, behaviour)
    request = ask(
        c.user("6*7?"),
        generation=rt.GenerationConfig(max_tokens=500, reasoning_effort=rt.REASONING_EFFORT_MEDIUM),
    )
    async with running_router(priced(fake, transport, **RATES)) as (_, router):
        reply = await router.chat(request)
        messages = [m async for m in router.stream_chat(streamed(request))]
        spend = await router.get_spend(rt.GetSpendRequest(grouping=rt.SPEND_GROUPING_MODEL))
    expected = (400 * 2.0 / 1e6, 600 * 0.5 / 1e6, 0.0, 100 * 8.0 / 1e6, 200 * 10.0 / 1e6)
    for cost in (reply.cost, messages[-1].summary.cost):
        assert parts(cost) == pytest.approx(expected)
        assert cost.cost_usd == pytest.approx(sum(expected))
        assert not cost.unknown_rate_parts and not cost.price_unknown
    (row,) = spend.rows
    assert row.cost_usd == pytest.approx(2 * sum(expected))
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens, row.reasoning_tokens) == (
        2000,
        1200,
        600,
        400,
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_parts_without_a_rate_of_their_own_are_priced_at_the_base_rate_and_named(
    fake: FakeProvider, transport: str
) -> None:
    fake.script("alpha", Behaviour(usage=(1000, 300), cached_tokens=600, reasoning_tokens=200))
    async with running_router(priced(fake, transport, input_per_million=2.0, output_per_million=8.0)) as (
        _,
        router,
    ):
        reply = await router.chat(ask())
    assert reply.cost.cost_usd == pytest.approx((1000 * 2.0 + 300 * 8.0) / 1e6)
    assert sorted(reply.cost.unknown_rate_parts) == [rt.COST_PART_CACHED_INPUT, rt.COST_PART_REASONING]
    assert reply.cost.cached_input_cost_usd == pytest.approx(600 * 2.0 / 1e6)
