"""The Embedding service's facade: one async method per RPC, domain values in and out.

A base is a family of dimension collections (`{base}_{dimension}`), each written by one model.
The registry says which of them serve reads (searched by default), which receive writes
(every one of them gets each upsert, embedded with its own model; a migration target joins
this set, which is what dual writes are) and which one is the primary (read by GetDocuments,
counted by DeleteDocuments, the source of a migration).

Model selection on upsert: no model -> every collection receiving writes (or, for a new base,
the configured default / the router's choice); a model -> the write collections of that model
(plus both sides of a migration it takes part in), or a new dimension collection of the base
when none matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from embedding_service.config import DefaultsConfig, EmbeddingConfig
from embedding_service.domain import (
    CollectionInfo,
    CollectionInUseError,
    CollectionPage,
    Document,
    DocumentIn,
    FusionMethod,
    GetResult,
    Hit,
    Migration,
    MigrationState,
    SearchResult,
    UpsertResult,
    WhereFilter,
)
from embedding_service.events import EVENTS
from embedding_service.fusion import FusedHit, RankedList, min_max_fusion, reciprocal_rank_fusion
from embedding_service.locks import BaseLocks
from embedding_service.migration import MigrationRunner
from embedding_service.registry import CollectionRecord, MigrationRecord, SqliteRegistry
from embedding_service.store import ChromaStore, QueryHit, StoredDocument
from embedding_service.validation import (
    check_base,
    check_documents,
    check_ids,
    check_model,
    check_weights,
    check_where,
    decode_page_token,
    encode_page_token,
    invalid,
    resolve_page_size,
)
from embedding_service.vectors import (
    EmbeddedBatch,
    TrackedSource,
    VectorSource,
    VectorSwitch,
    embed_checked,
)
from sekha_runtime.errors import AlreadyExistsError, DimensionMismatchError, NotFoundError

_log = logging.getLogger(__name__)

# Embedded once per migration to learn the target model's dimension and provider key.
PROBE_TEXT = "dimension probe"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def model_matches(stored: str, requested: str) -> bool:
    """`requested` names the model stored as `stored` (`model` and `provider_id/model` forms)."""
    return stored == requested or stored.endswith("/" + requested) or requested.endswith("/" + stored)


def write_targets(
    collections: Sequence[CollectionRecord], migration: MigrationRecord | None, requested: str | None
) -> list[CollectionRecord]:
    """The collections an upsert writes, given the base's collections and its active migration."""
    writers = [c for c in collections if c.receiving_writes]
    if requested is None:
        return writers
    chosen = [c for c in writers if model_matches(c.model, requested)]
    if migration is not None:
        pair = {migration.source_collection, migration.target_collection}
        if any(c.name in pair for c in chosen):
            # Both sides of a migration get every write, whichever model the caller named.
            chosen = [c for c in writers if c.name in pair or c in chosen]
    return chosen


def _primary(collections: Sequence[CollectionRecord]) -> CollectionRecord | None:
    for record in collections:
        if record.primary:
            return record
    serving = [c for c in collections if c.serving_reads]
    return serving[0] if serving else None


def _by_dimension(collections: Sequence[CollectionRecord], dimension: int) -> CollectionRecord | None:
    """The collection of `dimension`: one serving reads, else a migration target, else any."""
    same = [c for c in collections if c.dimension == dimension]
    for wanted in (
        lambda c: c.primary,
        lambda c: c.serving_reads,
        lambda c: c.receiving_writes,
        lambda c: True,
    ):
        for record in same:
            if wanted(record):
                return record
    return None


def _migration(record: MigrationRecord) -> Migration:
    return Migration(
        id=record.id,
        base=record.base,
        source_collection=record.source_collection,
        target_collection=record.target_collection,
        target_model=record.target_model,
        state=record.state,
        total_documents=record.total_documents,
        migrated_documents=record.migrated_documents,
        created_at=record.created_at,
        updated_at=record.updated_at,
        error=record.error,
    )


