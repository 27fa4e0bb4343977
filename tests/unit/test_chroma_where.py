"""Fractional numbers in metadata filters, against real embedded Chroma.

Chroma 1.5.9 truncates a fractional filter number to an integer when it compares it with an
integer metadata value (chroma-core/chroma#7491). The first test shows that on a raw Chroma
collection; the others run every operator with fractional values through `ChromaStore` (get,
query and delete, which rewrite the filter with `embedding_service.chroma_where`) and check the
result against a plain-Python evaluation of the filter (tests/where_oracle.py).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import chromadb
import pytest
from chromadb.config import Settings

from embedding_service.config import ChromaConfig
from embedding_service.store import ChromaStore, is_valid_where
from tests.where_oracle import ALL_IDS, expected, filters, metadata_of

FILTERS = filters()


def test_the_oracle_is_not_trivially_agreeing() -> None:
    # Each fractional filter must separate documents the truncation bug would confuse.
    assert "i2" in expected({"n": {"$lt": 2.5}}) and "i2" not in expected({"n": 2.5})
    assert "i2" not in expected({"n": {"$gte": 2.5}}) and "i-2" not in expected({"n": {"$lte": -2.5}})
    assert expected({"n": {"$ne": 2.5}}) == [d for d in ALL_IDS if d != "f2.5"]


def test_raw_chroma_still_truncates_fractional_bounds(tmp_path: Path) -> None:
    """Upstream chroma-core/chroma#7491. When this fails, Chroma compares exactly and
    `embedding_service.chroma_where` may go (its rewrites stay correct either way)."""
    settings = Settings(anonymized_telemetry=False)
    client = chromadb.PersistentClient(path=str(tmp_path / "raw"), settings=settings)
    collection = client.create_collection("raw_truncation", embedding_function=None)  # type: ignore[arg-type]
    collection.add(
        ids=["int2", "float2.5"], embeddings=[[1.0, 0.0], [0.0, 1.0]], metadatas=[{"n": 2}, {"n": 2.5}]
    )

    def ids(where: dict[str, Any]) -> list[str]:
        return sorted(collection.get(where=where)["ids"])  # type: ignore[arg-type]

    assert ids({"n": 2.5}) == ["float2.5", "int2"]  # 2 == 2.5
    assert ids({"n": {"$lt": 2.5}}) == []  # 2 < 2.5 is missed
    assert ids({"n": {"$gte": 2.5}}) == ["float2.5", "int2"]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[ChromaStore, str]]:
    store = ChromaStore(ChromaConfig(mode="persistent", path=tmp_path / "chroma"))
    name = f"where{uuid.uuid4().hex[:8]}"
    await store.create_collection(name, base="where", dimension=2, model="m", created_at=_now())
    await _write_all(store, name)
    try:
        yield store, name
    finally:
        await store.aclose()


def _now() -> datetime:
    return datetime.now(UTC)


def _vector(doc_id: str) -> list[float]:
    angle = ALL_IDS.index(doc_id) / len(ALL_IDS)
    return [math.cos(angle), math.sin(angle)]


async def _write_all(store: ChromaStore, name: str, ids: list[str] | None = None) -> None:
    ids = ids or ALL_IDS
    await store.upsert(
        name, ids, [_vector(d) for d in ids], [f"text {d}" for d in ids], [metadata_of(d) for d in ids]
    )


@pytest.mark.parametrize("where", FILTERS, ids=[str(f) for f in FILTERS])
async def test_fractional_filters_are_exact_on_get_query_and_delete(
    store: tuple[ChromaStore, str], where: dict[str, Any]
) -> None:
    chroma, name = store
    wanted = expected(where)
    assert is_valid_where(where)

    got = sorted(doc.id for doc in await chroma.get(name, where=where, include_documents=False))
    assert got == wanted, "get"
    by_id = sorted(doc.id for doc in await chroma.get(name, ALL_IDS, where=where, include_documents=False))
    assert by_id == wanted, "get by ids"
    hits = await chroma.query(name, [1.0, 0.0], n_results=len(ALL_IDS), where=where)
    assert sorted(hit.id for hit in hits) == wanted, "query"

    await chroma.delete(name, where=where)
    left = sorted(doc.id for doc in await chroma.get(name, include_documents=False))
    assert left == sorted(set(ALL_IDS) - set(wanted)), "delete removed exactly the matching documents"


def test_a_list_mixing_integers_and_fractions_is_a_valid_filter() -> None:
    # A google.protobuf.Struct list [2.5, 3.0] reaches the service as [2.5, 3]; Chroma alone refuses it.
    assert is_valid_where({"n": {"$in": [2.5, 3]}})
    assert is_valid_where({"n": {"$nin": [2.5, 3]}})
    assert not is_valid_where({"n": {"$in": ["a", 2.5]}})
    assert not is_valid_where({"n": {"$lt": 2.5, "$gt": 1.5}})
