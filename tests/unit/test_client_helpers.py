"""The Python client's helpers for tools and structured output build the messages the contract expects."""

from __future__ import annotations

import pytest

from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_tool_from_a_json_schema_round_trips() -> None:
    weather = c.tool("get_weather", SCHEMA, "Current weather", strict=True)
    assert (weather.name, weather.description, weather.strict) == ("get_weather", "Current weather", True)
    assert c.json_from(weather.parameters) == SCHEMA
    assert not c.tool("now").HasField("parameters")  # no arguments at all


def test_json_schema_format() -> None:
    fmt = c.json_schema_format(SCHEMA, "place")
    assert fmt.type == rt.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert (fmt.json_schema.name, fmt.json_schema.strict) == ("place", True)
    assert c.json_from(fmt.json_schema.schema) == SCHEMA


def test_append_tool_results_answers_every_call_in_order() -> None:
    calls = [
        rt.ToolCall(id="a", name="f", arguments='{"x": 1}'),
        rt.ToolCall(id="b", name="g", arguments="{}"),
    ]
    reply = rt.ChatResponse(tool_calls=calls, text="Let me check.")
    request = rt.ChatRequest(messages=[c.user("q")])
    c.append_tool_results(request.messages, reply, {"b": "plain text", "a": {"y": [1, 2]}})
    turn, first, second = request.messages[1:]
    assert turn.role == rt.ROLE_ASSISTANT and list(turn.tool_calls) == calls
    assert [p.text for p in turn.parts] == ["Let me check."]
    assert (first.role, first.tool_call_id, first.parts[0].text) == (rt.ROLE_TOOL, "a", '{"y": [1, 2]}')
    assert (second.tool_call_id, second.parts[0].text) == ("b", "plain text")
    assert c.tool_arguments(calls[0]) == {"x": 1}
    with pytest.raises(KeyError):
        c.append_tool_results([], reply, {"a": "only one"})
