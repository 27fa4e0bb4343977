"""The stream rules, over real gRPC, on both provider paths, with the upstream faked on the wire.

* "Fall back only before the first chunk" counts only what reached the caller (text, tool-call
  and reasoning pieces): role-only or empty chunks followed by an error still fall back.
* A 200 stream that ends with no content and no finish reason is a provider failure: the next
  candidate serves when nothing reached the caller, and UNAVAILABLE ends it when something did.
* A stream broken inside a tool call's arguments ends UNAVAILABLE, and no summary ever holds a
  truncated call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider, FakeToolCall
from testkit.harness import chat_model, openai_provider, router_config, running_router

CHAT = "/v1/chat/completions"
TRANSPORTS = ["native", "litellm"]
CAPS = ["tools", "reasoning"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def two_providers(fake: FakeProvider, transport: str):  # type: ignore[no-untyped-def]
    return router_config(
        [
            openai_provider(
                "primary",
                fake.base_url,
                [chat_model("alpha", capabilities=CAPS)],
                priority=10,
                transport=transport,
            ),
            openai_provider(
                "backup",
                fake.base_url,
                [chat_model("beta", capabilities=CAPS)],
                priority=20,
                transport=transport,
            ),
        ]
    )


def stream_request(**fields: Any) -> rt.StreamChatRequest:
    return rt.StreamChatRequest(
        messages=[c.user("hello there")], generation=rt.GenerationConfig(max_tokens=50), **fields
    )


TOOL = rt.Tool(name="get_weather")


async def collect(router: c.RouterClient, request: rt.StreamChatRequest) -> list[rt.StreamChatResponse]:
    return [m async for m in router.stream_chat(request)]


async def collect_until_error(
    router: c.RouterClient, request: rt.StreamChatRequest
) -> tuple[list[rt.StreamChatResponse], c.SekhaError]:
    received: list[rt.StreamChatResponse] = []
    with pytest.raises(c.SekhaError) as exc:
        async for message in router.stream_chat(request):
            received.append(message)
    return received, exc.value


# --------------------------------------------------------------------------- before the first event


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "failure",
    [
        Behaviour(preamble_chunks=2, die_after_chunks=0),  # role-only, empty delta, then a reset
        Behaviour(preamble_chunks=1, chunks=[], text="", omit_finish=True),  # role-only then [DONE]
        Behaviour(chunks=[], text="", omit_finish=True, include_usage=True),  # usage-only then [DONE]
    ],
    ids=["role-only-then-reset", "role-only-then-done", "usage-only-then-done"],
)
async def test_chunks_with_nothing_for_the_caller_then_a_failure_still_fall_back(
    fake: FakeProvider, transport: str, failure: Behaviour
) -> None:
    fake.script("alpha", failure)
    fake.set_default(Behaviour(chunks=["from ", "backup"]), model="beta")
    async with running_router(two_providers(fake, transport)) as (_, router):
        messages = await collect(router, stream_request())
    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == "from backup"
    summary = messages[-1].summary
    assert [(a.provider_id, a.outcome) for a in summary.attempts] == [
        ("primary", rt.ATTEMPT_OUTCOME_FAILED),
        ("backup", rt.ATTEMPT_OUTCOME_SUCCEEDED),
    ]
    assert fake.count(CHAT, "alpha") == 1 and fake.count(CHAT, "beta") == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_empty_200_stream_is_a_provider_failure_not_an_empty_answer(
    fake: FakeProvider, transport: str
) -> None:
    fake.set_default(Behaviour(chunks=[], text="", omit_finish=True))
    async with running_router(two_providers(fake, transport)) as (_, router):
        _, error = await collect_until_error(router, stream_request())
    assert isinstance(error, c.UnavailableError)  # never a silent OK with empty text
    assert [kind.split(":")[-1] for kind in error.details.metadata["attempts"].split(",")][:2] == [
        "empty_stream",
        "empty_stream",
    ]


# --------------------------------------------------------------------------- after the first event


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reasoning_piece_counts_as_output_so_a_later_failure_does_not_fall_back(
    fake: FakeProvider, transport: str
) -> None:
    # Reasoning reached the caller, then the stream ends with no answer and no finish reason.
    fake.script("alpha", Behaviour(reasoning="thinking hard", chunks=[], text="", omit_finish=True))
    async with running_router(two_providers(fake, transport)) as (_, router):
        received, error = await collect_until_error(router, stream_request())
    assert isinstance(error, c.UnavailableError) and error.details.reason == "STREAM_INTERRUPTED"
    assert "".join(m.reasoning.text for m in received) == "thinking hard"
    assert not any(m.HasField("summary") for m in received)
    assert fake.count(CHAT, "beta") == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "broken",
    [
        # id/name piece and one argument fragment, then the connection is reset
        Behaviour(
            tool_calls=[
                FakeToolCall("get_weather", '{"city": "Paris"}', "call_1", ['{"ci', 'ty": ', '"Paris"}'])
            ],
            die_after_chunks=2,
        ),
        # all pieces sent, but the stream stops without a finish reason: the call may be cut
        Behaviour(
            tool_calls=[FakeToolCall("get_weather", '{"city": "Pa', "call_1", ['{"ci', 'ty": "Pa'])],
            omit_finish=True,
        ),
    ],
    ids=["reset-inside-arguments", "ended-inside-arguments"],
)
async def test_a_stream_broken_inside_a_tool_call_ends_unavailable_without_a_summary(
    fake: FakeProvider, transport: str, broken: Behaviour
) -> None:
    fake.script("alpha", broken)
    async with running_router(two_providers(fake, transport)) as (_, router):
        received, error = await collect_until_error(router, stream_request(tools=[TOOL]))
    assert isinstance(error, c.UnavailableError) and error.details.reason == "STREAM_INTERRUPTED"
    assert not any(m.HasField("summary") for m in received)
    deltas = [m.tool_call for m in received]
    assert deltas and deltas[0].id == "call_1" and deltas[0].name == "get_weather"
    assert fake.count(CHAT, "beta") == 0  # output reached the caller: no fallback, no duplicate call
