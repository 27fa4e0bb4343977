"""The chat contract's new fields over real gRPC: malformed tools, tool messages, response formats
and sampling fields are INVALID_ARGUMENT naming the field by its proto path, limits included, and
nothing reaches a provider. Well-formed ones pass conversion (the provider tests check the wire).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf import struct_pb2

from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import FakeProvider
from testkit.harness import chat_model, openai_provider, router_config, running_router


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def tool(name: str = "get_weather", **fields: Any) -> rt.Tool:
    fields.setdefault("description", "Weather now")
    return rt.Tool(name=name, parameters=struct(WEATHER), **fields)


def chat(**fields: Any) -> rt.ChatRequest:
    messages = fields.pop("messages", [c.user("hi")])
    return rt.ChatRequest(messages=messages, generation=fields.pop("generation", None), **fields)


def assistant_calls(*calls: rt.ToolCall) -> rt.ChatMessage:
    return rt.ChatMessage(role=rt.ROLE_ASSISTANT, tool_calls=list(calls))


def tool_result(call_id: str, text: str) -> rt.ChatMessage:
    return rt.ChatMessage(role=rt.ROLE_TOOL, tool_call_id=call_id, parts=[rt.ContentPart(text=text)])


LIMITS = {
    "max_tools": 3,
    "max_tool_schema_chars": 200,
    "max_tool_description_chars": 50,
    "max_response_schema_chars": 200,
    "max_tool_call_argument_chars": 100,
    "max_stop_sequences": 2,
    "max_stop_sequence_chars": 10,
    "max_user_chars": 20,
}
BIG_SCHEMA = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(20)}}

CASES: list[tuple[str, rt.ChatRequest, str]] = [
    ("too-many-tools", chat(tools=[tool(f"t{i}") for i in range(4)]), "tools"),
    ("duplicate-tool", chat(tools=[tool("a"), tool("a")]), "tools[1].name"),
    ("tool-without-name", chat(tools=[rt.Tool(description="x")]), "tools[0].name"),
    ("bad-tool-name", chat(tools=[tool("get weather!")]), "tools[0].name"),
    (
        "tool-schema-too-big",
        chat(tools=[rt.Tool(name="f", parameters=struct(BIG_SCHEMA))]),
        "tools[0].parameters",
    ),
    (
        "tool-schema-not-object",
        chat(tools=[rt.Tool(name="f", parameters=struct({"type": "string"}))]),
        "tools[0].parameters",
    ),
    ("tool-description-too-long", chat(tools=[tool(description="x" * 51)]), "tools[0].description"),
    (
        "choice-without-tools",
        chat(tool_choice=rt.ToolChoice(mode=rt.TOOL_CHOICE_MODE_REQUIRED)),
        "tool_choice",
    ),
    (
        "choice-names-unknown-tool",
        chat(tools=[tool()], tool_choice=rt.ToolChoice(tool_name="nope")),
        "tool_choice.tool_name",
    ),
    ("unknown-choice-mode", chat(tools=[tool()], tool_choice=rt.ToolChoice(mode=99)), "tool_choice.mode"),  # type: ignore[arg-type]
    ("parallel-without-tools", chat(parallel_tool_calls=False), "parallel_tool_calls"),
    ("unknown-format", chat(response_format=rt.ResponseFormat(type=42)), "response_format.type"),  # type: ignore[arg-type]
    (
        "schema-missing",
        chat(response_format=rt.ResponseFormat(type=rt.RESPONSE_FORMAT_TYPE_JSON_SCHEMA)),
        "response_format.json_schema.schema",
    ),
    (
        "schema-with-json-object",
        chat(
            response_format=rt.ResponseFormat(
                type=rt.RESPONSE_FORMAT_TYPE_JSON_OBJECT, json_schema=rt.JsonSchema(schema=struct(WEATHER))
            )
        ),
        "response_format.json_schema",
    ),
    (
        "schema-invalid",
        chat(
            response_format=rt.ResponseFormat(
                type=rt.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                json_schema=rt.JsonSchema(schema=struct({"type": "object", "required": "city"})),
            )
        ),
        "response_format.json_schema.schema",
    ),
    (
        "schema-too-big",
        chat(
            response_format=rt.ResponseFormat(
                type=rt.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=rt.JsonSchema(schema=struct(BIG_SCHEMA))
            )
        ),
        "response_format.json_schema.schema",
    ),
    (
        "unknown-effort",
        chat(generation=rt.GenerationConfig(reasoning_effort=7)),
        "generation.reasoning_effort",
    ),  # type: ignore[arg-type]
    (
        "presence-penalty",
        chat(generation=rt.GenerationConfig(presence_penalty=3)),
        "generation.presence_penalty",
    ),
    (
        "frequency-penalty",
        chat(generation=rt.GenerationConfig(frequency_penalty=-2.5)),
        "generation.frequency_penalty",
    ),
    (
        "too-many-stops",
        chat(generation=rt.GenerationConfig(stop_sequences=["a", "b", "c"])),
        "generation.stop_sequences",
    ),
    (
        "stop-too-long",
        chat(generation=rt.GenerationConfig(stop_sequences=["x" * 11])),
        "generation.stop_sequences[0]",
    ),
    ("empty-stop", chat(generation=rt.GenerationConfig(stop_sequences=[""])), "generation.stop_sequences[0]"),
    ("user-too-long", chat(user="u" * 21), "user"),
    (
        "tool-message-without-call-id",
        chat(messages=[c.user("hi"), rt.ChatMessage(role=rt.ROLE_TOOL, parts=[rt.ContentPart(text="42")])]),
        "messages[1].tool_call_id",
    ),
    (
        "call-id-on-user-message",
        chat(
            messages=[rt.ChatMessage(role=rt.ROLE_USER, tool_call_id="x", parts=[rt.ContentPart(text="hi")])]
        ),
        "messages[0].tool_call_id",
    ),
    (
        "tool-calls-on-user-message",
        chat(
            messages=[
                rt.ChatMessage(
                    role=rt.ROLE_USER,
                    parts=[rt.ContentPart(text="hi")],
                    tool_calls=[rt.ToolCall(id="1", name="f")],
                )
            ]
        ),
        "messages[0].tool_calls",
    ),
    (
        "tool-call-without-id",
        chat(messages=[c.user("hi"), assistant_calls(rt.ToolCall(name="f", arguments="{}"))]),
        "messages[1].tool_calls[0].id",
    ),
    (
        "arguments-too-long",
        chat(
            messages=[
                c.user("hi"),
                assistant_calls(rt.ToolCall(id="call_1", name="f", arguments='{"a": "' + "x" * 100 + '"}')),
                tool_result("call_1", "done"),
            ]
        ),
        "messages[1].tool_calls[0].arguments",
    ),
    (  # found by tests/service/test_fuzz.py: Struct carries infinity, JSON cannot
        "infinite-number-in-tool-schema",
        chat(tools=[rt.Tool(name="t", parameters=struct({"type": "object", "maximum": float("inf")}))]),
        "tools[0].parameters",
    ),
    (
        "nan-in-response-schema",
        chat(
            response_format=rt.ResponseFormat(
                type=rt.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                json_schema=rt.JsonSchema(
                    name="x", schema=struct({"type": "object", "minimum": float("nan")})
                ),
            )
        ),
        "response_format.json_schema.schema",
    ),
    (
        "unknown-role",
        chat(messages=[rt.ChatMessage(role=17, parts=[rt.ContentPart(text="hi")])]),
        "messages[0].role",
    ),  # type: ignore[arg-type]
]


async def test_bad_tool_format_and_sampling_fields_name_the_field_and_reach_no_provider(
    fake: FakeProvider,
) -> None:
    config = router_config([openai_provider("p", fake.base_url, [chat_model("m")])], limits=LIMITS)
    async with running_router(config) as (_, router):
        for name, request, field_path in CASES:
            with pytest.raises(c.InvalidArgumentError) as exc:
                await router.chat(request)
            fields = [violation[0] for violation in exc.value.details.field_violations]
            assert field_path in fields, (name, fields)
            stream_request = rt.StreamChatRequest()
            stream_request.ParseFromString(request.SerializeToString())  # same field numbers
            with pytest.raises(c.InvalidArgumentError) as streamed:
                async for _ in router.stream_chat(stream_request):
                    pass
            assert field_path in [v[0] for v in streamed.value.details.field_violations], name
        assert fake.count() == 0


async def test_well_formed_tool_conversation_is_accepted(fake: FakeProvider) -> None:
    model = chat_model("m", capabilities=["tools"])
    config = router_config([openai_provider("p", fake.base_url, [model])], limits=LIMITS)
    request = chat(
        messages=[
            c.user("weather in Paris?"),
            assistant_calls(rt.ToolCall(id="call_1", name="get_weather", arguments='{"city":"Paris"}')),
            tool_result("call_1", '{"temp_c": 21}'),
        ],
        tools=[tool()],
        tool_choice=rt.ToolChoice(mode=rt.TOOL_CHOICE_MODE_AUTO),
        parallel_tool_calls=False,
        generation=rt.GenerationConfig(seed=7, presence_penalty=0.5, frequency_penalty=-0.5),
        user="user-1234",
    )
    async with running_router(config) as (_, router):
        reply = await router.chat(request)
    assert reply.text and fake.count() == 1
