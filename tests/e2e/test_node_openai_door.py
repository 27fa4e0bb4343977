"""The official `openai` Node package, pointed at the Router's HTTP door with `baseURL`."""

from __future__ import annotations

import os

import pytest

from testkit.fake_provider import Behaviour, FakeProvider, FakeToolCall
from testkit.harness import chat_model, embedding_model, openai_provider, router_config, running_router
from tests.node_tools import ensure_node_modules, run_npm_script

pytestmark = [pytest.mark.e2e, pytest.mark.subprocess]


async def test_openai_node_package_suite_passes_against_the_door() -> None:
    ensure_node_modules()
    async with FakeProvider() as fake:
        models = [
            chat_model("chatty"),
            chat_model("toolbot", capabilities=["tools"]),
            embedding_model("embed-8", 8),
        ]
        # The tool round trip: a call first, then the answer once the result is sent back.
        call = FakeToolCall(name="get_weather", arguments='{"city": "Paris"}', id="call_paris")
        fake.script("toolbot", Behaviour(tool_calls=[call]), Behaviour(text="21 degrees in Paris."))
        config = router_config([openai_provider("fake", fake.base_url, models)], server={"http_port": 0})
        async with running_router(config) as (app, _):
            env = {**os.environ, "SEKHA_OPENAI_BASE_URL": f"http://127.0.0.1:{app.http_port}/v1"}
            code, text = await run_npm_script("test:openai", env)
    assert code == 0, text
    assert "# fail 0" in text and "# pass 6" in text, text
