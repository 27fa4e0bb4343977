"""Input limits over real gRPC: every refusal is INVALID_ARGUMENT naming the field, and nothing
reaches a provider (or Chroma) first. A flood beyond the concurrency limit is refused at once.

Covers what `test_router_dataplane.py` does not: message count and size, the context window
of every candidate, the max_tokens cap, strict data URLs, metadata and request id sizes, embed
inputs, the embedding service's ids, metadata and top_k, and image URL inlining (refused for
loopback by default; fetched and sent inline with a test-only allow-list).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from embedding_service.server import EmbeddingDeps
from router_service.image_fetch import FetchPolicy, ImageFetcher
from router_service.server import RouterDeps
from sekha import client as c
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.router.v1 import router_service_pb2 as rt
from testkit.certs import CertificateAuthority
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import (
    chat_model,
    embedding_config,
    embedding_model,
    openai_provider,
    router_config,
    running_embedding,
    running_router,
)
from testkit.vectors import FakeVectorSource

CHAT = "/v1/chat/completions"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def _config(fake: FakeProvider, **limits: object):  # type: ignore[no-untyped-def]
    return router_config(
        [
            openai_provider("small", fake.base_url, [chat_model("tiny", context_window=300)], priority=10),
            openai_provider(
                "big",
                fake.base_url,
                [
                    chat_model("roomy", context_window=2000),
                    {**embedding_model("vec-16", 16), "context_window": 100},
                ],
                priority=20,
            ),
        ],
        limits={
            "max_messages": 4,
            "max_message_chars": 6000,
            "max_output_tokens": 2500,
            "default_max_tokens": 100,
            "max_embed_inputs": 3,
            **limits,
        },
    )


def _chat(*texts: str, max_tokens: int = 20, **fields: object) -> rt.ChatRequest:
    return rt.ChatRequest(
        messages=[c.user(t) for t in texts], generation=rt.GenerationConfig(max_tokens=max_tokens), **fields
    )


async def _violations(call) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(c.InvalidArgumentError) as refused:
        await call
    return [field for field, _ in refused.value.details.field_violations]


async def test_router_limits_name_the_field_and_reach_no_provider(fake: FakeProvider) -> None:
    words = "word " * 1000  # ~1000 tokens: more than `tiny` holds, fits `roomy`
    async with running_router(_config(fake)) as (_, router):
        long_enough = await router.chat(_chat(words))
        assert long_enough.attempts[-1].model == "roomy"  # the small window is skipped, not an error
        calls = fake.count(CHAT)

        too_long = _chat(words, words)  # ~2000 tokens of input + 20 output > every window
        assert await _violations(router.chat(too_long)) == ["messages"]
        with pytest.raises(c.InvalidArgumentError) as context:
            await router.chat(too_long)
        assert "context window" in context.value.message
        stream = rt.StreamChatRequest(messages=too_long.messages, generation=too_long.generation)
        with pytest.raises(c.InvalidArgumentError):
            async for _ in router.stream_chat(stream):
                pass
        assert await _violations(router.route(rt.RouteRequest(messages=too_long.messages))) == ["messages"]
        assert await _violations(router.chat(_chat("hi", max_tokens=2400))) == [
            "messages"
        ]  # output counts too

        assert await _violations(router.chat(_chat("a", "b", "c", "d", "e"))) == ["messages"]
        assert await _violations(router.chat(_chat("x" * 6001))) == ["messages[0]"]
        assert await _violations(router.chat(_chat("hi", max_tokens=2501))) == ["generation.max_tokens"]
        assert await _violations(router.chat(_chat("hi", request_id="r" * 129))) == ["request_id"]
        assert await _violations(router.chat(_chat("hi", metadata={f"k{i}": "v" for i in range(65)}))) == [
            "metadata"
        ]
        assert await _violations(router.chat(_chat("hi", metadata={"tenant": "v" * 1_000_000}))) == [
            "metadata[tenant]"
        ]
        assert await _violations(router.chat(_chat("hi", metadata={"k" * 100_000: "v"}))) == ["metadata"]
        many_stops = _chat("hi")
        many_stops.generation.stop_sequences.extend(f"stop{i}" for i in range(100_000))
        assert await _violations(router.chat(many_stops)) == ["generation.stop_sequences"]
        long_stop = _chat("hi")
        long_stop.generation.stop_sequences.extend(["fine", "s" * 257])
        assert await _violations(router.chat(long_stop)) == ["generation.stop_sequences[1]"]
        for url in (
            "data:image/png;base64,!!!notbase64",
            "data:text/html;base64,PGgxPg==",
            "data:image/png,rawbytes",
            "javascript:alert(1)",
            "file:///etc/passwd",
        ):
            image = rt.ContentPart(image=rt.Image(url=url))
            request = rt.ChatRequest(messages=[rt.ChatMessage(role=rt.ROLE_USER, parts=[image])])
            assert await _violations(router.chat(request)) == ["messages[0].parts[0].image.url"], url

        assert await _violations(router.embed(rt.EmbedRequest(inputs=["a", "b", "c", "d"]))) == ["inputs"]
        assert await _violations(router.embed(rt.EmbedRequest(inputs=["ok", ""]))) == ["inputs[1]"]
        assert await _violations(router.embed(rt.EmbedRequest(inputs=["token " * 150]))) == ["inputs"]
        assert fake.count(CHAT) == calls and fake.count("/v1/embeddings") == 0


async def test_embedding_limits_name_the_field(tmp_path: Path) -> None:
    config = embedding_config(
        tmp_path,
        "127.0.0.1:1",
        defaults={
            "max_id_chars": 8,
            "max_metadata_keys": 2,
            "max_metadata_value_chars": 10,
            "max_top_k": 50,
            "max_documents_per_request": 3,
            "max_text_chars": 100,
        },
    )
    async with running_embedding(config, EmbeddingDeps(vectors=FakeVectorSource())) as (_, client):

        def upsert(*documents: emb.Document) -> object:
            return client.upsert_documents(
                emb.UpsertDocumentsRequest(base="notes", documents=list(documents))
            )

        def text(value: str) -> emb.MetadataValue:
            return emb.MetadataValue(string_value=value)

        assert await _violations(upsert(emb.Document(id="x" * 9, text="t"))) == ["documents[0].id"]
        assert await _violations(upsert(emb.Document(id="a", text="t" * 101))) == ["documents[0].text"]
        assert await _violations(upsert(emb.Document(id="a", text="t", metadata={"k": text("v" * 11)}))) == [
            "documents[0].metadata[k]"
        ]
        assert await _violations(
            upsert(emb.Document(id="a", text="t", metadata={k: text("v") for k in "abc"}))
        ) == ["documents[0].metadata"]
        assert await _violations(upsert(*[emb.Document(id=f"d{i}", text="t") for i in range(4)])) == [
            "documents"
        ]
        await upsert(emb.Document(id="a", text="fine"))
        assert await _violations(
            client.get_documents(emb.GetDocumentsRequest(base="notes", ids=["a", "b", "c", "d"]))
        ) == ["ids"]
        assert await _violations(
            client.search_documents(emb.SearchDocumentsRequest(base="notes", query="fine", top_k=51))
        ) == ["top_k"]
        assert await _violations(
            client.search_documents(emb.SearchDocumentsRequest(base="notes", query="q" * 101))
        ) == ["query"]


# ------------------------------------------------------------------------ image URL inlining


@pytest.fixture
async def image_site(tmp_path: Path) -> AsyncIterator[tuple[str, ssl.SSLContext, list[str]]]:
    ca = CertificateAuthority.create("image CA")
    cert = ca.issue("images", tmp_path / "images")
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cert.cert_file, cert.key_file)
    hits: list[str] = []

    async def cat(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/cat.png", cat)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl).start()
    port = runner.addresses[0][1]
    yield (
        f"https://127.0.0.1:{port}/cat.png",
        ssl.create_default_context(cafile=str(ca.write(tmp_path / "ca.crt"))),
        hits,
    )
    await runner.cleanup()


def _vision_config(fake: FakeProvider):  # type: ignore[no-untyped-def]
    return router_config(
        [
            openai_provider(
                "eyes", fake.base_url, [chat_model("seer", capabilities=["vision"], tasks=("vision",))]
            )
        ],
        limits={"inline_image_urls": True, "max_image_bytes": 4096},
    )


def _image_request(url: str) -> rt.ChatRequest:
    parts = [rt.ContentPart(text="what is it?"), rt.ContentPart(image=rt.Image(url=url))]
    return rt.ChatRequest(messages=[rt.ChatMessage(role=rt.ROLE_USER, parts=parts)])


async def test_inlining_refuses_loopback_urls_by_default(fake: FakeProvider, image_site) -> None:  # type: ignore[no-untyped-def]
    url, _, hits = image_site
    async with running_router(_vision_config(fake)) as (_, router):
        with pytest.raises(c.InvalidArgumentError) as refused:
            await router.chat(_image_request(url))
    assert refused.value.details.field_violations == (
        ("messages[0].parts[1].image.url", "address is loopback"),
    )
    assert hits == [] and fake.count(CHAT) == 0


async def test_inlining_sends_the_fetched_bytes_instead_of_the_url(fake: FakeProvider, image_site) -> None:  # type: ignore[no-untyped-def]
    url, client_ssl, hits = image_site
    fetcher = ImageFetcher(
        FetchPolicy(max_bytes=4096, timeout_s=5, allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),)),
        ssl_context=client_ssl,
    )
    async with running_router(_vision_config(fake), RouterDeps(image_fetcher=fetcher)) as (_, router):
        reply = await router.chat(_image_request(url))
    assert reply.attempts[-1].model == "seer" and hits == ["/cat.png"]
    sent = fake.requests[-1].json["messages"][0]["content"]
    urls = [part["image_url"]["url"] for part in sent if part.get("type") == "image_url"]
    assert urls == ["data:image/png;base64," + base64.b64encode(PNG).decode()]


async def test_a_flood_beyond_max_concurrent_rpcs_is_refused_at_once_with_retry_info(
    fake: FakeProvider,
) -> None:
    fake.set_default(Behaviour(latency_s=1.0))
    config = router_config(
        [openai_provider("p", fake.base_url, [chat_model("alpha")])], server={"max_concurrent_rpcs": 4}
    )
    async with running_router(config) as (app, router):

        async def one() -> str | float | None:
            try:
                await router.chat(_chat("flood"))
            except c.ResourceExhaustedError as refused:
                return refused.details.retry_after_s
            return "ok"

        outcomes = await asyncio.gather(*(one() for _ in range(30)))
        assert await router.health() == "SERVING"
        assert app.serving.errors.in_flight == 0
    assert outcomes.count("ok") == 4
    refusals = [o for o in outcomes if o != "ok"]
    assert len(refusals) == 26 and all(isinstance(o, float) and o > 0 for o in refusals)
    assert fake.count(CHAT) == 4  # refused calls did no work


def test_litellm_never_downloads_image_urls_itself() -> None:
    """Only the router's own fetcher (above) may fetch an image URL; LiteLLM's download path is off."""
    from router_service.providers.litellm_provider import import_litellm

    import_litellm()
    from litellm.litellm_core_utils.prompt_templates import image_handling

    assert image_handling.MAX_IMAGE_URL_DOWNLOAD_SIZE_MB == 0
