"""`sekha mcp` driven by the MCP SDK's own client, over stdio and over streamable HTTP.

Both services run in this test's event loop (fake provider at the network edge, embedded
Chroma); the MCP server is a subprocess (`python -m sekha_cli mcp ...`) that reaches them over
gRPC. Every tool is called and its structured result compared with what the services hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

from sekha.keys import generate_api_key, hash_api_key
from testkit.fake_provider import FakeProvider
from testkit.harness import (
    chat_model,
    embedding_config,
    embedding_model,
    openai_provider,
    router_config,
    running_embedding,
    running_router,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.subprocess]

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"llm_status", "llm_routing", "llm_models", "search_documents", "upsert_documents"}
MODEL_KEYS = {"primary/alpha", "backup/beta", "vec/mini-384"}


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with FakeProvider() as fake:
        config = router_config(
            [
                openai_provider(
                    "primary", fake.base_url, [chat_model("alpha", price=(1.0, 2.0))], priority=10
                ),
                openai_provider(
                    "backup", fake.base_url, [chat_model("beta", price=(10.0, 20.0))], priority=20
                ),
                openai_provider("vec", fake.base_url, [embedding_model("mini-384", 384)]),
            ]
        )
        async with running_router(config) as (router_app, _):
            emb_config = embedding_config(tmp_path_factory.mktemp("emb"), f"127.0.0.1:{router_app.port}")
            async with running_embedding(emb_config) as (emb_app, _):
                yield Stack(
                    {
                        "SEKHA_ROUTER_TARGET": f"127.0.0.1:{router_app.port}",
                        "SEKHA_EMBEDDING_TARGET": f"127.0.0.1:{emb_app.port}",
                    }
                )


async def exercise_every_tool(client: Client, base: str) -> None:
    listed = await client.list_tools()
    assert {tool.name for tool in listed.tools} == TOOLS
    schemas = {tool.name: tool.input_schema for tool in listed.tools}
    assert schemas["search_documents"]["required"] == ["base", "query"]

    models = await client.call_tool("llm_models", {})
    assert not models.is_error, models.content
    assert {m["key"] for m in models.structured_content["models"]} == MODEL_KEYS
    embedding_only = await client.call_tool("llm_models", {"task": "embedding"})
    assert [m["key"] for m in embedding_only.structured_content["models"]] == ["vec/mini-384"]

    status = await client.call_tool("llm_status", {})
    assert not status.is_error, status.content
    providers = status.structured_content["providers"]
    assert [p["provider_id"] for p in providers] == ["primary", "backup", "vec"]
    assert {p["breaker"]["state"] for p in providers} == {"closed"}
    assert status.structured_content["router"]["health"] == "SERVING"
    assert status.structured_content["embedding"]["health"] == "SERVING"
    assert "available" in status.structured_content["spend"]

    routing = await client.call_tool(
        "llm_routing",
        {"task": "chat_smart", "max_cost_usd": 0.05, "prompt": "how are you", "max_tokens": 100},
    )
    assert not routing.is_error, routing.content
    decision = routing.structured_content
    assert decision["chosen"]["key"] == "primary/alpha"
    assert [f["key"] for f in decision["fallbacks"]] == ["backup/beta"]
    assert decision["estimated_output_tokens"] == 100 and decision["reason"]
    assert decision["chosen"]["estimated_cost_usd"] == pytest.approx(
        (decision["estimated_input_tokens"] * 1.0 + 100 * 2.0) / 1e6
    )
    preferred = await client.call_tool("llm_routing", {"preferred_model": "backup/beta"})
    assert preferred.structured_content["chosen"]["key"] == "backup/beta"

    upsert = await client.call_tool(
        "upsert_documents",
        {
            "base": base,
            "model": "vec/mini-384",
            "documents": [
                {
                    "id": "invoice-7",
                    "text": "the invoice for March is overdue",
                    "metadata": {"kind": "billing"},
                },
                {
                    "id": "trip-2",
                    "text": "train tickets to Lyon for the conference",
                    "metadata": {"kind": "travel"},
                },
                {"id": "memo-1", "text": "the team offsite moves to Thursday", "metadata": {"kind": "memo"}},
            ],
        },
    )
    assert not upsert.is_error, upsert.content
    assert upsert.structured_content["upserted"] == 3
    assert [c["name"] for c in upsert.structured_content["collections"]] == [f"{base}_384"]

    search = await client.call_tool(
        "search_documents", {"base": base, "query": "train tickets to Lyon for the conference", "top_k": 2}
    )
    assert not search.is_error, search.content
    hits = search.structured_content["hits"]
    assert hits[0]["id"] == "trip-2" and hits[0]["metadata"] == {"kind": "travel"}
    assert search.structured_content["collections"] == [f"{base}_384"]
    filtered = await client.call_tool(
        "search_documents", {"base": base, "query": "anything", "metadata_filter": {"kind": "memo"}}
    )
    assert [h["id"] for h in filtered.structured_content["hits"]] == ["memo-1"]

    # a failed call is a tool error with the status, not a crash of the server
    missing = await client.call_tool("llm_routing", {"preferred_model": "no-such-model"})
    assert missing.is_error and "NOT_FOUND" in missing.content[0].text
    still_alive = await client.call_tool("llm_models", {"provider_id": "vec"})
    assert [m["key"] for m in still_alive.structured_content["models"]] == ["vec/mini-384"]


async def test_every_tool_over_stdio(stack: Stack) -> None:
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "sekha_cli", "mcp"], env=stack.env, cwd=str(REPO)
    )
    async with Client(server, read_timeout_seconds=60) as client:
        await exercise_every_tool(client, "stdio_notes")


async def spawn_http_mcp(env: dict[str, str], *extra_args: str) -> asyncio.subprocess.Process:
    """`sekha mcp --transport http --port 0 ...` with its stderr piped (it announces the URL there)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sekha_cli",
        "mcp",
        "--transport",
        "http",
        "--port",
        "0",
        *extra_args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )


