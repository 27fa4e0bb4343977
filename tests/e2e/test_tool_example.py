"""examples/tool_conversation.py, run as a program against a router and the fake provider.

The fake answers the first turn with two parallel `get_weather` calls and the second with text;
the test checks the tool results the example sent back (computed by its local function) and
what it printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from testkit.fake_provider import Behaviour, FakeProvider, FakeToolCall
from testkit.harness import chat_model, openai_provider, router_config, running_router

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tool_conversation.py"


async def test_the_tool_conversation_example_runs_two_steps() -> None:
    calls = [
        FakeToolCall("get_weather", '{"city": "Paris"}', "call_paris"),
        FakeToolCall("get_weather", '{"city": "Oslo", "unit": "fahrenheit"}', "call_oslo"),
    ]
    async with FakeProvider() as fake:
        fake.script(
            "meteo",
            Behaviour(tool_calls=calls, usage=(50, 20)),
            Behaviour(text="Mild in both.", usage=(90, 5)),
        )
        model = chat_model("meteo", capabilities=["tools"], price=(1.0, 2.0))
        async with running_router(router_config([openai_provider("p", fake.base_url, [model])])) as (app, _):
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "clients" / "python"), str(ROOT)])}
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(EXAMPLE),
                "--target",
                f"127.0.0.1:{app.port}",
                "Weather in Paris and Oslo?",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        first, second = [r.json for r in fake.requests if r.path == "/v1/chat/completions"]
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "Mild in both."
    assert err.decode().strip() == f"[p/meteo, ${(50 + 40 + 90 * 1.0) / 1e6 + 5 * 2.0 / 1e6:.6f}]"
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    assistant, paris, oslo = second["messages"][1:]
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_paris", "call_oslo"]
    assert (paris["role"], paris["tool_call_id"]) == ("tool", "call_paris")
    assert json.loads(paris["content"]) == {
        "city": "Paris",
        "temperature": 10 + sum(map(ord, "paris")) % 20,
        "unit": "celsius",
    }
    celsius = 10 + sum(map(ord, "oslo")) % 20
    assert json.loads(oslo["content"]) == {
        "city": "Oslo",
        "temperature": round(celsius * 9 / 5 + 32),
        "unit": "fahrenheit",
    }
