"""The OpenAI-compatible HTTP door, driven by the official `openai` SDK (async and sync).

The router serves gRPC and HTTP from one process on one Gateway; the provider is the fake at the
network edge. Each error status is checked as the SDK's own exception type, since that is what a
service moved behind Sekha will see.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router_service.server import RouterDeps
from sekha import client as c
from sekha.keys import hash_api_key
from sekha.router.v1 import router_service_pb2 as rt
from sekha_runtime.telemetry import TelemetryConfig, setup_telemetry
from testkit.fake_provider import Behaviour, FakeProvider, FakeToolCall
from testkit.harness import chat_model, embedding_model, openai_provider, router_config, running_router

USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def door_config(fake: FakeProvider, **sections: Any) -> Any:
    capable = ["tools", "structured_output", "reasoning"]
    models = [
        chat_model("chatty", capabilities=capable),
        chat_model("small", tasks=("chat_small",)),
        embedding_model("embed-8", 8),
    ]
    server = {"http_port": 0, **sections.pop("server", {})}
    return router_config([openai_provider("fake", fake.base_url, models)], server=server, **sections)


def sdk(port: int, api_key: str = "unused", **options: Any) -> openai.AsyncOpenAI:
    options.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, **options)


async def test_chat_completion_answers_with_usage_and_routing_headers(fake: FakeProvider) -> None:
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="chatty", messages=USER, max_tokens=40, temperature=0.5
            )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    assert raw.headers["x-sekha-provider"] == "fake"
    assert raw.headers["x-sekha-model"] == "chatty"
    assert raw.headers["x-sekha-attempts"] == "fake/chatty:succeeded"
    assert float(raw.headers["x-sekha-cost-usd"]) == pytest.approx((2 * 1.0 + 3 * 2.0) / 1e6)
    upstream = fake.requests[-1].json
    assert upstream["model"] == "chatty"
    assert upstream["messages"] == [{"role": "user", "content": "hello there"}]
    assert upstream["max_tokens"] == 40 and upstream["temperature"] == 0.5


async def test_streamed_chat_concatenates_to_the_text_and_reports_usage_last(fake: FakeProvider) -> None:
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            stream = await client.chat.completions.create(
                model="chatty", messages=USER, stream=True, stream_options={"include_usage": True}
            )
            chunks = [chunk async for chunk in stream]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "echo: hello there"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert len({ch.id for ch in chunks}) == 1


async def test_task_alias_and_a_named_model_route_on_a_task_the_model_serves(fake: FakeProvider) -> None:
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            by_alias = await client.chat.completions.with_raw_response.create(
                model="sekha/chat_small", messages=USER
            )
            by_name = await client.chat.completions.with_raw_response.create(model="small", messages=USER)
            by_pair = await client.chat.completions.with_raw_response.create(
                model="fake/chatty", messages=USER
            )
    assert by_alias.headers["x-sekha-model"] == "small"
    assert by_name.headers["x-sekha-model"] == "small"
    assert by_pair.headers["x-sekha-model"] == "chatty"


async def test_embeddings_in_float_and_base64_equal_the_grpc_vectors(fake: FakeProvider) -> None:
    async with running_router(door_config(fake)) as (app, router):
        grpc_reply = await router.embed(rt.EmbedRequest(inputs=["alpha", "beta"]))
        async with sdk(app.http_port) as client:
            as_float = await client.embeddings.create(
                model="embed-8", input=["alpha", "beta"], encoding_format="float"
            )
            # The SDK asks for base64 by default and decodes it itself.
            as_default = await client.embeddings.create(model="sekha/embedding", input=["alpha", "beta"])
        raw = await asyncio.to_thread(
            __import__("urllib.request").request.urlopen,
            __import__("urllib.request").request.Request(
                f"http://127.0.0.1:{app.http_port}/v1/embeddings",
                data=b'{"model": "embed-8", "input": "alpha", "encoding_format": "base64"}',
                headers={"Content-Type": "application/json"},
            ),
        )
        body = __import__("json").loads(raw.read())
    expected = [list(e.values) for e in grpc_reply.embeddings]
    for got, want in zip(as_float.data, expected, strict=True):
        assert got.embedding == pytest.approx(want, abs=1e-6)
    for got, want in zip(as_default.data, expected, strict=True):
        assert got.embedding == pytest.approx(want, abs=1e-6)
    decoded = struct.unpack("<8f", base64.b64decode(body["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(expected[0], abs=1e-6)
    assert as_float.usage.prompt_tokens > 0


async def test_models_list_names_the_configured_models_and_the_task_aliases(fake: FakeProvider) -> None:
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            listed = [m.id async for m in client.models.list()]
            one = await client.models.retrieve("chatty")
            with pytest.raises(openai.NotFoundError):
                await client.models.retrieve("no-such-model")
    assert {"chatty", "small", "embed-8", "sekha/chat_smart", "sekha/embedding"} <= set(listed)
    assert one.owned_by == "fake"


async def test_bad_fields_are_400_naming_the_param(fake: FakeProvider) -> None:
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            with pytest.raises(openai.BadRequestError) as hot:
                await client.chat.completions.create(model="chatty", messages=USER, temperature=5)
            with pytest.raises(openai.BadRequestError) as empty:
                await client.chat.completions.create(model="chatty", messages=[])
            with pytest.raises(openai.BadRequestError) as cost:
                await client.chat.completions.create(
                    model="chatty", messages=USER, extra_headers={"x-sekha-max-cost-usd": "-1"}
                )
    assert hot.value.param == "temperature"
    assert empty.value.param == "messages"
    assert cost.value.param == "x-sekha-max-cost-usd"
    assert not fake.requests, "nothing invalid reaches the provider"


async def test_unknown_model_is_404_and_a_wrong_key_is_401(fake: FakeProvider) -> None:
    auth = {"enabled": True, "keys": [{"id": "team-a", "hash": hash_api_key("sk-good")}]}
    async with running_router(door_config(fake, auth=auth)) as (app, _):
        async with sdk(app.http_port, api_key="sk-good") as good, sdk(app.http_port, api_key="sk-bad") as bad:
            with pytest.raises(openai.NotFoundError) as missing:
                await good.chat.completions.create(model="gpt-nowhere", messages=USER)
            with pytest.raises(openai.AuthenticationError):
                await bad.chat.completions.create(model="chatty", messages=USER)
            answered = await good.chat.completions.create(model="chatty", messages=USER)
    assert missing.value.code == "model_not_found"
    assert answered.choices[0].message.content == "echo: hello there"


async def test_rate_limit_is_429_with_retry_after(fake: FakeProvider) -> None:
    limits = {"default_caller": {"requests_per_minute": 1}}
    async with running_router(door_config(fake, rate_limits=limits)) as (app, _):
        async with sdk(app.http_port) as client:
            await client.chat.completions.create(model="chatty", messages=USER)
            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(model="chatty", messages=USER)
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.code == "rate_limit_exceeded"


async def test_every_provider_failing_is_503_and_the_sdk_retry_recovers(fake: FakeProvider) -> None:
    fake.script(None, Behaviour(status=500), Behaviour(status=500))
    config = door_config(fake, retry={"max_attempts": 1, "backoff_base_s": 0, "backoff_max_s": 0})
    async with running_router(config) as (app, _):
        async with sdk(app.http_port) as client:
            with pytest.raises(openai.InternalServerError) as failed:
                await client.chat.completions.create(model="chatty", messages=USER)
        # The SDK's own retry loop, honouring Retry-After, gets through once the provider recovers.
        async with sdk(app.http_port, max_retries=2) as retrying:
            answered = await retrying.chat.completions.create(model="chatty", messages=USER)
    assert failed.value.status_code == 503
    assert int(failed.value.response.headers["retry-after"]) >= 1
    assert failed.value.response.headers["x-sekha-attempts"] == "fake/chatty:failed:http_500"
    assert answered.choices[0].message.content == "echo: hello there"


async def test_deadline_from_header_is_504(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(latency_s=5.0))
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            with pytest.raises(openai.APIStatusError) as late:
                await client.chat.completions.create(
                    model="chatty", messages=USER, extra_headers={"x-sekha-timeout-s": "0.3"}
                )
    assert late.value.status_code == 504


async def test_stream_broken_after_output_ends_in_an_error_not_done(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(text="one two three four", die_after_chunks=2))
    received: list[str] = []
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            stream = await client.chat.completions.create(model="chatty", messages=USER, stream=True)
            with pytest.raises(openai.APIError):
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        received.append(chunk.choices[0].delta.content)
    assert "".join(received) == "one two"


async def test_grpc_and_http_route_and_bill_the_same_request_alike(fake: FakeProvider) -> None:
    async with running_router(door_config(fake)) as (app, router):
        grpc_reply = await router.chat(
            rt.ChatRequest(
                messages=[c.user("hello there")],
                routing=rt.RoutingPreferences(preferred_model="chatty"),
                generation=rt.GenerationConfig(max_tokens=40),
                metadata={"tenant": "parity"},
            )
        )
        async with sdk(app.http_port) as client:
            http_raw = await client.chat.completions.with_raw_response.create(
                model="chatty", messages=USER, max_tokens=40, metadata={"tenant": "parity"}
            )
        spend = await router.get_spend(rt.GetSpendRequest(caller="parity"))
    http_reply = http_raw.parse()
    assert http_raw.headers["x-sekha-provider"] == grpc_reply.routing.chosen.provider_id
    assert http_raw.headers["x-sekha-model"] == grpc_reply.routing.chosen.model
    assert http_raw.headers["x-sekha-routing-reason"] == grpc_reply.routing.reason
    assert http_reply.usage is not None
    assert (http_reply.usage.prompt_tokens, http_reply.usage.completion_tokens) == (
        grpc_reply.usage.input_tokens,
        grpc_reply.usage.output_tokens,
    )
    assert float(http_raw.headers["x-sekha-cost-usd"]) == pytest.approx(grpc_reply.cost.cost_usd)
    assert sum(row.request_count for row in spend.rows) == 2
    assert sum(row.cost_usd for row in spend.rows) == pytest.approx(2 * grpc_reply.cost.cost_usd)


async def test_sync_sdk_client_chats(fake: FakeProvider) -> None:
    async with running_router(door_config(fake)) as (app, _):

        def call() -> str:
            with openai.OpenAI(
                base_url=f"http://127.0.0.1:{app.http_port}/v1", api_key="x", max_retries=0
            ) as sync:
                reply = sync.chat.completions.create(model="chatty", messages=USER)
                return reply.choices[0].message.content or ""

        assert await asyncio.to_thread(call) == "echo: hello there"


async def test_traceparent_from_the_caller_parents_the_door_span_and_the_provider_call(
    fake: FakeProvider,
) -> None:
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry(
        "sekha-router", TelemetryConfig(), span_exporter=spans, metric_readers=(), environ={}
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        async with running_router(door_config(fake), RouterDeps(telemetry=telemetry)) as (app, _):
            async with sdk(app.http_port) as client:
                await client.chat.completions.create(
                    model="chatty",
                    messages=USER,
                    extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
                )
        telemetry.force_flush()
        finished = spans.get_finished_spans()
    finally:
        telemetry.shutdown()
    door = [s for s in finished if s.name == "POST /v1/chat/completions"]
    assert len(door) == 1 and f"{door[0].context.trace_id:032x}" == trace_id
    assert door[0].parent is not None and door[0].parent.span_id == 0x00F067AA0BA902B7
    sent = fake.requests[-1].header("traceparent")
    assert sent is not None and sent.split("-")[1] == trace_id


async def test_draining_router_says_not_serving_and_refuses_new_requests(fake: FakeProvider) -> None:
    import aiohttp

    async with running_router(door_config(fake)) as (app, _):
        url = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/readyz") as ready:
                assert ready.status == 200
            await app.serving.set_serving(False)
            async with session.get(f"{url}/readyz") as draining:
                assert draining.status == 503
            body = {"model": "chatty", "messages": USER}
            async with session.post(f"{url}/v1/chat/completions", json=body) as refused:
                assert refused.status == 503 and refused.headers["Retry-After"] == "1"
                assert (await refused.json())["error"]["message"] == "the router is shutting down"
            async with session.get(f"{url}/healthz") as alive:
                assert alive.status == 200


async def test_langchain_chat_openai_streams_through_the_door(fake: FakeProvider) -> None:
    from langchain_openai import ChatOpenAI

    async with running_router(door_config(fake)) as (app, _):
        llm = ChatOpenAI(
            model="chatty", base_url=f"http://127.0.0.1:{app.http_port}/v1", api_key="unused", max_retries=0
        )
        pieces = [chunk.content async for chunk in llm.astream("hello there")]
        whole = await llm.ainvoke("hello again")
    assert "".join(str(p) for p in pieces) == "echo: hello there"
    assert whole.content == "echo: hello again"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PARIS = FakeToolCall(name="get_weather", arguments='{"city": "Paris"}', id="call_paris")


def last_chat(fake: FakeProvider) -> dict[str, Any]:
    return [r for r in fake.requests if r.path == "/v1/chat/completions"][-1].json


async def test_tool_call_round_trip_through_the_sdk(fake: FakeProvider) -> None:
    fake.script(None, Behaviour(tool_calls=[PARIS]), Behaviour(text="21 degrees in Paris."))
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            first = await client.chat.completions.create(
                model="chatty", messages=USER, tools=[WEATHER], tool_choice="required"
            )
            sent_first = last_chat(fake)
            call = first.choices[0].message.tool_calls[0]
            final = await client.chat.completions.create(
                model="chatty",
                tools=[WEATHER],
                messages=[
                    *USER,
                    first.choices[0].message.model_dump(exclude_none=True, include={"role", "tool_calls"}),
                    {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
                ],
            )
            sent_final = last_chat(fake)
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_paris",
        "get_weather",
        '{"city": "Paris"}',
    )
    assert sent_first["tools"] == [WEATHER] and sent_first["tool_choice"] == "required"
    assert final.choices[0].message.content == "21 degrees in Paris."
    assert sent_final["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert sent_final["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_paris",
        "content": '{"temp_c": 21}',
    }


async def test_streamed_tool_call_fragments_concatenate_and_parallel_calls_keep_their_index(
    fake: FakeProvider,
) -> None:
    calls = [
        FakeToolCall(
            name="get_weather",
            arguments='{"city": "Paris"}',
            id="call_a",
            chunks=['{"ci', 'ty": "Pa', 'ris"}'],
        ),
        FakeToolCall(name="get_weather", arguments='{"city": "Rome"}', id="call_b"),
    ]
    fake.script(None, Behaviour(tool_calls=calls))
    arguments: dict[int, str] = {}
    names: dict[int, str] = {}
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            stream = await client.chat.completions.create(
                model="chatty", messages=USER, tools=[WEATHER], parallel_tool_calls=True, stream=True
            )
            finish = None
            async for chunk in stream:
                if not chunk.choices:
                    continue
                for piece in chunk.choices[0].delta.tool_calls or ():
                    arguments[piece.index] = arguments.get(piece.index, "") + (piece.function.arguments or "")
                    if piece.function.name:
                        names[piece.index] = piece.function.name
                finish = chunk.choices[0].finish_reason or finish
    assert arguments == {0: '{"city": "Paris"}', 1: '{"city": "Rome"}'}
    assert names == {0: "get_weather", 1: "get_weather"}
    assert finish == "tool_calls"
    assert last_chat(fake)["parallel_tool_calls"] is True


async def test_json_schema_answers_say_whether_they_conform(fake: FakeProvider) -> None:
    fake.script(None, Behaviour(text='{"age": 36}'), Behaviour(text='{"age": "old"}'))
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": schema, "strict": True},
    }
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            good = await client.chat.completions.with_raw_response.create(
                model="chatty", messages=USER, response_format=response_format
            )
            bad = await client.chat.completions.with_raw_response.create(
                model="chatty", messages=USER, response_format=response_format
            )
    assert good.headers["x-sekha-conforms"] == "true"
    assert good.parse().choices[0].message.content == '{"age": 36}'
    assert bad.headers["x-sekha-conforms"] == "false"
    assert "age" in bad.headers["x-sekha-conformance-reason"]
    assert last_chat(fake)["response_format"]["json_schema"]["schema"] == schema


async def test_reasoning_and_cached_tokens_reach_the_sdk(fake: FakeProvider) -> None:
    fake.script(
        None,
        Behaviour(
            text="42", reasoning="six times seven", usage=(100, 20), cached_tokens=60, reasoning_tokens=12
        ),
    )
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            reply = await client.chat.completions.create(
                model="chatty", messages=USER, reasoning_effort="high"
            )
    message = reply.choices[0].message
    assert message.content == "42"
    assert (message.model_extra or {}).get("reasoning_content") == "six times seven"
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 60
    assert reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 12
    assert last_chat(fake)["reasoning_effort"] == "high"


async def test_a_tool_request_for_a_model_without_tools_is_refused_naming_why(fake: FakeProvider) -> None:
    async with running_router(door_config(fake)) as (app, _):
        async with sdk(app.http_port) as client:
            with pytest.raises(openai.BadRequestError) as refused:
                await client.chat.completions.create(model="small", messages=USER, tools=[WEATHER])
    assert "tools" in refused.value.message
    assert not fake.requests


async def test_langchain_binds_tools_through_the_door(fake: FakeProvider) -> None:
    from langchain_openai import ChatOpenAI

    fake.script(None, Behaviour(tool_calls=[PARIS]))
    async with running_router(door_config(fake)) as (app, _):
        llm = ChatOpenAI(
            model="chatty", base_url=f"http://127.0.0.1:{app.http_port}/v1", api_key="unused", max_retries=0
        )
        message = await llm.bind_tools([WEATHER]).ainvoke("weather in Paris?")
    assert message.tool_calls == [
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_paris", "type": "tool_call"}
    ]


async def test_a_body_that_is_not_json_is_400_and_nan_is_not_json(fake: FakeProvider) -> None:
    import aiohttp

    async with running_router(door_config(fake)) as (app, _):
        url = f"http://127.0.0.1:{app.http_port}/v1/chat/completions"
        async with aiohttp.ClientSession() as session:
            for body in (b"{not json", b'{"model": "chatty", "messages": [], "temperature": NaN}'):
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as reply:
                    error = (await reply.json())["error"]
                    assert reply.status == 400 and error["param"] == "body", error
    assert not fake.requests


async def test_an_unchanged_openai_program_works_with_openai_base_url(fake: FakeProvider) -> None:
    """The README's promise: `OPENAI_BASE_URL=http://127.0.0.1:PORT/v1` and nothing else changes."""
    import os
    import sys

    program = (
        "from openai import OpenAI\n"
        "client = OpenAI()\n"
        "messages = [{'role': 'user', 'content': 'hi'}]\n"
        "reply = client.chat.completions.create(model='chatty', messages=messages)\n"
        "print(reply.choices[0].message.content)\n"
    )
    async with running_router(door_config(fake)) as (app, _):
        env = {
            **os.environ,
            "OPENAI_BASE_URL": f"http://127.0.0.1:{app.http_port}/v1",
            "OPENAI_API_KEY": "unused",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            program,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == "echo: hi"
