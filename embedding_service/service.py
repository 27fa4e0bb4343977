"""The Embedding service's facade: one async method per RPC, domain values in and out.

A base is a family of dimension collections (`{base}_{dimension}`), each written by one model.
The registry says which of them serve reads (searched by default), which receive writes
(every one of them gets each upsert, embedded with its own model; a migration target joins
this set, which is what dual writes are) and which one is the primary (the source of a
migration, and first among the read collections: when several hold a document, GetDocuments
and search return the primary's copy, else the copy of the first collection by name).
GetDocuments, search and the count of DeleteDocuments all see the same collections.

Model selection on upsert: no model -> every collection receiving writes (or, for a new base,
the configured default / the router's choice); a model -> the write collections of that model
(plus both sides of a migration it takes part in), or a new dimension collection of the base
when the base never wrote with it. A model the base has migrated away from (its collection no
longer receives writes, or a completed migration replaced it) is not a new model: the write goes
to the base's current write collections, embedded with their models, and the reply lists them.
So a client still naming the old model after a migration never forks the base into a second
collection, including an upsert sent during the backfill that lands after the switch.

Replicas (`state.backend: redis`): the registry is read from Redis at each step, so every
replica writes to the collections the shared registry names. Changes of a base's set of
collections (a new collection, a migration's start, a deletion, an adoption) hold the base's
lease (`embedding_service.leases`), fenced in the registry. A write re-reads the registry after
it reached Chroma and also writes any collection that joined meanwhile (a migration another
replica started, or its switch), so a write never lands only in a collection that stopped
receiving writes while it was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from embedding_service.batching import BatchSizer
from embedding_service.collection_registry import CollectionRecord, MigrationRecord, RegistryStore
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
from embedding_service.leases import Lease, Leases, LocalLeases
from embedding_service.locks import BaseLocks
from embedding_service.migration import MigrationRunner
from embedding_service.state import open_state
from embedding_service.store import ChromaStore, QueryHit, StoredDocument
from embedding_service.validation import (
    check_base,
    check_documents,
    check_ids,
    check_model,
    check_weights,
    check_where,
    decode_page_position,
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
# Most documents one read of a GetDocuments page asks Chroma for.
_MAX_PAGE_READ = 4096


def _utc_now() -> datetime:
    return datetime.now(UTC)


def model_matches(stored: str, requested: str) -> bool:
    """`requested` names the model stored as `stored` (`model` and `provider_id/model` forms)."""
    return stored == requested or stored.endswith("/" + requested) or requested.endswith("/" + stored)


def retired(
    collections: Sequence[CollectionRecord], requested: str, replaced_models: Sequence[str] = ()
) -> bool:
    """Whether the base wrote with `requested` before and no longer does (it migrated away)."""
    if any(model_matches(c.model, requested) for c in collections if c.receiving_writes):
        return False
    return any(model_matches(c.model, requested) for c in collections if not c.receiving_writes) or any(
        model_matches(model, requested) for model in replaced_models
    )


def write_targets(
    collections: Sequence[CollectionRecord],
    migration: MigrationRecord | None,
    requested: str | None,
    replaced_models: Sequence[str] = (),
) -> list[CollectionRecord]:
    """The collections an upsert writes, given the base's collections and its active migration.

    `replaced_models`: source models of the base's completed migrations (their collections may
    have been deleted since); a model the base migrated away from writes where the base writes now.
    """
    writers = [c for c in collections if c.receiving_writes]
    if requested is None or retired(collections, requested, replaced_models):
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
        registry: RegistryStore,
        vectors: VectorSource,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        leases: Leases | None = None,
    ) -> None:
        self._config = config
        self._limits = config.defaults
        self._store = store
        self._registry = registry
        self._leases: Leases = leases or LocalLeases()
        # Bases and models already logged as redirected writes (one line each, not one per request).
        self._redirect_logged: set[tuple[str, str]] = set()
        # Replaceable on a config reload (a new router connection) without touching the requests
        # and migrations running on the old one.
        self._batches = BatchSizer(config.batching, config.router.timeout_s)
        self._vectors = VectorSwitch(vectors, observe=self._batches.observe)
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
            leases=self._leases,
            sleep=sleep,
            batches=self._batches,
            supervise_every_s=config.state.lease_ttl_s / 2,
        )

    @classmethod
    def open(
        cls,
        config: EmbeddingConfig,
        vectors: VectorSource,
        clock: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> EmbeddingStoreService:
        """A service with a ChromaStore and the registry and leases `config.state` names."""
        registry, leases = open_state(config, clock=clock)
        return cls(
            config, ChromaStore(config.chroma), registry, vectors, clock=clock, sleep=sleep, leases=leases
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
        self._batches.reconfigure(config.batching, config.router.timeout_s)
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
        """Pause running migrations (they resume from their cursor, here or on another replica),
        release the leases, then close store and registry."""
        await self._migrations.aclose()
        await self._leases.aclose()
        await self._store.aclose()
        await self._registry.aclose()

    # -- writes -----------------------------------------------------------------------------------

    async def upsert(
        self,
        base: str,
        documents: Sequence[DocumentIn],
        model: str | None = None,
        request_id: str = "",
        deadline_s: float | None = None,
    ) -> UpsertResult:
        """Embed and write documents to the base's write collections; idempotent by id.

        Batches are pipelined: batch n+1 is embedded while batch n is written. A batch holds
        at most `write_batch_size` documents, fewer while the model is slow: one embedding call
        should take a share of the router timeout, or of `deadline_s` (the seconds the caller
        has left) when shorter (`batching.BatchSizer`). Returns after Chroma has written
        everything. A failure after some batches were written leaves those batches stored
        (retrying the request is safe).
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
        deadline = self._batches.deadline(deadline_s)
        with self._vectors.pinned():
            written = await self._upsert_batches(base, requested, documents, limits, deadline)
        infos = await asyncio.gather(*(self._info(record) for record in written.values()))
        return UpsertResult(upserted_count=len(documents), collections=sorted(infos, key=lambda i: i.name))

    async def _upsert_batches(
        self,
        base: str,
        requested: str | None,
        documents: Sequence[DocumentIn],
        limits: DefaultsConfig,
        deadline: float | None,
    ) -> dict[str, CollectionRecord]:
        """The pipeline of `upsert`; the collections written, by name."""
        written: dict[str, CollectionRecord] = {}
        pending: asyncio.Task[list[CollectionRecord]] | None = None
        start = 0
        try:
            while start < len(documents):
                plan = await self._write_plan(base, requested)
                models: list[str | None] = (
                    list(dict.fromkeys(c.model for c in plan)) if plan else [requested or limits.model]
                )
                step = self._batches.size(models, limits.write_batch_size, deadline)
                batch = list(documents[start : start + step])
                start += len(batch)
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
        migration = active[0] if active else None
        replaced: list[str] = []
        if requested is not None and collections and not write_targets(collections, migration, requested):
            # Rare path (a model the base does not write with): did a migration replace it?
            replaced = [
                m.source_model
                for m in await self._registry.migrations(base)
                if m.state is MigrationState.COMPLETED and m.source_model
            ]
        if requested is not None and retired(collections, requested, replaced):
            key = (base, requested)
            if key not in self._redirect_logged:
                self._redirect_logged.add(key)
                _log.info(
                    "base %s migrated away from model %s: writes naming it go to %s",
                    base,
                    requested,
                    ", ".join(c.name for c in collections if c.receiving_writes),
                )
        return write_targets(collections, migration, requested, replaced)

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
        embedded adds its target, whose model is then embedded too before writing. With a shared
        registry it is read once more after the write, and collections that joined the set in
        the meantime (another replica's migration start or switch) are written too.
        """
        texts = [doc.text for doc in documents]
        written: dict[str, CollectionRecord] = {}
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
                todo = [c for c in plan if c.name not in written]
                if not missing:
                    missing = [c.model for c in todo if c.model not in embedded]
                if not missing:
                    if todo:
                        await self._write_locked(todo, documents, texts, embedded)
                        written.update((c.name, c) for c in todo)
                    if not todo or not self._registry.shared:
                        return list(written.values())
                    continue
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
        self, base: str, batch: EmbeddedBatch, *, serving_reads: bool, primary: bool, lease: Lease
    ) -> CollectionRecord:
        """Create the Chroma collection for `batch.model` under a free name; not registered yet."""
        name = await self._free_name(base, batch.dimension)
        now = self._clock()
        await self._leases.confirm(lease)
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

    def _base_lease(self, base: str, what: str) -> contextlib.AbstractAsyncContextManager[Lease]:
        """The lease for changing `base`'s set of collections (other replicas change it too)."""
        return self._leases.hold(f"base:{base}", what)

    async def _create_collection(self, base: str, batch: EmbeddedBatch) -> CollectionRecord:
        """A new dimension collection for `batch.model` (or the one another replica just created);
        the caller holds the base lock."""
        async with self._base_lease(base, "creating a collection") as lease:
            # Another replica may have created it while this one waited for the lease.
            again = await self._write_plan(base, batch.model)
            if again:
                return again[0]
            existing = await self._registry.collections(base)
            first = _primary(existing) is None
            record = await self._new_collection(base, batch, serving_reads=True, primary=first, lease=lease)
            await self._register_or_drop(record, self._registry.add_collection(record, fence=lease))
        _log.info("created collection %s (%d-d, %s)", record.name, batch.dimension, batch.model)
        return record

    async def delete(self, base: str, ids: Sequence[str] = (), where: WhereFilter | None = None) -> int:
        """Delete the documents named by `ids` and those matching `where` (the union of both).

        Every collection of the base loses them, not only those serving reads: a migration
        target or a retired source would otherwise bring them back. The count is of distinct
        documents that reads saw (the collections serving reads), what GetDocuments and search
        agree on. The matching ids are found first and then deleted by id, under the base lock,
        so what is deleted is exactly what was matched.
        """
        check_base(base)
        if not ids and not where:
            raise invalid("ids", "ids or metadata_filter must be set")
        check_ids(ids, "ids", self._limits)
        check_where(where)
        async with self._locks(base):
            collections = await self._collections_of(base)
            matched = await asyncio.gather(*(self._matching(c, ids, where) for c in collections))
            await asyncio.gather(
                *(
                    self._store.delete(record.chroma_name, ids=found)
                    for record, found in zip(collections, matched, strict=True)
                    if found
                )
            )
            if self._registry.shared:
                # A collection another replica added meanwhile (a migration's target) loses them too.
                done = {c.name for c in collections}
                joined = [c for c in await self._registry.collections(base) if c.name not in done]
                everything = list(dict.fromkeys(doc_id for found in matched for doc_id in found))
                if everything:
                    await asyncio.gather(*(self._store.delete(c.chroma_name, ids=everything) for c in joined))
        seen = {
            doc_id
            for record, found in zip(collections, matched, strict=True)
            if record.serving_reads
            for doc_id in found
        }
        return len(seen)

    async def _matching(
        self, record: CollectionRecord, ids: Sequence[str], where: WhereFilter | None
    ) -> list[str]:
        """The ids of `record` that are in `ids` or match `where`."""
        found: list[str] = []
        if ids:
            found += [d.id for d in await self._store.get(record.chroma_name, ids, include_documents=False)]
        if where:
            found += [
                d.id for d in await self._store.get(record.chroma_name, where=where, include_documents=False)
            ]
        return list(dict.fromkeys(found))

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
        """Documents by id (missing ones left out), or a page of the base when ids is empty.

        Dimension 0 reads what a search reads: every collection serving reads, the primary
        first, then the others by name. A document stored in several of them is returned once,
        from the first (the copy search returns too). A dimension reads its collection only.
        """
        limits = self._limits
        check_base(base)
        if dimension < 0:
            raise invalid("dimension", "must not be negative")
        if ids:
            check_ids(ids, "ids", limits)
        collections = await self._collections_of(base)
        if dimension == 0:
            read = self._searched(base, collections, ())
        else:
            record = _by_dimension(collections, dimension)
            if record is None:
                raise NotFoundError("collection", f"{base}_{dimension}")
            read = [record]
        names = [record.name for record in read]
        if ids:
            found = await self._by_ids(read, ids, include_embeddings)
            return GetResult([_document(d) for d in found], names[0], collections=names)
        size = resolve_page_size(page_size, limits)
        index, offset = decode_page_position(page_token, "documents", names)
        page, after = await self._page(read, index, offset, size, include_embeddings)
        next_token = encode_page_token("documents", names[after[0]], after[1]) if after else ""
        return GetResult([_document(d) for d in page], names[0], next_token, names)

    async def _by_ids(
        self, read: Sequence[CollectionRecord], ids: Sequence[str], include_embeddings: bool
    ) -> list[StoredDocument]:
        """Each id's document from the first collection of `read` holding it, in the order asked."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, StoredDocument] = {}
        for record in read:
            missing = [doc_id for doc_id in wanted if doc_id not in found]
            if not missing:
                break
            stored = await self._store.get(record.chroma_name, missing, include_embeddings=include_embeddings)
            found.update((doc.id, doc) for doc in stored)
        return [found[doc_id] for doc_id in wanted if doc_id in found]

    async def _page(
        self,
        read: Sequence[CollectionRecord],
        index: int,
        offset: int,
        size: int,
        include_embeddings: bool,
    ) -> tuple[list[StoredDocument], tuple[int, int] | None]:
        """Up to `size` documents from position (collection index, offset) of `read`, and the
        position of the next one (None at the end).

        The collections are listed one after the other; a document an earlier collection holds
        is skipped, since it was listed there. One document beyond the page is looked for, so
        the last page carries no token.
        """
        taken: list[tuple[int, int, StoredDocument]] = []
        chunk = size + 1
        while index < len(read) and len(taken) <= size:
            stored = await self._store.get(
                read[index].chroma_name, limit=chunk, offset=offset, include_embeddings=include_embeddings
            )
            listed = await self._held_by(read[:index], [doc.id for doc in stored])
            taken += [(index, offset + i, doc) for i, doc in enumerate(stored) if doc.id not in listed]
            if len(stored) < chunk:
                index, offset = index + 1, 0
            else:
                offset += len(stored)
            # A long run of documents listed earlier is crossed in fewer, larger reads.
            chunk = min(chunk * 2, _MAX_PAGE_READ)
        after = (taken[size][0], taken[size][1]) if len(taken) > size else None
        return [doc for _, _, doc in taken[:size]], after

    async def _held_by(self, collections: Sequence[CollectionRecord], ids: list[str]) -> set[str]:
        """Those of `ids` that any of `collections` holds."""
        if not collections or not ids:
            return set()
        held = await asyncio.gather(
            *(self._store.get(record.chroma_name, ids, include_documents=False) for record in collections)
        )
        return {doc.id for docs in held for doc in docs}

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
        async with self._locks(record.base), self._base_lease(record.base, "deleting a collection") as lease:
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
            # Unregistered first (fenced): a collection that is gone from Chroma but still in the
            # registry would fail every read of the base; the reverse is only an unused name.
            await self._registry.remove_collection(name, fence=lease)
            await self._leases.confirm(lease)
            with contextlib.suppress(NotFoundError):
                await self._store.delete_collection(record.chroma_name)
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
        async with self._locks(base), self._base_lease(base, "adopting a collection") as lease:
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
            await self._registry.add_collection(record, fence=lease)
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
        async with self._locks(base), self._base_lease(base, "starting a migration") as lease:
            await self._refuse_second_migration(base)
            collections = await self._collections_of(base)
            source = _primary(collections)
            if source is None:
                raise NotFoundError("collection", base)
            target = await self._new_collection(base, probe, serving_reads=False, primary=False, lease=lease)
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
                source_model=source.model,
            )
            await self._register_or_drop(target, self._registry.begin_migration(record, target, fence=lease))
        EVENTS.info(
            "migration_started",
            f"migration {record.id} started: {source.name} -> {name} ({probe.model})",
            subject=record.id,
            migration=record.id,
            base=base,
            source_collection=source.name,
            target_collection=name,
            model=probe.model,
            total=record.total_documents,
        )
        # Usually this replica runs it; if another one's supervisor was quicker, that one does.
        await self._migrations.claim(record.id)
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
        """Resume every PENDING, BACKFILLING or VERIFYING migration whose lease is free (call once
        at start-up); with replicas, also watch for migrations whose owner stopped renewing."""
        active = await self._registry.active_migrations()
        for record in active:
            await self._migrations.claim(record.id)
        self._migrations.start_supervisor()
        return [_migration(record) for record in active]

    async def wait_for_migration(self, migration_id: str) -> Migration:
        """Wait until this process's task for the migration ends, then return its state."""
        await self._migrations.wait(migration_id)
        return await self.get_migration(migration_id)


def _document(stored: StoredDocument) -> Document:
    return Document(id=stored.id, text=stored.text, metadata=stored.metadata, embedding=stored.embedding)