@contextlib.asynccontextmanager
async def http_server(env: dict[str, str], *extra_args: str) -> AsyncIterator[str]:
    process = await spawn_http_mcp({**os.environ, **env}, *extra_args)
    try:
        assert process.stderr is not None
        url = None
        seen: list[str] = []
        while url is None:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            if not line:
                raise AssertionError(f"the MCP server exited before listening: {''.join(seen)}")
            seen.append(line)
            match = re.search(r"(http://127\.0\.0\.1:\d+/mcp)", line)
            url = match.group(1) if match else None
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def test_every_tool_over_streamable_http(stack: Stack) -> None:
    async with http_server(stack.env) as url, Client(url, read_timeout_seconds=60) as client:
        await exercise_every_tool(client, "http_notes")


async def test_tool_results_carry_what_the_services_hold(stack: Stack) -> None:
    """Two clients, two transports, one truth: a document upserted over stdio is found over HTTP."""
    stdio = StdioServerParameters(
        command=sys.executable, args=["-m", "sekha_cli", "mcp"], env=stack.env, cwd=str(REPO)
    )
    async with Client(stdio, read_timeout_seconds=60) as writer:
        written = await writer.call_tool(
            "upsert_documents",
            {"base": "shared", "documents": [{"id": "only", "text": "a single shared document"}]},
        )
        assert not written.is_error, written.content
    async with http_server(stack.env) as url, Client(url, read_timeout_seconds=60) as reader:
        found: Any = await reader.call_tool(
            "search_documents", {"base": "shared", "query": "shared document"}
        )
        assert [h["id"] for h in found.structured_content["hits"]] == ["only"]


async def test_http_with_a_token_hash_serves_only_bearers_of_the_token(stack: Stack) -> None:
    token = generate_api_key()
    env = {**stack.env, "SEKHA_MCP_TOKEN_HASH": hash_api_key(token)}
    async with http_server(env) as url:
        async with httpx2.AsyncClient() as plain:
            initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
            for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"x-api-key": token[:-1]}):
                refused = await plain.post(url, json=initialize, headers=headers)
                assert refused.status_code == 401
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert token not in refused.text
        bearer = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with Client(streamable_http_client(url, http_client=bearer), read_timeout_seconds=60) as client:
            models = await client.call_tool("llm_models", {})
            assert not models.is_error, models.content
            assert {m["key"] for m in models.structured_content["models"]} == MODEL_KEYS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to serve MCP over HTTP on 0.0.0.0 without authentication"),
        (["--token-hash", "sk-a-raw-token-pasted-by-mistake"], "token hash 1: must be sha256:"),
    ],
)
async def test_http_refuses_to_start_open_beyond_loopback_or_with_a_bad_hash(
    args: list[str], message: str
) -> None:
    without_token = {k: v for k, v in os.environ.items() if k != "SEKHA_MCP_TOKEN_HASH"}
    process = await spawn_http_mcp(without_token, *args)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert message in stderr.decode()
    assert "sk-a-raw-token" not in stderr.decode()
