"""The fake provider itself, exercised with a raw aiohttp client.

Provider-client tests trust the fake; these tests earn that trust: wire formats, scripted
failures, and the request log (including the detection of clients that hang up).
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from testkit import Behaviour, FakeProvider
from testkit.fake_provider import deterministic_vector

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(models=["m-1", "m-2"]) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def chat_body(text: str = "hi there", model: str = "m", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def sse_payloads(raw: str) -> list[str]:
    return [line.removeprefix("data: ") for line in raw.splitlines() if line.startswith("data: ")]


async def test_json_chat_echoes_last_user_text_with_word_count_usage(fake, http):
    async with http.post(fake.base_url + CHAT, json=chat_body("hello big world")) as resp:
        data = await resp.json()
    assert resp.status == 200
    assert data["choices"][0]["message"]["content"] == "echo: hello big world"
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


async def test_sse_stream_sends_text_chunks_finish_usage_and_done(fake, http):
    fake.script(None, Behaviour(chunks=["Hel", "lo"], usage=(11, 2)))
    body = chat_body(stream=True, stream_options={"include_usage": True})
    async with http.post(fake.base_url + CHAT, json=body) as resp:
        raw = await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 11
    assert chunks[-1]["usage"]["completion_tokens"] == 2


async def test_sse_stream_has_no_usage_chunk_unless_asked(fake, http):
    async with http.post(fake.base_url + CHAT, json=chat_body(stream=True)) as resp:
        payloads = sse_payloads(await resp.text())
    assert all("usage" not in json.loads(p) for p in payloads[:-1])


async def test_die_after_chunks_breaks_the_stream_without_done(fake, http):
    fake.script(None, Behaviour(chunks=["a", "b", "c"], die_after_chunks=1))
    async with http.post(fake.base_url + CHAT, json=chat_body(stream=True)) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.text()
    record = fake.requests[-1]
    assert record.aborted_by_server and not record.completed and not record.disconnected


async def test_reset_closes_the_connection_without_an_answer(fake, http):
    fake.script(None, Behaviour(reset=True))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await http.post(fake.base_url + CHAT, json=chat_body())


async def test_429_sends_retry_after_and_an_openai_error_body(fake, http):
    fake.script(None, Behaviour(status=429, retry_after="7"))
    async with http.post(fake.base_url + CHAT, json=chat_body()) as resp:
        data = await resp.json()
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    assert data["error"]["type"] == "rate_limit_error"


async def test_scripted_error_body_is_sent_verbatim(fake, http):
    body = {"error": {"message": "maximum context length", "code": "context_length_exceeded"}}
    fake.script(None, Behaviour(status=400, error_body=body))
    async with http.post(fake.base_url + CHAT, json=chat_body()) as resp:
        assert resp.status == 400
        assert await resp.json() == body


async def test_client_hanging_up_during_latency_is_recorded_as_disconnect(fake, http):
    fake.script(None, Behaviour(latency_s=30))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await http.post(fake.base_url + CHAT, json=chat_body())
    record = await fake.wait_for_disconnect(5)
    assert not record.completed


async def test_client_hanging_up_mid_stream_is_recorded_as_disconnect(fake, http):
    fake.script(None, Behaviour(chunks=["a", "b"], chunk_delay_s=30))
    resp = await http.post(fake.base_url + CHAT, json=chat_body(stream=True))
    first = await resp.content.readline()
    assert first.startswith(b"data: ")
    resp.close()
    record = await fake.wait_for_disconnect(5)
    assert not record.completed and not record.aborted_by_server


async def test_a_completed_request_is_not_a_disconnect(fake, http):
    async with http.post(fake.base_url + CHAT, json=chat_body()) as resp:
        await resp.read()
    with pytest.raises(TimeoutError):
        await fake.wait_for_disconnect(0.05)
    assert fake.requests[0].completed


async def test_scripts_apply_per_model_then_fall_back_to_default(fake, http):
    fake.script("m-1", Behaviour(status=503), Behaviour(status=502))
    fake.set_default(Behaviour(text="default reply"))
    statuses = []
    for model in ("m-2", "m-1", "m-1", "m-1"):
        async with http.post(fake.base_url + CHAT, json=chat_body(model=model)) as resp:
            statuses.append(resp.status)
            if resp.status == 200:
                assert (await resp.json())["choices"][0]["message"]["content"] == "default reply"
    assert statuses == [200, 503, 502, 200]
    assert fake.count(path=CHAT, model="m-1") == 3
    assert fake.count(model="m-2") == 1
    assert fake.count() == 4


async def test_request_log_keeps_body_and_authorization_header(fake, http):
    headers = {"Authorization": "Bearer sk-test"}
    async with http.post(fake.base_url + CHAT, json=chat_body(model="m-1"), headers=headers) as resp:
        await resp.read()
    record = fake.requests[0]
    assert record.path == CHAT and record.model == "m-1"
    assert record.json["messages"][0]["content"] == "hi there"
    assert record.headers["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize(("model", "dimension"), [("emb-384", 384), ("emb-1536", 1536), ("plain", 8)])
async def test_embedding_dimension_follows_the_model_name(fake, http, model, dimension):
    async with http.post(
        fake.base_url + "/v1/embeddings", json={"model": model, "input": ["a b", "c"]}
    ) as resp:
        data = await resp.json()
    vectors = [item["embedding"] for item in data["data"]]
    assert [len(v) for v in vectors] == [dimension, dimension]
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0)
    assert vectors[0] == deterministic_vector("a b", dimension)
    assert vectors[0] != vectors[1]
    assert data["usage"]["prompt_tokens"] == 3


async def test_embedding_dimension_map_overrides_the_name():
    async with FakeProvider(embed_dimensions={"custom": 5}) as server, aiohttp.ClientSession() as http:
        async with http.post(server.base_url + "/v1/embeddings", json={"model": "custom", "input": "x"}) as r:
            data = await r.json()
    assert len(data["data"][0]["embedding"]) == 5


async def test_models_endpoints_list_the_configured_models(fake, http):
    async with http.get(fake.base_url + "/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["m-1", "m-2"]
    async with http.get(fake.base_url + "/api/tags") as resp:
        assert [m["name"] for m in (await resp.json())["models"]] == ["m-1", "m-2"]


async def test_ollama_chat_streams_ndjson_with_eval_counts(fake, http):
    body = {"model": "m", "messages": [{"role": "user", "content": "one two"}]}
    async with http.post(fake.base_url + "/api/chat", json=body) as resp:
        lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "echo: one two"
    assert [line["done"] for line in lines][-1] is True
    assert lines[-1]["prompt_eval_count"] == 2 and lines[-1]["eval_count"] == 3


async def test_ollama_chat_without_stream_answers_one_json(fake, http):
    body = {"model": "m", "stream": False, "messages": [{"role": "user", "content": "yo"}]}
    async with http.post(fake.base_url + "/api/chat", json=body) as resp:
        data = await resp.json()
    assert data["message"]["content"] == "echo: yo" and data["done"] is True
    assert data["eval_count"] == 2


async def test_ollama_embed_endpoints(fake, http):
    async with http.post(fake.base_url + "/api/embed", json={"model": "e-768", "input": ["x", "y"]}) as resp:
        data = await resp.json()
    assert [len(v) for v in data["embeddings"]] == [768, 768]
    assert data["prompt_eval_count"] == 2
    async with http.post(fake.base_url + "/api/embeddings", json={"model": "e-768", "prompt": "x"}) as resp:
        assert (await resp.json())["embedding"] == data["embeddings"][0]
    async with http.post(fake.base_url + "/api/show", json={"name": "e-768"}) as resp:
        assert "model_info" in await resp.json()


def test_runs_in_a_background_thread_for_blocking_clients():
    with FakeProvider(text="threaded") as server:
        request = urllib.request.Request(
            server.base_url + CHAT,
            data=json.dumps(chat_body()).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            data = json.loads(resp.read())
        assert data["choices"][0]["message"]["content"] == "threaded"
        assert server.count(path=CHAT) == 1


@pytest.mark.subprocess
def test_command_line_serves_until_terminated():
    with subprocess.Popen(
        [sys.executable, "-m", "testkit.fake_provider", "--port", "0", "--latency-ms", "1"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            base_url = banner.strip().rsplit(" ", 1)[-1]
            assert base_url.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(base_url + "/v1/models", timeout=5) as resp:
                assert resp.status == 200
        finally:
            process.terminate()
            process.wait(timeout=10)
