"""`sekha chat --json-schema FILE` and `sekha chat --tools FILE` against a router and the fake."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from testkit.fake_provider import Behaviour, FakeProvider, FakeToolCall
from testkit.harness import chat_model, openai_provider, router_config, running_router

REPO = Path(__file__).resolve().parents[2]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture
async def router() -> AsyncIterator[tuple[str, FakeProvider]]:
    async with FakeProvider() as fake:
        model = chat_model("smart", capabilities=["tools", "structured_output"])
        async with running_router(router_config([openai_provider("p", fake.base_url, [model])])) as (app, _):
            yield f"127.0.0.1:{app.port}", fake


async def sekha(target: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sekha_cli",
        "chat",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SEKHA_ROUTER_TARGET": target},
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_json_schema_prints_conforming_json_and_refuses_the_rest(
    router: tuple[str, FakeProvider], tmp_path: Path
) -> None:
    target, fake = router
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    fake.script(
        "smart", Behaviour(text='{"name": "Ada", "age": 36}'), Behaviour(text='{"name": "Ada", "age": -1}')
    )
    code, out, err = await sekha(target, "--json-schema", str(schema), "Ada Lovelace, 36")
    assert code == 0, err
    assert json.loads(out) == {"name": "Ada", "age": 36}
    code, out, err = await sekha(target, "--json-schema", str(schema), "Ada Lovelace, 36")
    assert (code, out) == (9, "")  # nothing on stdout for a script to mistake for the answer
    assert "does not conform" in err and "$.age: minimum" in err
    sent = fake.requests[0].json["response_format"]
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }


async def test_tools_prints_the_calls(router: tuple[str, FakeProvider], tmp_path: Path) -> None:
    target, fake = router
    tools = tmp_path / "tools.json"
    tools.write_text(
        json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}])
    )
    calls = [
        FakeToolCall("get_weather", '{"city": "Paris"}'),
        FakeToolCall("get_weather", '{"city": "Oslo"}'),
    ]
    fake.script("smart", Behaviour(tool_calls=calls))
    code, out, err = await sekha(target, "--tools", str(tools), "Weather in Paris and Oslo?")
    assert code == 0, err
    assert out.splitlines() == ['get_weather {"city": "Paris"}', 'get_weather {"city": "Oslo"}']
    assert "finish tool_calls" in err
    assert fake.requests[0].json["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
    ]
    code, _, err = await sekha(target, "--tools", str(tmp_path / "missing.json"), "hi")
    assert code == 1 and "missing.json" in err
