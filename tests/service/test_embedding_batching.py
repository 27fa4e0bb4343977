"""Embedding calls sized by the model's speed, seen from the provider: the generated client ->
EmbeddingService -> RouterService.Embed -> the fake OpenAI-compatible provider over HTTP.

The fake takes `latency_per_input_s` per text, as a model on a CPU does. Every call's size is
read back from the fake's recorded requests. Upper bounds on sizes hold however slow the
machine is (the fake sleeps at least that long per text, so the service never measures a
model faster than that); nothing asserts a duration.
"""

from __future__ import annotations

from pathlib import Path

from sekha.embedding.v1 import embedding_service_pb2 as emb
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import (
    embedding_config,
    embedding_model,
    openai_provider,
    router_config,
    running_embedding,
    running_router,
)

MODEL = "slow-384"


def documents(prefix: str, count: int) -> list[emb.Document]:
    return [emb.Document(id=f"{prefix}{i:04d}", text=f"{prefix} text number {i}") for i in range(count)]


def call_sizes(fake: FakeProvider) -> list[int]:
    return [len(r.json["input"]) for r in fake.requests if r.path == "/v1/embeddings"]


async def test_a_slow_model_gets_calls_that_fit_the_router_timeout(tmp_path: Path) -> None:
    # 10 ms per text: the default 256-text batch takes 2.56 s, past a 2 s router timeout.
    # A call may take a quarter of it, 0.5 s: at most 50 texts.
    async with FakeProvider(default=Behaviour(latency_per_input_s=0.01)) as fake:
        config = router_config([openai_provider("vec", fake.base_url, [embedding_model(MODEL, 384)])])
        async with running_router(config) as (router_app, _):
            emb_config = embedding_config(
                tmp_path,
                f"127.0.0.1:{router_app.port}",
                router={"timeout_s": 2},
                batching={"call_fraction": 0.25},
            )
            async with running_embedding(emb_config) as (_, client):
                reply = await client.upsert_documents(
                    emb.UpsertDocumentsRequest(
                        base="slow", model=f"vec/{MODEL}", documents=documents("a", 300)
                    )
                )
                assert reply.upserted_count == 300
                assert reply.collections[0].document_count == 300

    sizes = call_sizes(fake)
    assert sum(sizes) == 300
    assert sizes[0] == 16  # the model's speed was unknown
    assert max(sizes) <= 50, sizes
    assert len(sizes) >= 300 // 50


async def test_calls_shrink_when_the_model_slows_down(tmp_path: Path) -> None:
    async with FakeProvider(default=Behaviour(latency_per_input_s=0.0)) as fake:
        config = router_config([openai_provider("vec", fake.base_url, [embedding_model(MODEL, 384)])])
        async with running_router(config) as (router_app, _):
            # A call may take a quarter of the 4 s router timeout: 1 s.
            emb_config = embedding_config(tmp_path, f"127.0.0.1:{router_app.port}", router={"timeout_s": 4})
            async with running_embedding(emb_config) as (_, client):
                fast = emb.UpsertDocumentsRequest(
                    base="kb", model=f"vec/{MODEL}", documents=documents("f", 1000)
                )
                await client.upsert_documents(fast)
                fast_sizes = call_sizes(fake)
                # A fast model grows its calls to the write batch size (defaults.write_batch_size).
                assert fast_sizes[:5] == [16, 32, 64, 128, 256] and max(fast_sizes) == 256, fast_sizes

                # Under load: 10 ms per text, so 100 texts fit in a call. The next 256-text call
                # still answers within the 4 s timeout; every call after it is cut down.
                fake.set_default(Behaviour(latency_per_input_s=0.01))
                slow = emb.UpsertDocumentsRequest(
                    base="kb", model=f"vec/{MODEL}", documents=documents("s", 400)
                )
                reply = await client.upsert_documents(slow)
                assert reply.collections[0].document_count == 1400

    slow_sizes = call_sizes(fake)[len(fast_sizes) :]
    assert sum(slow_sizes) == 400
    assert slow_sizes[0] == 256
    assert max(slow_sizes[1:]) <= 100, slow_sizes
