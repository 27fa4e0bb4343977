"""Chroma access for the Embedding service.

Chroma's client is synchronous, so every call runs on a small worker pool owned by the store and
the event loop never blocks. Collections are always opened with `embedding_function=None`
(Chroma's default function would download a model) and every write carries its vectors.
Writes are chunked below Chroma's maximum batch size and checked for the collection's
dimension before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from embedding_service.chroma_where import exact_where
from embedding_service.config import ChromaConfig
from embedding_service.domain import DistanceMetric, Metadata, WhereFilter
from embedding_service.events import EVENTS
from sekha_runtime.errors import (
    AlreadyExistsError,
    DimensionMismatchError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

_log = logging.getLogger(__name__)

T = TypeVar("T")

# Collection metadata keys written by this service.
META_BASE = "base"
META_DIMENSION = "dimension"
META_MODEL = "model"
META_DISTANCE = "distance_metric"
META_CREATED_AT = "created_at"


@dataclass(frozen=True)
class StoredDocument:
    """A document as Chroma holds it."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    embedding: list[float] | None = None


@dataclass(frozen=True)
class QueryHit:
    """One nearest neighbour with Chroma's distance (smaller is closer)."""

    id: str
    text: str
    metadata: dict[str, Any]
    distance: float


@dataclass(frozen=True)
class StoredCollection:
    """A Chroma collection's description."""

    name: str
    metadata: dict[str, Any]
    dimension: int | None
    distance_metric: DistanceMetric


class _Unreachable(Exception):
    """The Chroma client could not be created (server down, bad address, unreadable path)."""


def _chroma_errors() -> ModuleType:
    # chromadb is imported when a store is made, not with this module: it takes about a second, and
    # whoever imports the service without opening a store (a config check, collecting the tests) need not pay.
    import chromadb.errors

    return chromadb.errors


def is_valid_where(where: WhereFilter) -> bool:
    """Whether Chroma accepts `where` as a metadata filter (in the exact form the store sends)."""
    from chromadb.api.types import validate_where

    try:
        validate_where(dict(_chroma_where(where) or {}))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
    return _operators_known(where)


def _chroma_where(where: WhereFilter | None) -> dict[str, Any] | None:
    """The filter as Chroma gets it: fractional comparisons made exact (see chroma_where)."""
    return dict(exact_where(where)) if where else None


def _operators_known(where: object) -> bool:
    # Chroma's own check takes an unknown `$op` at the top for a field name; its server refuses it.
    if not isinstance(where, Mapping):
        return False
    for key, value in where.items():
        if key in ("$and", "$or"):
            if not all(_operators_known(part) for part in value):
                return False
        elif key.startswith("$"):
            return False
    return True


