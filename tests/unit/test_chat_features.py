"""The provider layer's shared pieces for tools, reasoning and usage, without a network.

What both provider paths rely on: tool-call deltas assembled (ids and names once, fragments
forwarded, calls numbered the way providers number them), the end-of-stream rules, usage
details read in every shape providers send them, and the structured-output verdict.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_service import domain as d
from router_service.providers.base import (
    ToolCallAssembler,
    check_stream_end,
    generation_params,
    tool_calls_from_openai,
    usage_from_openai,
)
from router_service.providers.errors import ProviderFailure
from router_service.structured import check_conformance, schema_problem


def fn(index: int | None = None, id: str | None = None, name: str | None = None, arguments: str = "") -> dict:
    raw: dict = {"function": {"arguments": arguments}}
    if index is not None:
        raw["index"] = index
    if id is not None:
        raw["id"] = id
    if name is not None:
        raw["function"]["name"] = name
    return raw


def test_assembler_forwards_fragments_and_names_each_call_once() -> None:
    calls = ToolCallAssembler()
    events = calls.feed([fn(0, "call_a", "get_weather", "")])
    events += calls.feed([fn(0, arguments='{"ci')])
    events += calls.feed([fn(1, "call_b", "get_time", "{}"), fn(0, arguments='ty": "Paris"}')])
    # Some providers repeat the id on every chunk: it is still announced once.
    events += calls.feed([fn(1, "call_b", None, "")])
    assert events == [
        d.ToolCallDelta(0, "call_a", "get_weather", ""),
        d.ToolCallDelta(0, "", "", '{"ci'),
        d.ToolCallDelta(1, "call_b", "get_time", "{}"),
        d.ToolCallDelta(0, "", "", 'ty": "Paris"}'),
    ]
    assert calls.calls() == (
        d.ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        d.ToolCall("call_b", "get_time", "{}"),
    )


def test_assembler_numbers_calls_without_an_index_by_their_ids() -> None:
    calls = ToolCallAssembler()
    calls.feed([fn(None, "a", "f", '{"x": 1}')])
    calls.feed([fn(None, "b", "g", '{"y"')])
    calls.feed([fn(None, None, None, ": 2}")])  # no id: continues the last call
    assert [(c.id, c.arguments) for c in calls.calls()] == [("a", '{"x": 1}'), ("b", '{"y": 2}')]


def test_object_arguments_are_serialized_and_text_kept_verbatim() -> None:
    raw = [
        {"id": "1", "function": {"name": "f", "arguments": {"city": "Paris"}}},
        {"id": "2", "function": {"name": "g", "arguments": '{ "spaced" :1 }'}},
    ]
    assert [c.arguments for c in tool_calls_from_openai(raw)] == ['{"city":"Paris"}', '{ "spaced" :1 }']


def test_stream_end_rules() -> None:
    empty = ToolCallAssembler()
    check_stream_end(d.FinishReason.STOP, False, empty)  # an empty answer the model finished is an answer
    check_stream_end(d.FinishReason.UNSPECIFIED, True, empty)  # text without a reason: accepted as before
    with pytest.raises(ProviderFailure) as nothing:
        check_stream_end(d.FinishReason.UNSPECIFIED, False, empty)
    assert nothing.value.kind == "empty_stream"
    cut = ToolCallAssembler()
    cut.feed([fn(0, "a", "f", '{"x": ')])
    with pytest.raises(ProviderFailure) as truncated:
        check_stream_end(d.FinishReason.UNSPECIFIED, True, cut)
    assert truncated.value.kind == "reset"
    check_stream_end(d.FinishReason.TOOL_CALLS, False, cut)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {
                "prompt_tokens": 100,
                "completion_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 60},
                "completion_tokens_details": {"reasoning_tokens": 15},
            },
            d.Usage(100, 20, cached_input_tokens=60, reasoning_tokens=15),
        ),
        (  # LiteLLM's Anthropic usage: prompt_tokens already includes reads and writes
            {
                "prompt_tokens": 100,
                "completion_tokens": 5,
                "cache_read_input_tokens": 50,
                "cache_creation_input_tokens": 30,
                "prompt_tokens_details": {"cached_tokens": 50, "cache_creation_tokens": 30},
            },
            d.Usage(100, 5, cached_input_tokens=50, cache_write_input_tokens=30),
        ),
        (  # DeepSeek
            {"prompt_tokens": 10, "completion_tokens": 1, "prompt_cache_hit_tokens": 8},
            d.Usage(10, 1, cached_input_tokens=8),
        ),
        ({"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": None}, d.Usage(3, 4)),
    ],
    ids=["openai", "anthropic-via-litellm", "deepseek", "no-details"],
)
def test_usage_details_in_every_shape(raw: dict, expected: d.Usage) -> None:
    assert usage_from_openai(raw) == expected


def test_request_fields_in_openai_shape() -> None:
    request = d.ChatRequest(
        messages=(d.ChatMessage(d.Role.USER, (d.ContentPart(text="hi"),)),),
        tools=(d.Tool("f"),),
        tool_choice=d.ToolChoice(mode=d.ToolChoiceMode.REQUIRED),
        parallel_tool_calls=False,
        response_format=d.ResponseFormat(d.ResponseFormatType.JSON_SCHEMA, schema={"type": "object"}),
        generation=d.GenerationConfig(seed=1, reasoning_effort=d.ReasoningEffort.MEDIUM),
    )
    assert generation_params(request) == {
        "seed": 1,
        "reasoning_effort": "medium",
        "tools": [
            {
                "type": "function",
                "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": False},
        },
    }


SCHEMA = d.ResponseFormat(
    d.ResponseFormatType.JSON_SCHEMA,
    schema={
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}}},
        "required": ["items"],
    },
)


@pytest.mark.parametrize(
    ("text", "conforms", "reason"),
    [
        ('{"items": [1, 2.5]}', True, ""),
        ('{"items": [1, 0]}', False, "$.items[1]: exclusiveMinimum"),
        ('{"items": "x"}', False, "$.items: type"),
        ('{"items": [NaN]}', False, "not JSON"),
        ("", False, "not JSON"),
    ],
)
def test_conformance_names_the_path_and_rule_only(text: str, conforms: bool, reason: str) -> None:
    assert check_conformance(SCHEMA, text) == d.Conformance(conforms, reason)


def test_text_format_is_not_checked_and_bad_schemas_are_named() -> None:
    assert check_conformance(d.ResponseFormat(), "anything") is None
    assert schema_problem({"type": "object"}) is None
    assert schema_problem({"type": "objekt"}) is not None
    assert schema_problem({"properties": {"a": {"minimum": "zero"}}}) == (
        "not a valid JSON Schema: $.properties.a.minimum: type rule of the meta-schema"
    )


@given(
    input_rate=st.floats(0, 1000),
    output_rate=st.floats(0, 1000),
    input_tokens=st.integers(0, 10**7),
    output_tokens=st.integers(0, 10**6),
)
def test_the_routing_estimate_is_the_one_formula_without_cache_or_reasoning_tokens(
    input_rate: float, output_rate: float, input_tokens: int, output_tokens: int
) -> None:
    price = d.Price(input_rate, output_rate, cached_input_per_million=0.1, reasoning_per_million=9.0)
    assert price.cost(input_tokens, output_tokens) == pytest.approx(
        d.price_tokens(price, input_tokens, output_tokens).total_usd, rel=1e-12, abs=1e-15
    )
