"""The Embedding service's traces and metrics, layered on the domain without changing it.

* `TracedStore` is a `ChromaStore` whose each Chroma call made within a sampled trace is a CLIENT
  span (`chromadb query`, db.system.name=chromadb, db.operation.name, db.collection.name). Only
  names go on spans: documents, queries and vectors never do.
* `ObservedEmbeddingService` is the service with a `fusion` span around rank fusion,
  `sekha.embedding.search.duration` (base, fusion) for successful searches, and
  `sekha.embedding.documents_ingested` (base, collection) for every upsert.

The RPC's SERVER span and the CLIENT span of each call to the router come from
`sekha_runtime.server.tracing` and `sekha.tracing`; these spans nest under them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from embedding_service.collection_registry import RegistryStore
from embedding_service.config import ChromaConfig, EmbeddingConfig
from embedding_service.domain import (
    DocumentIn,
    FusionMethod,
    Metadata,
    SearchResult,
    UpsertResult,
    WhereFilter,
)
from embedding_service.fusion import FusedHit, RankedList
from embedding_service.leases import Leases
from embedding_service.service import EmbeddingStoreService, _utc_now
from embedding_service.state import open_state
from embedding_service.store import ChromaStore, QueryHit, StoredCollection, StoredDocument
from embedding_service.vectors import VectorSource
from sekha_runtime.telemetry import Telemetry

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

__all__ = ["ObservedEmbeddingService", "TracedStore"]

T = TypeVar("T")


class TracedStore(ChromaStore):
    """A ChromaStore whose every Chroma call is a CLIENT span when it runs inside a sampled trace."""

    def __init__(
        self, config: ChromaConfig, tracer: Tracer, client_factory: Callable[[], ClientAPI] | None = None
    ) -> None:
        super().__init__(config, client_factory)
        self._tracer = tracer

    async def _traced(self, operation: str, collection: str | None, call: Awaitable[T]) -> T:
        parent = trace.get_current_span().get_span_context()
        if not parent.is_valid or not parent.trace_flags.sampled:
            # Background work (migrations) would make a root trace per call; a dropped parent
            # would drop these spans anyway.
            return await call
        attributes = {"db.system.name": "chromadb", "db.operation.name": operation}
        if collection is not None:
            attributes["db.collection.name"] = collection
        with self._tracer.start_as_current_span(
            f"chromadb {operation}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,  # exception text may quote documents
        ):
            return await call

    async def heartbeat(self) -> int:
        return await self._traced("heartbeat", None, super().heartbeat())

    async def max_batch_size(self) -> int:
        return await self._traced("max_batch_size", None, super().max_batch_size())

    async def create_collection(
        self,
        name: str,
        *,
        base: str,
        dimension: int,
        model: str,
        created_at: datetime,
        hnsw_space: str | None = None,
    ) -> StoredCollection:
        call = super().create_collection(
            name, base=base, dimension=dimension, model=model, created_at=created_at, hnsw_space=hnsw_space
        )
        return await self._traced("create_collection", name, call)

    async def describe(self, name: str) -> StoredCollection:
        return await self._traced("describe", name, super().describe(name))

    async def exists(self, name: str) -> bool:
        return await self._traced("exists", name, super().exists(name))

    async def list_names(self) -> list[str]:
        return await self._traced("list_names", None, super().list_names())

    async def count(self, name: str) -> int:
        return await self._traced("count", name, super().count(name))

    async def delete_collection(self, name: str) -> None:
        await self._traced("delete_collection", name, super().delete_collection(name))

    async def upsert(
        self,
        name: str,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        texts: Sequence[str],
        metadatas: Sequence[Metadata | None],
        guard: Callable[[], None] | None = None,
    ) -> None:
        await self._traced("upsert", name, super().upsert(name, ids, embeddings, texts, metadatas, guard))

    async def get(
        self,
        name: str,
        ids: Sequence[str] | None = None,
        *,
        where: WhereFilter | None = None,
        limit: int | None = None,
        offset: int | None = None,
        include_embeddings: bool = False,
        include_documents: bool = True,
    ) -> list[StoredDocument]:
        call = super().get(
            name,
            ids,
            where=where,
            limit=limit,
            offset=offset,
            include_embeddings=include_embeddings,
            include_documents=include_documents,
        )
        return await self._traced("get", name, call)

    async def all_ids(self, name: str) -> list[str]:
        return await self._traced("all_ids", name, super().all_ids(name))

    async def sample_embedding(self, name: str) -> list[float] | None:
        return await self._traced("sample_embedding", name, super().sample_embedding(name))

    async def query(
        self, name: str, embedding: Sequence[float], n_results: int, where: WhereFilter | None = None
    ) -> list[QueryHit]:
        return await self._traced("query", name, super().query(name, embedding, n_results, where))

    async def delete(
        self, name: str, ids: Sequence[str] | None = None, where: WhereFilter | None = None
    ) -> None:
        await self._traced("delete", name, super().delete(name, ids, where))


class ObservedEmbeddingService(EmbeddingStoreService):
    """`EmbeddingStoreService` plus search latency, ingest counts and a fusion span."""

    def __init__(
        self,
        config: EmbeddingConfig,
        store: ChromaStore,
        registry: RegistryStore,
        vectors: VectorSource,
        telemetry: Telemetry,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        leases: Leases | None = None,
    ) -> None:
        super().__init__(config, store, registry, vectors, clock=clock, sleep=sleep, leases=leases)
        self._tracer = telemetry.tracer
        self._search_duration = telemetry.instruments.search_duration
        self._ingested = telemetry.instruments.documents_ingested

    @classmethod
    def open_observed(
        cls,
        config: EmbeddingConfig,
        vectors: VectorSource,
        telemetry: Telemetry,
        clock: Callable[[], datetime] = _utc_now,
    ) -> ObservedEmbeddingService:
        """Like `EmbeddingStoreService.open`, with Chroma calls traced when tracing is on."""
        store = (
            TracedStore(config.chroma, telemetry.tracer)
            if telemetry.tracing_enabled
            else ChromaStore(config.chroma)
        )
        registry, leases = open_state(config, clock=clock)
        return cls(config, store, registry, vectors, telemetry, clock=clock, leases=leases)

    def _fuse(self, ranked: list[RankedList], method: FusionMethod, rrf_k: int) -> list[FusedHit]:
        with self._tracer.start_as_current_span(
            "sekha.embedding.fusion",
            attributes={"sekha.fusion.method": method.value, "sekha.fusion.lists": len(ranked)},
            record_exception=False,
        ):
            return super()._fuse(ranked, method, rrf_k)

    async def search(
        self,
        base: str,
        query: str,
        top_k: int = 0,
        dimensions: Sequence[int] = (),
        fusion_method: FusionMethod = FusionMethod.RECIPROCAL_RANK,
        rrf_k: int = 0,
        collection_weights: Mapping[str, float] | None = None,
        where: WhereFilter | None = None,
        request_id: str = "",
    ) -> SearchResult:
        started = time.perf_counter()
        result = await super().search(
            base,
            query,
            top_k=top_k,
            dimensions=dimensions,
            fusion_method=fusion_method,
            rrf_k=rrf_k,
            collection_weights=collection_weights,
            where=where,
            request_id=request_id,
        )
        self._search_duration.record(
            time.perf_counter() - started, {"base": base, "fusion": fusion_method.value}
        )
        return result

    async def upsert(
        self,
        base: str,
        documents: Sequence[DocumentIn],
        model: str | None = None,
        request_id: str = "",
        deadline_s: float | None = None,
    ) -> UpsertResult:
        result = await super().upsert(base, documents, model, request_id, deadline_s)
        for collection in result.collections:  # every written collection got every document
            self._ingested.add(result.upserted_count, {"base": base, "collection": collection.name})
        return result
