"""The Embedding service's traces and metrics, layered on the domain without changing it.

* `TracedStore` wraps a `ChromaStore`: each Chroma call made within a sampled trace is a CLIENT
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
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from embedding_service.config import EmbeddingConfig
from embedding_service.domain import DocumentIn, FusionMethod, SearchResult, UpsertResult, WhereFilter
from embedding_service.fusion import FusedHit, RankedList
from embedding_service.leases import Leases
from embedding_service.registry import RegistryStore
from embedding_service.service import EmbeddingStoreService, _utc_now
from embedding_service.state import open_state
from embedding_service.store import ChromaStore
from embedding_service.vectors import VectorSource
from sekha_runtime.telemetry import Telemetry

__all__ = ["ObservedEmbeddingService", "TracedStore"]

# ChromaStore's coroutine methods; the first positional argument of each is a collection name,
# except for those listed in _NO_COLLECTION.
_TRACED_CALLS = frozenset(
    {
        "heartbeat",
        "max_batch_size",
        "create_collection",
        "describe",
        "exists",
        "list_names",
        "count",
        "delete_collection",
        "upsert",
        "get",
        "all_ids",
        "sample_embedding",
        "query",
        "delete",
    }
)
_NO_COLLECTION = frozenset({"heartbeat", "max_batch_size", "list_names"})


class TracedStore:
    """A ChromaStore whose calls are spans; every other attribute is the store's own."""

    def __init__(self, store: ChromaStore, tracer: Tracer) -> None:
        self._store = store
        self._tracer = tracer

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name not in _TRACED_CALLS:
            return attribute
        tracer = self._tracer
        span_name = f"chromadb {name}"

        async def traced(*args: Any, **kwargs: Any) -> Any:
            parent = trace.get_current_span().get_span_context()
            if not parent.is_valid or not parent.trace_flags.sampled:
                # Background work (migrations) would make a root trace per call; a dropped parent
                # would drop these spans anyway.
                return await attribute(*args, **kwargs)
            attributes: dict[str, Any] = {"db.system.name": "chromadb", "db.operation.name": name}
            if name not in _NO_COLLECTION and args and isinstance(args[0], str):
                attributes["db.collection.name"] = args[0]
            with tracer.start_as_current_span(
                span_name,
                kind=SpanKind.CLIENT,
                attributes=attributes,
                record_exception=False,  # exception text may quote documents
            ):
                return await attribute(*args, **kwargs)

        return traced


class ObservedEmbeddingService(EmbeddingStoreService):
    """`EmbeddingStoreService` plus search latency, ingest counts and a fusion span."""

    def __init__(
        self,
        config: EmbeddingConfig,
        store: Any,
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
        store: Any = ChromaStore(config.chroma)
        if telemetry.tracing_enabled:
            store = TracedStore(store, telemetry.tracer)
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
