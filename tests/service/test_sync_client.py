"""The blocking client (`sekha.sync`) against a real router: the same answers and typed errors.

The router serves on this test's event loop, so every blocking call runs in a worker thread.
"""

from __future__ import annotations

import asyncio

import pytest

from sekha.client import ConnectionConfig, InvalidArgumentError, UnavailableError, user
from sekha.router.v1 import router_service_pb2 as rt
from sekha.sync import SyncRouterClient
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import chat_model, openai_provider, router_config, running_router


async def test_sync_client_chats_streams_and_raises_typed_errors() -> None:
    async with FakeProvider(text="one two three") as fake:
        config = router_config([openai_provider("fake", fake.base_url, [chat_model("chatty")])])
        async with running_router(config) as (app, _):
            target = ConnectionConfig(f"127.0.0.1:{app.port}", default_timeout_s=10.0)

            def converse() -> tuple[str, str, list[str], str]:
                with SyncRouterClient(target) as router:
                    health = router.health()
                    reply = router.chat(rt.ChatRequest(messages=[user("hi")]))
                    deltas = [
                        event.delta.text
                        for event in router.stream_chat(rt.StreamChatRequest(messages=[user("hi")]))
                        if event.HasField("delta")
                    ]
                    with pytest.raises(InvalidArgumentError) as bad:
                        router.chat(rt.ChatRequest())
                    return health, reply.text, deltas, bad.value.details.field_violations[0][0]

            health, text, deltas, field = await asyncio.to_thread(converse)
    assert health == "SERVING"
    assert text == "one two three"
    assert "".join(deltas) == "one two three"
    assert field == "messages"


async def test_sync_stream_broken_after_output_raises_unavailable() -> None:
    async with FakeProvider(default=Behaviour(text="a b c d", die_after_chunks=2)) as fake:
        config = router_config([openai_provider("fake", fake.base_url, [chat_model("chatty")])])
        async with running_router(config) as (app, _):
            target = ConnectionConfig(f"127.0.0.1:{app.port}", default_timeout_s=10.0)

            def read_stream() -> list[str]:
                received: list[str] = []
                with SyncRouterClient(target) as router, pytest.raises(UnavailableError):
                    for event in router.stream_chat(rt.StreamChatRequest(messages=[user("hi")])):
                        if event.HasField("delta"):
                            received.append(event.delta.text)
                return received

            received = await asyncio.to_thread(read_stream)
    assert received, "the stream broke after output, so some output reached the caller first"