def _chunks(count: int, size: int) -> Iterator[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


class ChromaStore:
    """Async facade over a persistent (embedded) or HTTP Chroma client."""

    def __init__(self, config: ChromaConfig, client_factory: Callable[[], ClientAPI] | None = None) -> None:
        self._config = config
        self._client_factory = client_factory or self._default_client
        self._executor = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="chroma")
        # Touched only on worker threads, hence a threading lock rather than an asyncio one.
        self._lock = threading.Lock()
        self._client: ClientAPI | None = None
        self._handles: dict[str, Collection] = {}
        self._dimensions: dict[str, int] = {}
        self._max_batch: int | None = None
        self._closed = False
        # Imported with the store, at start-up, so that no request pays for the import on the loop.
        self._errors = _chroma_errors()
        self._chroma_down = False  # the last call found Chroma unreachable (logged when it is back)

    def _default_client(self) -> ClientAPI:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if self._config.mode == "http":
            return chromadb.HttpClient(
                host=self._config.host, port=self._config.port, ssl=self._config.ssl, settings=settings
            )
        self._config.path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(self._config.path), settings=settings)

    # -- plumbing ---------------------------------------------------------------------------------

    async def _run(self, call: Callable[[], T], collection: str | None = None, filtered: bool = False) -> T:
        if self._closed:
            raise UnavailableError("vector store is shutting down", reason="STORE_UNAVAILABLE")
        errors = self._errors
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, call)
        try:
            try:
                result = await asyncio.shield(future)
            except asyncio.CancelledError:
                # A Chroma call cannot be interrupted: let it finish before the cancellation goes on, so
                # a caller's lock is never released while its write is still running.
                with contextlib.suppress(Exception):
                    await future
                raise
        except errors.NotFoundError:
            raise NotFoundError("collection", collection or "") from None
        except errors.InvalidArgumentError:
            if not filtered:
                raise
            # Only a filter comes from the caller unchecked by us; Chroma refused it.
            raise InvalidArgumentError(
                FieldViolation("metadata_filter", "is not a valid Chroma where filter")
            ) from None
        except (httpx.TransportError, ConnectionError, _Unreachable) as exc:
            self._chroma_down = True
            EVENTS.warning(
                "chroma_error",
                f"chroma unreachable ({type(exc).__name__})",
                subject="chroma",
                mode=self._config.mode,
                error=type(exc).__name__,
                collection=collection or "",
            )
            raise UnavailableError("vector store unavailable", reason="STORE_UNAVAILABLE") from None
        if self._chroma_down:
            self._chroma_down = False
            EVENTS.info("chroma_recovered", "chroma answers again", subject="chroma", mode=self._config.mode)
        return result

    def _client_sync(self) -> ClientAPI:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._client_factory()
                except Exception as exc:
                    # chromadb reports an unreachable server as a bare ValueError from the constructor.
                    raise _Unreachable(type(exc).__name__) from None
            return self._client

    def _handle(self, name: str) -> Collection:
        with self._lock:
            handle = self._handles.get(name)
        if handle is None:
            handle = self._client_sync().get_collection(name, embedding_function=None)  # type: ignore[arg-type]
            with self._lock:
                self._handles[name] = handle
        return handle

    def _forget(self, name: str) -> None:
        with self._lock:
            self._handles.pop(name, None)
            self._dimensions.pop(name, None)

    def _max_batch_sync(self) -> int:
        if self._max_batch is None:
            self._max_batch = max(1, int(self._client_sync().get_max_batch_size()))
        return self._max_batch

    def _dimension_sync(self, name: str) -> int | None:
        with self._lock:
            known = self._dimensions.get(name)
        if known is not None:
            return known
        handle = self._handle(name)
        declared = (handle.metadata or {}).get(META_DIMENSION)
        dimension = declared if isinstance(declared, int) and not isinstance(declared, bool) else None
        if dimension is None:
            # A collection we did not create (adopted from v1): Chroma knows it once it holds a vector.
            dimension = handle.get_model().dimension
            if dimension is None:
                return None
        with self._lock:
            self._dimensions[name] = dimension
        return dimension

    # -- collections ------------------------------------------------------------------------------

    async def heartbeat(self) -> int:
        """Chroma's clock in ns; raises UnavailableError when Chroma cannot be reached."""
        return await self._run(lambda: int(self._client_sync().heartbeat()))

    async def max_batch_size(self) -> int:
        """Largest write Chroma accepts in one call."""
        return await self._run(self._max_batch_sync)

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
        """Create `name` with this service's HNSW settings and descriptive metadata."""
        hnsw = self._config.hnsw
        space = hnsw_space or hnsw.space
        metadata: dict[str, Any] = {
            META_BASE: base,
            META_DIMENSION: dimension,
            META_MODEL: model,
            META_DISTANCE: space,
            META_CREATED_AT: created_at.isoformat(),
        }
        configuration: Any = {
            "hnsw": {
                "space": space,
                "ef_construction": hnsw.ef_construction,
                "ef_search": hnsw.ef_search,
                "max_neighbors": hnsw.max_neighbors,
            }
        }

        errors = self._errors

        def create() -> StoredCollection:
            try:
                handle = self._client_sync().create_collection(
                    name=name,
                    configuration=configuration,
                    metadata=metadata,
                    embedding_function=None,  # type: ignore[arg-type]
                )
            except errors.ChromaError as exc:
                if "already exists" in str(exc):
                    raise AlreadyExistsError(
                        f"collection {name!r} already exists", "collection", name
                    ) from None
                raise
            with self._lock:
                self._handles[name] = handle
                self._dimensions[name] = dimension
            return StoredCollection(name, dict(metadata), dimension, DistanceMetric(space))

        return await self._run(create, name)

    async def describe(self, name: str) -> StoredCollection:
        """Metadata, dimension (None while an adopted collection is empty) and HNSW space."""

        def describe() -> StoredCollection:
            handle = self._handle(name)
            metadata = dict(handle.metadata or {})
            space = (handle.configuration_json.get("hnsw") or {}).get("space") or metadata.get("hnsw:space")
            metric = (
                DistanceMetric(space) if space in {m.value for m in DistanceMetric} else DistanceMetric.L2
            )
            return StoredCollection(name, metadata, self._dimension_sync(name), metric)

        return await self._run(describe, name)

    async def exists(self, name: str) -> bool:
        """Whether Chroma has a collection called `name`."""
        try:
            await self._run(lambda: self._handle(name), name)
        except NotFoundError:
            return False
        return True

    async def list_names(self) -> list[str]:
        """Every collection name in the Chroma database, sorted."""
        return await self._run(lambda: sorted(c.name for c in self._client_sync().list_collections()))

    async def count(self, name: str) -> int:
        """Number of documents in `name`."""
        return await self._run(lambda: int(self._handle(name).count()), name)

    async def delete_collection(self, name: str) -> None:
        """Drop `name`; NotFoundError when it does not exist."""

        def drop() -> None:
            self._forget(name)
            self._client_sync().delete_collection(name)

        await self._run(drop, name)

    # -- documents --------------------------------------------------------------------------------

    async def upsert(
        self,
        name: str,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        texts: Sequence[str],
        metadatas: Sequence[Metadata | None],
        guard: Callable[[], None] | None = None,
    ) -> None:
        """Insert or replace documents (metadata replaced, not merged), chunked below Chroma's limit.

        Every vector is checked against the collection's dimension first: on a mismatch nothing
        is written and DimensionMismatchError is raised. `guard`, when given, runs on the worker
        thread right before each chunk is sent and stops the write by raising (a migration's
        lease check: the last moment before Chroma, which has no conditional write, takes it).
        """
        if not (len(ids) == len(embeddings) == len(texts) == len(metadatas)):
            raise ValueError("ids, embeddings, texts and metadatas differ in length")
        if not ids:
            return

        def write() -> None:
            expected = self._dimension_sync(name)
            if expected is None:
                expected = len(embeddings[0])
            for vector in embeddings:
                if len(vector) != expected:
                    raise DimensionMismatchError(name, expected, len(vector))
            handle = self._handle(name)
            step = self._max_batch_sync()
            for part in _chunks(len(ids), step):
                part_ids = list(ids[part])
                previous = handle.get(ids=part_ids, include=["metadatas"])  # type: ignore[list-item]
                old_keys = {
                    doc_id: set(meta or {})
                    for doc_id, meta in zip(previous["ids"], previous["metadatas"] or [], strict=False)
                }
                merged: list[dict[str, Any] | None] = []
                for doc_id, meta in zip(part_ids, metadatas[part], strict=True):
                    # Chroma merges metadata on upsert; None values delete the keys we no longer send.
                    record: dict[str, Any] = dict(meta or {})
                    record.update({key: None for key in old_keys.get(doc_id, set()) - record.keys()})
                    merged.append(record or None)
                if guard is not None:
                    guard()
                handle.upsert(
                    ids=part_ids,
                    embeddings=[list(map(float, v)) for v in embeddings[part]],  # type: ignore[arg-type]
                    documents=list(texts[part]),
                    metadatas=merged,  # type: ignore[arg-type]
                )

        await self._run(write, name)

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
        """Documents by id (in the order given, missing ones left out) or a page in Chroma's order."""
        include: list[str] = ["documents", "metadatas"] if include_documents else []
        if include_embeddings:
            include.append("embeddings")

        def read() -> list[StoredDocument]:
            handle = self._handle(name)
            if ids is None:
                return _documents(
                    handle.get(
                        where=_chroma_where(where),  # type: ignore[arg-type]
                        limit=limit,
                        offset=offset,
                        include=include,  # type: ignore[arg-type]
                    )
                )
            found: dict[str, StoredDocument] = {}
            unique_ids = list(dict.fromkeys(ids))
            for part in _chunks(len(unique_ids), self._max_batch_sync()):
                batch = handle.get(
                    ids=unique_ids[part],
                    where=_chroma_where(where),  # type: ignore[arg-type]
                    include=include,  # type: ignore[arg-type]
                )
                found.update((doc.id, doc) for doc in _documents(batch))
            return [found[doc_id] for doc_id in unique_ids if doc_id in found]

        return await self._run(read, name, filtered=bool(where))

    async def all_ids(self, name: str) -> list[str]:
        """Every id in `name`, sorted (one snapshot read)."""
        return await self._run(lambda: sorted(self._handle(name).get(include=[])["ids"]), name)

    async def sample_embedding(self, name: str) -> list[float] | None:
        """One stored vector, or None when the collection is empty."""

        def sample() -> list[float] | None:
            result = self._handle(name).get(limit=1, include=["embeddings"])  # type: ignore[list-item]
            vectors = result.get("embeddings")
            if vectors is None or len(vectors) == 0:
                return None
            return [float(x) for x in vectors[0]]

        return await self._run(sample, name)

    async def query(
        self, name: str, embedding: Sequence[float], n_results: int, where: WhereFilter | None = None
    ) -> list[QueryHit]:
        """The `n_results` nearest documents, closest first."""

        def search() -> list[QueryHit]:
            expected = self._dimension_sync(name)
            if expected is not None and len(embedding) != expected:
                raise DimensionMismatchError(name, expected, len(embedding))
            result = self._handle(name).query(
                query_embeddings=[list(map(float, embedding))],  # type: ignore[arg-type]
                n_results=n_results,
                where=_chroma_where(where),  # type: ignore[arg-type]
                include=["documents", "metadatas", "distances"],  # type: ignore[list-item]
            )
            ids = result["ids"][0]
            texts = (result.get("documents") or [[]])[0] or [""] * len(ids)
            metas: Sequence[Mapping[str, Any] | None] = (result.get("metadatas") or [[]])[0] or [None] * len(
                ids
            )
            distances = (result.get("distances") or [[]])[0]
            return [
                QueryHit(doc_id, text or "", dict(meta or {}), float(distance))
                for doc_id, text, meta, distance in zip(ids, texts, metas, distances, strict=True)
            ]

        return await self._run(search, name, filtered=bool(where))

    async def delete(
        self, name: str, ids: Sequence[str] | None = None, where: WhereFilter | None = None
    ) -> None:
        """Delete documents by id, and documents matching `where` (the union of both)."""

        def remove() -> None:
            handle = self._handle(name)
            if ids:
                unique_ids = list(dict.fromkeys(ids))
                for part in _chunks(len(unique_ids), self._max_batch_sync()):
                    handle.delete(ids=unique_ids[part])
            if where:
                handle.delete(where=_chroma_where(where))  # type: ignore[arg-type]

        await self._run(remove, name, filtered=bool(where))

    async def aclose(self) -> None:
        """Wait for running calls, then release the Chroma client."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))
        with self._lock:
            client, self._client = self._client, None
            self._handles.clear()
        close = getattr(client, "close", None)
        if callable(close):
            close()


def _documents(result: Mapping[str, Any]) -> list[StoredDocument]:
    ids: list[str] = list(result.get("ids") or [])
    texts = result.get("documents") or [""] * len(ids)
    metas = result.get("metadatas") or [None] * len(ids)
    vectors = result.get("embeddings")
    if vectors is None:
        vectors = [None] * len(ids)
    return [
        StoredDocument(
            doc_id,
            text or "",
            dict(meta or {}),
            [float(x) for x in vector] if vector is not None else None,
        )
        for doc_id, text, meta, vector in zip(ids, texts, metas, vectors, strict=True)
    ]
