"""The fake provider's Anthropic Messages API, exercised with a raw aiohttp client.

The router's Anthropic tests see the fake only through LiteLLM, which forgives a lot; these
pin the wire format the fake promises (Anthropic's JSON and SSE event sequence, its error
shape, the requests the real API refuses) so that those tests prove something about Anthropic.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from testkit import Behaviour, FakeProvider

MESSAGES = "/v1/messages"
HEADERS = {"x-api-key": "sk-ant-unit", "anthropic-version": "2023-06-01"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(models=["claude-a", "claude-b"]) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def messages_body(text: str = "hello big world", **extra: Any) -> dict[str, Any]:
    return {"model": "claude-a", "max_tokens": 64, "messages": [{"role": "user", "content": text}], **extra}


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs; Anthropic names every event and repeats the name as data.type."""
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_json_answer_has_anthropic_shape_and_counts_the_system_prompt(fake, http):
    body = messages_body(system=[{"type": "text", "text": "be brief"}])
    async with http.post(fake.base_url + MESSAGES, json=body, headers=HEADERS) as resp:
        data = await resp.json()
    assert resp.status == 200
    assert data["type"] == "message" and data["role"] == "assistant" and data["model"] == "claude-a"
    assert data["content"] == [{"type": "text", "text": "echo: hello big world"}]
    assert data["stop_reason"] == "end_turn"
    assert data["usage"] == {"input_tokens": 5, "output_tokens": 4}  # system words count too
    assert fake.requests[-1].header("X-Api-Key") == "sk-ant-unit"


async def test_stream_sends_anthropics_event_sequence(fake, http):
    fake.script(None, Behaviour(chunks=["Hel", "lo"], usage=(11, 2), finish_reason="length"))
    async with http.post(fake.base_url + MESSAGES, json=messages_body(stream=True), headers=HEADERS) as resp:
        raw = await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == data["type"] for name, data in events)
    start, deltas, final = events[0][1], [e[1] for e in events[3:5]], events[6][1]
    assert start["message"]["usage"] == {"input_tokens": 11, "output_tokens": 1}
    assert [d["delta"] for d in deltas] == [{"type": "text_delta", "text": t} for t in ("Hel", "lo")]
    assert final["delta"]["stop_reason"] == "max_tokens" and final["usage"] == {"output_tokens": 2}


async def test_stream_error_event_ends_the_stream_after_the_given_chunks(fake, http):
    fake.script(None, Behaviour(chunks=["a", "b", "c"], stream_error_after_chunks=1))
    async with http.post(fake.base_url + MESSAGES, json=messages_body(stream=True), headers=HEADERS) as resp:
        events = sse_events(await resp.text())
    assert [name for name, _ in events][-2:] == ["content_block_delta", "error"]
    assert events[-1][1]["error"]["type"] == "overloaded_error"
    assert fake.requests[-1].completed  # a clean end of the HTTP answer, unlike die_after_chunks


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ],
)
async def test_scripted_errors_use_anthropics_error_shape(fake, http, status, kind):
    fake.script(None, Behaviour(status=status, retry_after="7"))
    async with http.post(fake.base_url + MESSAGES, json=messages_body(), headers=HEADERS) as resp:
        data = await resp.json()
    assert resp.status == status and resp.headers["retry-after"] == "7"
    assert data["type"] == "error" and data["error"]["type"] == kind and data["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"anthropic-version": "2023-06-01"}, messages_body(), 401),
        ({"x-api-key": "k"}, messages_body(), 400),
        (HEADERS, {"model": "claude-a", "messages": [{"role": "user", "content": "hi"}]}, 400),
        (HEADERS, messages_body() | {"messages": [{"role": "system", "content": "x"}]}, 400),
    ],
    ids=["no-key", "no-version", "no-max-tokens", "system-role-in-messages"],
)
async def test_refuses_what_the_real_api_refuses(fake, http, headers, body, status):
    async with http.post(fake.base_url + MESSAGES, json=body, headers=headers) as resp:
        data = await resp.json()
    assert resp.status == status and data["type"] == "error"


async def test_models_list_speaks_the_dialect_of_the_caller(fake, http):
    async with http.get(fake.base_url + "/v1/models", headers=HEADERS) as resp:
        anthropic = await resp.json()
    async with http.get(fake.base_url + "/v1/models") as resp:
        openai = await resp.json()
    assert [m["id"] for m in anthropic["data"]] == ["claude-a", "claude-b"]
    assert anthropic["data"][0]["type"] == "model" and anthropic["has_more"] is False
    assert openai["object"] == "list" and openai["data"][0]["object"] == "model"
