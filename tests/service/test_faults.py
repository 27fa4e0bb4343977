"""Network faults between the parts, injected by a TCP proxy (`testkit.fault_proxy`).

* provider dies mid-stream -> UNAVAILABLE (STREAM_INTERRUPTED), never a silent OK;
  dies before any output -> the request falls back;
* provider slower than its timeout -> fallback;
* the router restarts while the embedding service ingests -> each upsert is acknowledged
  or fails UNAVAILABLE, every acknowledged document is stored, retries succeed;
* the Chroma server (`chroma run`) goes away and comes back -> UNAVAILABLE, then recovery;
* a provider error body holding a secret and the prompt never reaches the caller or a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from embedding_service.server import EmbeddingDeps
from router_service.server import RouterApp
from router_service.server import build_server as build_router_server
from sekha import client as c
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.fault_proxy import FaultProxy
from testkit.harness import (
    chat_model,
    embedding_config,
    embedding_model,
    openai_provider,
    router_config,
    running_embedding,
    running_router,
)
from testkit.logs import capture_json_logs
from testkit.vectors import FakeVectorSource

CHAT = "/v1/chat/completions"
CHROMA = Path(sys.executable).with_name("chroma")


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


@pytest.fixture
async def provider_proxy(fake: FakeProvider) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", fake.port) as proxy:
        yield proxy


def _two_providers(fake: FakeProvider, proxy: FaultProxy, primary_timeout_s: float = 5.0):  # type: ignore[no-untyped-def]
    """primary (behind the proxy, model alpha) then backup (direct, model beta)."""
    return router_config(
        [
            openai_provider(
                "primary",
                f"http://{proxy.address}",
                [chat_model("alpha")],
                priority=10,
                transport="native",
                timeout_s=primary_timeout_s,
            ),
            openai_provider("backup", fake.base_url, [chat_model("beta")], priority=20, transport="native"),
        ]
    )


def _ask() -> rt.ChatRequest:
    return rt.ChatRequest(messages=[c.user("hello")], generation=rt.GenerationConfig(max_tokens=50))


async def test_provider_dying_mid_stream_ends_unavailable_never_silently(
    fake: FakeProvider, provider_proxy: FaultProxy
) -> None:
    fake.set_default(Behaviour(chunks=[f"c{i} " for i in range(40)], chunk_delay_s=0.05))
    async with running_router(_two_providers(fake, provider_proxy)) as (_, router):
        deltas: list[str] = []
        request = rt.StreamChatRequest(
            messages=[c.user("count")], generation=rt.GenerationConfig(max_tokens=50)
        )
        with pytest.raises(c.UnavailableError) as broken:
            async for message in router.stream_chat(request):
                assert not message.HasField("summary")
                deltas.append(message.delta.text)
                if len(deltas) == 2:
                    provider_proxy.set(reset_after_bytes=0)  # the open connection is reset on its next bytes
    assert broken.value.details.reason == "STREAM_INTERRUPTED"
    assert 2 <= len(deltas) < 40 and "".join(deltas) == "".join(f"c{i} " for i in range(len(deltas)))
    assert fake.count(CHAT, "beta") == 0  # output had reached the caller: no fallback
    assert provider_proxy.resets >= 1


async def test_provider_dying_before_output_falls_back(
    fake: FakeProvider, provider_proxy: FaultProxy
) -> None:
    provider_proxy.set(reset_after_bytes=12)  # part of the status line, then a reset
    async with running_router(_two_providers(fake, provider_proxy)) as (_, router):
        reply = await router.chat(_ask())
        streamed = [
            m
            async for m in router.stream_chat(
                rt.StreamChatRequest(messages=[c.user("hi")], generation=rt.GenerationConfig(max_tokens=50))
            )
        ]
    assert [a.provider_id for a in reply.attempts] == ["primary", "backup"]
    assert reply.attempts[0].outcome == rt.ATTEMPT_OUTCOME_FAILED
    assert streamed[-1].HasField("summary") and streamed[-1].summary.attempts[-1].provider_id == "backup"


async def test_provider_slower_than_its_timeout_falls_back(
    fake: FakeProvider, provider_proxy: FaultProxy
) -> None:
    provider_proxy.set(latency_s=3.0)
    async with running_router(_two_providers(fake, provider_proxy, primary_timeout_s=0.5)) as (_, router):
        reply = await router.chat(_ask())
    assert [(a.provider_id, a.error_kind) for a in reply.attempts] == [("primary", "timeout"), ("backup", "")]
    assert reply.text == "echo: hello"


async def test_provider_error_text_with_secrets_never_reaches_callers_or_logs(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = "my private prompt PROMPT-ECHO-42"
    leaky = {"error": {"message": f"invalid key sk-LEAK-123; you sent: {prompt}", "type": "server_error"}}
    fake.set_default(Behaviour(status=500, error_body=leaky))
    fake.script("gamma", Behaviour(status=400, error_body=leaky))
    config = router_config(
        [
            openai_provider(
                "p1",
                fake.base_url,
                [chat_model("alpha"), chat_model("gamma", tasks=("chat_small",))],
                transport="native",
            ),
            openai_provider("p2", fake.base_url, [chat_model("beta")], transport="litellm", priority=60),
        ]
    )
    failures: list[c.SekhaError] = []
    with caplog.at_level(logging.DEBUG):
        async with running_router(config) as (_, router):
            for request in (
                rt.ChatRequest(messages=[c.user(prompt)]),
                rt.ChatRequest(
                    messages=[c.user(prompt)], routing=rt.RoutingPreferences(task=rt.TASK_CHAT_SMALL)
                ),
            ):
                with pytest.raises(c.SekhaError) as failed:
                    await router.chat(request)
                failures.append(failed.value)
            with pytest.raises(c.SekhaError) as streamed:
                async for _ in router.stream_chat(rt.StreamChatRequest(messages=[c.user(prompt)])):
                    pass
            failures.append(streamed.value)
    assert [f.code for f in failures] == [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAVAILABLE,
    ]
    for failure in failures:
        visible = f"{failure.message} {failure.details}"
        assert "sk-LEAK-123" not in visible and "PROMPT-ECHO" not in visible
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "sk-LEAK-123" not in logged and "PROMPT-ECHO" not in logged
    assert fake.count(CHAT) >= 3  # the provider really answered with the leaky body


# ------------------------------------------------------------------ router restarts mid-ingest


async def _start_router(fake: FakeProvider) -> RouterApp:
    config = router_config([openai_provider("vec", fake.base_url, [embedding_model("vec-16", 16)])])
    return await build_router_server(config)


async def test_router_restart_while_ingesting_never_loses_an_acknowledged_document(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.set_default(Behaviour(latency_s=0.2))
    router_a = await _start_router(fake)
    routers = [router_a]
    async with FaultProxy("127.0.0.1", router_a.port) as proxy:
        config = embedding_config(tmp_path, proxy.address, router={"timeout_s": 10})
        try:
            async with running_embedding(config) as (_, client):

                async def upsert(batch: int) -> tuple[list[str], grpc.StatusCode | None]:
                    ids = [f"b{batch}-d{i}" for i in range(10)]
                    request = emb.UpsertDocumentsRequest(
                        base="ingest",
                        model="vec/vec-16",
                        documents=[emb.Document(id=i, text=f"document {i}") for i in ids],
                    )
                    try:
                        await client.upsert_documents(request, timeout_s=20)
                    except c.SekhaError as exc:
                        return ids, exc.code
                    return ids, None

                outcomes = [await upsert(batch) for batch in range(3)]
                in_flight = asyncio.create_task(upsert(3))
                await fake.wait_for(lambda r: r.path == "/v1/embeddings" and not r.completed, 5)
                # The router goes down in the middle of that upsert, and a new one comes up.
                await router_a.stop(0)
                proxy.reset_all()
                router_b = await _start_router(fake)
                routers.append(router_b)
                proxy.retarget(router_b.port)
                outcomes.append(await in_flight)
                outcomes += [await upsert(batch) for batch in range(4, 7)]

                failed = [(ids, code) for ids, code in outcomes if code is not None]
                assert all(code == grpc.StatusCode.UNAVAILABLE for _, code in failed), failed
                acknowledged = [i for ids, code in outcomes if code is None for i in ids]
                stored = await client.get_documents(emb.GetDocumentsRequest(base="ingest", ids=acknowledged))
                assert sorted(d.id for d in stored.documents) == sorted(acknowledged)

                for ids, _ in failed:  # a retry succeeds once the router is back
                    for _attempt in range(40):
                        retried = await upsert(int(ids[0][1 : ids[0].index("-")]))
                        if retried[1] is None:
                            break
                        assert retried[1] == grpc.StatusCode.UNAVAILABLE
                        await asyncio.sleep(0.25)
                    assert retried[1] is None
                every = [i for ids, _ in outcomes for i in ids]
                stored = await client.get_documents(emb.GetDocumentsRequest(base="ingest", ids=every))
                assert sorted(d.id for d in stored.documents) == sorted(every)
        finally:
            for app in routers:
                await app.stop(0)


# ------------------------------------------------------------------ Chroma server restarts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChromaServer:
    """`chroma run` as a child process, restartable on the same path and port."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with (self.path.parent / "chroma.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(CHROMA),
                "run",
                "--path",
                str(self.path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        async with httpx.AsyncClient() as http, asyncio.timeout(60):
            while True:  # another process: polling its heartbeat is the only way to know it serves
                assert self.process.returncode is None, "chroma run exited"
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat")).status_code == 200:
                        return
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
def chroma_path(tmp_path: Path) -> Iterator[Path]:
    if not CHROMA.exists():
        pytest.skip("the chroma CLI is not installed")
    yield tmp_path / "chroma-server"


@pytest.mark.subprocess
async def test_chroma_server_restart_is_unavailable_then_recovers(chroma_path: Path, tmp_path: Path) -> None:
    chroma = ChromaServer(chroma_path, _free_port())
    await chroma.start()
    try:
        async with FaultProxy("127.0.0.1", chroma.port) as proxy:
            config = embedding_config(
                tmp_path, "127.0.0.1:1", chroma={"mode": "http", "host": "127.0.0.1", "port": proxy.port}
            )
            vectors = FakeVectorSource()
            with capture_json_logs() as log:
                async with running_embedding(config, EmbeddingDeps(vectors=vectors)) as (_, client):
                    docs = [emb.Document(id=f"d{i}", text=f"note number {i}") for i in range(5)]
                    await client.upsert_documents(emb.UpsertDocumentsRequest(base="notes", documents=docs))

                    proxy.set(refuse=True)
                    proxy.reset_all()
                    await chroma.stop()
                    calls = [
                        client.get_documents(emb.GetDocumentsRequest(base="notes", ids=["d1"]), timeout_s=20),
                        client.search_documents(
                            emb.SearchDocumentsRequest(base="notes", query="note"), timeout_s=20
                        ),
                        client.upsert_documents(
                            emb.UpsertDocumentsRequest(
                                base="notes", documents=[emb.Document(id="d9", text="late note")]
                            ),
                            timeout_s=20,
                        ),
                        client.list_collections(timeout_s=20),
                    ]
                    for call in calls:
                        with pytest.raises(c.SekhaError) as down:
                            await call
                        assert down.value.code == grpc.StatusCode.UNAVAILABLE, down.value

                    await chroma.start()  # same path, same port
                    proxy.set()
                    for _attempt in range(40):
                        try:
                            got = await client.get_documents(
                                emb.GetDocumentsRequest(base="notes", ids=["d1", "d4"])
                            )
                            break
                        except c.SekhaError as exc:
                            assert exc.code == grpc.StatusCode.UNAVAILABLE
                            await asyncio.sleep(0.25)
                    assert sorted(d.id for d in got.documents) == ["d1", "d4"]
                    await client.upsert_documents(
                        emb.UpsertDocumentsRequest(
                            base="notes", documents=[emb.Document(id="d9", text="late note")]
                        )
                    )
                    hits = await client.search_documents(
                        emb.SearchDocumentsRequest(base="notes", query="late note")
                    )
                    assert hits.hits[0].document.id == "d9"
            down = log.events("chroma_error")[0]  # then one line per window while it stays down
            assert (down["level"], down["mode"]) == ("WARNING", "http") and down["error"]
            assert "note number" not in log.text  # no document text in the log
            [back] = log.events("chroma_recovered")
            assert back["level"] == "INFO"
    finally:
        await chroma.stop()
