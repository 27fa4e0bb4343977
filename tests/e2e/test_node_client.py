"""The Node.js client, generated from the same protos, against both services started here."""

from __future__ import annotations

import os

import pytest

from testkit.fake_provider import Behaviour, FakeProvider, FakeToolCall
from testkit.harness import (
    chat_model,
    embedding_config,
    embedding_model,
    openai_provider,
    router_config,
    running_embedding,
    running_router,
)
from tests.node_tools import ensure_node_modules, run_npm_script

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


async def test_node_client_suite_passes_against_both_services(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ensure_node_modules()
    async with FakeProvider() as fake:
        # The only model with tools: a Node request with tools is routed here, and it calls them.
        toolsmith = chat_model("toolsmith", capabilities=["tools"])
        call = FakeToolCall("get_weather", '{"city": "Paris"}', "call_node", ['{"city"', ': "Paris"}'])
        fake.set_default(Behaviour(tool_calls=[call]), model="toolsmith")
        config = router_config(
            [
                openai_provider(
                    "fake",
                    fake.base_url,
                    [chat_model("chatty"), toolsmith, embedding_model("embed-384", 384)],
                )
            ]
        )
        async with running_router(config) as (router_app, _):
            emb_config = embedding_config(tmp_path, f"127.0.0.1:{router_app.port}")
            async with running_embedding(emb_config) as (emb_app, _):
                env = {
                    **os.environ,
                    "SEKHA_ROUTER_TARGET": f"127.0.0.1:{router_app.port}",
                    "SEKHA_EMBEDDING_TARGET": f"127.0.0.1:{emb_app.port}",
                }
                code, text = await run_npm_script("test", env)
    assert code == 0, text
    assert "# fail 0" in text and "# pass 0" not in text, text
    # What the Node client's tool request looked like on the provider's wire.
    first, then = [r.json for r in fake.requests if r.model == "toolsmith"]
    assert first["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    assert first["tool_choice"] == "required"
    assert then["messages"][1]["tool_calls"][0]["id"] == "call_node"
    assert then["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_node",
        "content": '{"temperature":21}',
    }