class EmbeddingStoreService:
    """Documents of several embedding models in Chroma, fused search and zero-downtime migrations.

    The service owns the store and the registry it is given: `aclose()` closes them.
    """

    def __init__(
        self,
        config: EmbeddingConfig,
        store: ChromaStore,
        registry: SqliteRegistry,
        vectors: VectorSource,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._config = config
        self._limits = config.defaults
        self._store = store
        self._registry = registry
        # Replaceable on a config reload (a new router connection) without touching the requests
        # and migrations running on the old one.
        self._vectors = VectorSwitch(vectors)
        self._clock = clock
        self._locks = BaseLocks()
        # Dimension per model key, learnt from the vectors the source returns, never configured.
        self._dimensions: dict[str, int] = {}
        self._migrations = MigrationRunner(
            config=config.migration,
            store=store,
            registry=registry,
            vectors=self._vectors,
            locks=self._locks,
            sleep=sleep,
        )

    @classmethod
    def open(
        cls,
        config: EmbeddingConfig,
        vectors: VectorSource,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> EmbeddingStoreService:
        """A service with a ChromaStore and SqliteRegistry built from `config`."""
        return cls(
            config,
            ChromaStore(config.chroma),
            SqliteRegistry(config.state_path, clock=clock),
            vectors,
            clock=clock,
            sleep=sleep,
        )

    def reconfigure(
        self, config: EmbeddingConfig, vectors: VectorSource | None = None
    ) -> TrackedSource | None:
        """Apply a reloaded config to new requests: defaults and limits, migration settings, and
        `vectors` (when given) as the source of every embedding from now on.

        Requests already running keep the limits and the vector source they started with; running
        migrations are not restarted and embed their next batch with the new source. Returns the
        replaced source (close it once its `drained()` returns), or None. The store and the
        registry stay as they are: `chroma` and `state_path` only change with a restart.
        """
        self._config = config
        self._limits = config.defaults
        self._migrations.reconfigure(config.migration)
        return self._vectors.replace(vectors) if vectors is not None else None

    def known_dimension(self, model: str) -> int | None:
        """The dimension learnt for a model key (or the name it was requested by), if any."""
        return self._dimensions.get(model)

    async def check_health(self) -> None:
        """Raise UnavailableError when Chroma cannot be reached (for health checks and start-up)."""
        await self._store.heartbeat()
        await self._registry.collections("")

    async def aclose(self) -> None:
        """Pause running migrations (they resume from their cursor), then close store and registry."""
        await self._migrations.aclose()
        await self._store.aclose()
        await self._registry.aclose()

    # -- writes -----------------------------------------------------------------------------------

    async def upsert(
        self,
        base: str,
        documents: Sequence[DocumentIn],
        model: str | None = None,
        request_id: str = "",
    ) -> UpsertResult:
        """Embed and write documents to the base's write collections; idempotent by id.

        Batches of `write_batch_size` are pipelined: batch n+1 is embedded while batch n is
        written. Returns after Chroma has written everything. A failure after some batches were
        written leaves those batches stored (retrying the request is safe).
        """
        limits = self._limits  # one request, one set of limits, even across a config reload
        check_base(base)
        requested = (model or "").strip() or None
        if requested is not None:
            check_model(requested, "model")
        check_documents(documents, limits)
        _log.debug("upsert request=%s base=%s documents=%d", request_id, base, len(documents))
        # Every batch embeds with the vector source the request started on: after a reload the
        # new router may resolve "no model" differently, and one upsert must not mix the two.
        with self._vectors.pinned():
            written = await self._upsert_batches(base, requested, documents, limits)
        infos = await asyncio.gather(*(self._info(record) for record in written.values()))
        return UpsertResult(upserted_count=len(documents), collections=sorted(infos, key=lambda i: i.name))

    async def _upsert_batches(
        self, base: str, requested: str | None, documents: Sequence[DocumentIn], limits: DefaultsConfig
    ) -> dict[str, CollectionRecord]:
        """The pipeline of `upsert`; the collections written, by name."""
        step = limits.write_batch_size
        written: dict[str, CollectionRecord] = {}
        pending: asyncio.Task[list[CollectionRecord]] | None = None
        try:
            for start in range(0, len(documents), step):
                batch = list(documents[start : start + step])
                plan = await self._write_plan(base, requested)
                models: list[str | None] = (
                    list(dict.fromkeys(c.model for c in plan)) if plan else [requested or limits.model]
                )
                embedded = await self._embed_many([doc.text for doc in batch], models)
                if pending is not None:
                    written.update((c.name, c) for c in await pending)
                pending = asyncio.create_task(
                    self._write_batch(base, requested, batch, embedded, default_model=limits.model)
                )
            if pending is not None:
                written.update((c.name, c) for c in await pending)
        except BaseException:
            if pending is not None and not pending.done():
                # A batch already embedded is written rather than abandoned half way.
                await asyncio.gather(pending, return_exceptions=True)
            raise
        return written

    async def _write_plan(self, base: str, requested: str | None) -> list[CollectionRecord]:
        collections = await self._registry.collections(base)
        active = await self._registry.active_migrations(base)
        return write_targets(collections, active[0] if active else None, requested)

    async def _embed_many(
        self, texts: list[str], models: Sequence[str | None]
    ) -> dict[str | None, EmbeddedBatch]:
        """Embed once per distinct model, concurrently; keyed by the requested and reported names."""
        distinct = list(dict.fromkeys(models))
        batches = await asyncio.gather(*(embed_checked(self._vectors, texts, m) for m in distinct))
        result: dict[str | None, EmbeddedBatch] = {}
        for requested, batch in zip(distinct, batches, strict=True):
            result[requested] = batch
            result.setdefault(batch.model, batch)
            self._dimensions[batch.model] = batch.dimension
            if requested is not None:
                self._dimensions[requested] = batch.dimension
        return result

    async def _write_batch(
        self,
        base: str,
        requested: str | None,
        documents: list[DocumentIn],
        embedded: dict[str | None, EmbeddedBatch],
        *,
        default_model: str | None,
    ) -> list[CollectionRecord]:
        """Write one embedded batch to the base's current write collections under the base lock.

        The write set is re-read under the lock: a migration that started after the batch was
        embedded adds its target, whose model is then embedded too before writing.
        """
        texts = [doc.text for doc in documents]
        while True:
            async with self._locks(base):
                plan = await self._write_plan(base, requested)
                missing: list[str | None] = []
                if not plan:
                    key = requested or default_model
                    fresh = embedded.get(key)
                    if fresh is None:
                        missing = [key]
                    else:
                        plan = await self._write_plan(base, fresh.model) or [
                            await self._create_collection(base, fresh)
                        ]
                if not missing:
                    missing = [c.model for c in plan if c.model not in embedded]
                if not missing:
                    await self._write_locked(plan, documents, texts, embedded)
                    return plan
            embedded.update(await self._embed_many(texts, missing))

    async def _write_locked(
        self,
        plan: list[CollectionRecord],
        documents: list[DocumentIn],
        texts: list[str],
        embedded: Mapping[str | None, EmbeddedBatch],
    ) -> None:
        for record in plan:
            batch = embedded[record.model]
            if batch.dimension != record.dimension:
                raise DimensionMismatchError(record.name, record.dimension, batch.dimension)
        ids = [doc.id for doc in documents]
        metadatas = [dict(doc.metadata) for doc in documents]
        await asyncio.gather(
            *(
                self._store.upsert(record.chroma_name, ids, embedded[record.model].vectors, texts, metadatas)
                for record in plan
            )
        )

    async def _free_name(self, base: str, dimension: int) -> str:
        """`{base}_{dimension}`, or `_v2`, `_v3`, ... when that name is taken here or in Chroma."""
        candidate = f"{base}_{dimension}"
        version = 1
        while await self._registry.name_taken(candidate) or await self._store.exists(candidate):
            version += 1
            candidate = f"{base}_{dimension}_v{version}"
        return candidate

    async def _new_collection(
        self, base: str, batch: EmbeddedBatch, *, serving_reads: bool, primary: bool
    ) -> CollectionRecord:
        """Create the Chroma collection for `batch.model` under a free name; not registered yet."""
        name = await self._free_name(base, batch.dimension)
        now = self._clock()
        stored = await self._store.create_collection(
            name, base=base, dimension=batch.dimension, model=batch.model, created_at=now
        )
        return CollectionRecord(
            name=name,
            base=base,
            chroma_name=name,
            dimension=batch.dimension,
            model=batch.model,
            distance_metric=stored.distance_metric,
            created_at=now,
            serving_reads=serving_reads,
            receiving_writes=True,
            primary=primary,
        )

    async def _register_or_drop(self, record: CollectionRecord, register: Awaitable[object]) -> None:
        """Await the registry write; if it fails, drop the Chroma collection it was meant to record."""
        try:
            await register
        except BaseException:
            with contextlib.suppress(Exception):
                await self._store.delete_collection(record.chroma_name)
            raise

    async def _create_collection(self, base: str, batch: EmbeddedBatch) -> CollectionRecord:
        """A new dimension collection for `batch.model`; the caller holds the base lock."""
        existing = await self._registry.collections(base)
        first = _primary(existing) is None
        record = await self._new_collection(base, batch, serving_reads=True, primary=first)
        await self._register_or_drop(record, self._registry.add_collection(record))
        _log.info("created collection %s (%d-d, %s)", record.name, batch.dimension, batch.model)
        return record

    async def delete(self, base: str, ids: Sequence[str] = (), where: WhereFilter | None = None) -> int:
        """Delete by ids and/or `where` from every collection of the base; count from the primary."""
        check_base(base)
        if not ids and not where:
            raise invalid("ids", "ids or metadata_filter must be set")
        check_ids(ids, "ids", self._limits)
        check_where(where)
        collections = await self._collections_of(base)
        primary = _primary(collections)
        async with self._locks(base):
            before = await self._store.count(primary.chroma_name) if primary else 0
            await asyncio.gather(
                *(self._store.delete(c.chroma_name, ids=list(ids), where=where) for c in collections)
            )
            after = await self._store.count(primary.chroma_name) if primary else 0
        return before - after

    # -- reads ------------------------------------------------------------------------------------

    async def _collections_of(self, base: str) -> list[CollectionRecord]:
        collections = await self._registry.collections(base)
        if not collections:
            raise NotFoundError("base", base)
        return collections

    async def get(
        self,
        base: str,
        ids: Sequence[str] = (),
        dimension: int = 0,
        include_embeddings: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> GetResult:
        """Documents by id (missing ones left out), or a page of the collection when ids is empty."""
        limits = self._limits
        check_base(base)
        if dimension < 0:
            raise invalid("dimension", "must not be negative")
        if ids:
            check_ids(ids, "ids", limits)
        collections = await self._collections_of(base)
        record = _primary(collections) if dimension == 0 else _by_dimension(collections, dimension)
        if record is None:
            raise NotFoundError("collection", f"{base}_{dimension}")
        if ids:
            stored = await self._store.get(
                record.chroma_name, list(ids), include_embeddings=include_embeddings
            )
            return GetResult([_document(d) for d in stored], record.name)
        size = resolve_page_size(page_size, limits)
        offset = decode_page_token(page_token, "documents", record.name)
        stored = await self._store.get(
            record.chroma_name, limit=size + 1, offset=offset, include_embeddings=include_embeddings
        )
        next_token = encode_page_token("documents", record.name, offset + size) if len(stored) > size else ""
        return GetResult([_document(d) for d in stored[:size]], record.name, next_token)

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
        """Search the base's read collections (or the named dimensions) and fuse the hits.

        The query is embedded once per model searched; each collection is asked for
        fetch_multiplier x top_k hits, concurrently. A migration target is not read until
        the switch, so results are complete during a migration.
        """
        limits = self._limits  # one request, one set of limits, even across a config reload
        check_base(base)
        if not query or not query.strip():
            raise invalid("query", "must not be empty")
        if len(query) > limits.max_text_chars:
            raise invalid("query", f"must be at most {limits.max_text_chars} characters")
        if top_k < 0 or top_k > limits.max_top_k:
            raise invalid("top_k", f"must be between 0 and {limits.max_top_k}")
        if rrf_k < 0:
            raise invalid("rrf_k", "must not be negative")
        weights = dict(collection_weights or {})
        check_weights(weights)
        check_where(where)
        for index, wanted in enumerate(dimensions):
            if wanted <= 0:
                raise invalid(f"dimensions[{index}]", "must be positive")
        k = top_k or limits.top_k
        collections = await self._collections_of(base)
        selected = self._searched(base, collections, dimensions)
        _log.debug("search request=%s base=%s collections=%d", request_id, base, len(selected))

        models = list(dict.fromkeys(c.model for c in selected))
        with self._vectors.pinned():  # all the query's vectors from one source, reload or not
            query_batches = await asyncio.gather(*(embed_checked(self._vectors, [query], m) for m in models))
        query_vectors = dict(zip(models, query_batches, strict=True))
        for record in selected:
            batch = query_vectors[record.model]
            if batch.dimension != record.dimension:
                raise DimensionMismatchError(record.name, record.dimension, batch.dimension)
        fetch = k * limits.fetch_multiplier
        results: list[list[QueryHit]] = await asyncio.gather(
            *(
                self._store.query(record.chroma_name, query_vectors[record.model].vectors[0], fetch, where)
                for record in selected
            )
        )
        ranked = [
            RankedList(
                collection=record.name,
                ids=[hit.id for hit in hits],
                distances=[hit.distance for hit in hits],
                weight=float(weights.get(record.name, 1.0)),
                metric=record.distance_metric,
            )
            for record, hits in zip(selected, results, strict=True)
        ]
        fused = self._fuse(ranked, fusion_method, rrf_k or limits.rrf_k)
        documents: dict[str, QueryHit] = {}
        for collection_hits in results:  # the primary is first, so its copy of a document wins
            for hit in collection_hits:
                documents.setdefault(hit.id, hit)
        hits = [
            Hit(
                id=f.id,
                text=documents[f.id].text,
                metadata=documents[f.id].metadata,
                score=f.score,
                matches=list(f.matches),
            )
            for f in fused[:k]
        ]
        return SearchResult(hits=hits, collections=[record.name for record in selected])

    def _fuse(self, ranked: list[RankedList], method: FusionMethod, rrf_k: int) -> list[FusedHit]:
        """One ranking from the per-collection lists (a method of its own so tracing can wrap it)."""
        if method is FusionMethod.MIN_MAX:
            return min_max_fusion(ranked)
        return reciprocal_rank_fusion(ranked, rrf_k)

    def _searched(
        self, base: str, collections: Sequence[CollectionRecord], dimensions: Sequence[int]
    ) -> list[CollectionRecord]:
        if dimensions:
            selected: list[CollectionRecord] = []
            for wanted in dict.fromkeys(dimensions):
                record = _by_dimension(collections, wanted)
                if record is None:
                    raise NotFoundError("collection", f"{base}_{wanted}")
                selected.append(record)
        else:
            selected = [c for c in collections if c.serving_reads]
            if not selected:
                raise NotFoundError("collection", base)
        return sorted(selected, key=lambda c: (not c.primary, c.name))

    # -- collections ------------------------------------------------------------------------------

    async def _info(self, record: CollectionRecord) -> CollectionInfo:
        try:
            count = await self._store.count(record.chroma_name)
        except NotFoundError:
            _log.warning("registered collection %s is missing from Chroma", record.name)
            count = 0
        return CollectionInfo(
            name=record.name,
            base=record.base,
            dimension=record.dimension,
            model=record.model,
            distance_metric=record.distance_metric,
            document_count=count,
            created_at=record.created_at,
            serving_reads=record.serving_reads,
            receiving_writes=record.receiving_writes,
        )

    async def list_collections(
        self, base: str = "", page_size: int = 0, page_token: str = ""
    ) -> CollectionPage:
        """Registered collections ordered by name, of one base or all, with their document counts."""
        if base:
            check_base(base)
        size = resolve_page_size(page_size, self._limits)
        offset = decode_page_token(page_token, "collections", base)
        records = await self._registry.collections(base or None)
        page = records[offset : offset + size]
        infos = await asyncio.gather(*(self._info(record) for record in page))
        next_token = (
            encode_page_token("collections", base, offset + size) if offset + size < len(records) else ""
        )
        return CollectionPage(list(infos), next_token)

    async def delete_collection(self, name: str) -> str:
        """Delete a dimension collection; refused for a base's primary and a migration's collections.

        A secondary dimension collection may be deleted even while it serves reads: searches
        then simply stop reading it.
        """
        if not name:
            raise invalid("name", "must not be empty")
        record = await self._registry.collection(name)
        if record is None:
            raise NotFoundError("collection", name)
        async with self._locks(record.base):
            record = await self._registry.collection(name)
            if record is None:
                raise NotFoundError("collection", name)
            if record.primary:
                raise CollectionInUseError(
                    f"collection {name!r} serves the reads of base {record.base!r}", name, "SERVING_READS"
                )
            for migration in await self._registry.active_migrations(record.base):
                if name in (migration.source_collection, migration.target_collection):
                    raise CollectionInUseError(
                        f"collection {name!r} takes part in migration {migration.id}",
                        name,
                        "MIGRATION_IN_PROGRESS",
                    )
            with contextlib.suppress(NotFoundError):
                await self._store.delete_collection(record.chroma_name)
            await self._registry.remove_collection(name)
        _log.info("deleted collection %s", name)
        return name

    async def adopt(self, source_collection: str, base: str, model: str) -> CollectionInfo:
        """Register an existing Chroma collection (v1, no dimension suffix) as `{base}_{dimension}`.

        The collection is neither renamed nor re-embedded: the registry maps the logical name to
        it (an alias), so anything still reading it by its old name keeps working. The dimension
        comes from a stored vector.
        """
        check_base(base)
        check_model(model, "model")
        if not source_collection:
            raise invalid("source_collection", "must not be empty")
        if await self._registry.name_taken(source_collection):
            raise AlreadyExistsError(
                f"collection {source_collection!r} is already registered", "collection", source_collection
            )
        stored = await self._store.describe(source_collection)
        vector = await self._store.sample_embedding(source_collection)
        dimension = len(vector) if vector else stored.dimension
        if not dimension:
            raise invalid("source_collection", "holds no vectors, so its dimension cannot be detected")
        name = f"{base}_{dimension}"
        async with self._locks(base):
            if await self._registry.name_taken(name):
                raise AlreadyExistsError(f"base {base!r} already has collection {name!r}", "collection", name)
            existing = await self._registry.collections(base)
            record = CollectionRecord(
                name=name,
                base=base,
                chroma_name=source_collection,
                dimension=dimension,
                model=model,
                distance_metric=stored.distance_metric,
                created_at=self._clock(),
                serving_reads=True,
                receiving_writes=True,
                primary=_primary(existing) is None,
            )
            await self._registry.add_collection(record)
        _log.info("adopted %s as %s (%d-d)", source_collection, name, dimension)
        return await self._info(record)

    # -- migrations -------------------------------------------------------------------------------

    async def start_migration(self, base: str, target_model: str, batch_size: int = 0) -> Migration:
        """Create the target collection, start dual writes and the background backfill."""
        check_base(base)
        check_model(target_model, "target_model")
        settings = self._config.migration
        if batch_size < 0 or batch_size > settings.max_batch_size:
            raise invalid("batch_size", f"must be between 0 and {settings.max_batch_size}")
        size = batch_size or settings.batch_size
        await self._collections_of(base)
        await self._refuse_second_migration(base)
        probe = await embed_checked(self._vectors, [PROBE_TEXT], target_model)
        self._dimensions[probe.model] = probe.dimension
        async with self._locks(base):
            await self._refuse_second_migration(base)
            collections = await self._collections_of(base)
            source = _primary(collections)
            if source is None:
                raise NotFoundError("collection", base)
            target = await self._new_collection(base, probe, serving_reads=False, primary=False)
            name, now = target.name, target.created_at
            record = MigrationRecord(
                id=uuid.uuid4().hex,
                base=base,
                source_collection=source.name,
                target_collection=name,
                target_model=probe.model,
                state=MigrationState.PENDING,
                total_documents=await self._store.count(source.chroma_name),
                migrated_documents=0,
                cursor=None,
                batch_size=size,
                created_at=now,
                updated_at=now,
            )
            await self._register_or_drop(target, self._registry.begin_migration(record, target))
        EVENTS.info(
            "migration_started",
            f"migration {record.id}: {source.name} -> {name} ({probe.model})",
            subject=record.id,
            migration=record.id,
            base=base,
            source_collection=source.name,
            target_collection=name,
            model=probe.model,
            total=record.total_documents,
        )
        self._migrations.spawn(record.id)
        return _migration(record)

    async def _refuse_second_migration(self, base: str) -> None:
        active = await self._registry.active_migrations(base)
        if active:
            raise AlreadyExistsError(
                f"base {base!r} already has a migration in progress", "migration", active[0].id
            )

    async def get_migration(self, migration_id: str) -> Migration:
        """The migration's state and progress; NotFoundError when unknown."""
        if not migration_id:
            raise invalid("id", "must not be empty")
        return _migration(await self._registry.migration(migration_id))

    async def resume_migrations(self) -> list[Migration]:
        """Restart every PENDING, BACKFILLING or VERIFYING migration (call once at start-up)."""
        active = await self._registry.active_migrations()
        for record in active:
            self._migrations.spawn(record.id)
        return [_migration(record) for record in active]

    async def wait_for_migration(self, migration_id: str) -> Migration:
        """Wait until this process's task for the migration ends, then return its state."""
        await self._migrations.wait(migration_id)
        return await self.get_migration(migration_id)


def _document(stored: StoredDocument) -> Document:
    return Document(id=stored.id, text=stored.text, metadata=stored.metadata, embedding=stored.embedding)
