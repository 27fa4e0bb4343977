"""Background work of a model migration: backfill, verification and the read switch.

The facade creates the target collection and the migration record (dual writes start at that
moment); this runner then
1. BACKFILLING: pages through the source ids in sorted order after the stored cursor, reads
   the texts at batch time, re-embeds them with the target model and writes them to the target.
   One batch is prepared ahead through a bounded queue while the previous one is written.
   The cursor and progress are saved after every written batch, so a restart resumes where it
   stopped without re-embedding finished batches.
2. VERIFYING: compares source and target under the base lock, ids and content (text and
   metadata); equal -> the registry switches reads and writes to the target (COMPLETED).
   Otherwise ids missing from the target and documents whose copy differs are re-embedded from
   the source (and ids only in the target are dropped) and it verifies again, up to
   `verify_passes` times, then FAILED with a short error; reads stay on the source.

A backfill batch is written under the base lock after re-reading the source: documents deleted
since are skipped, and documents whose text changed are skipped too, because the upsert that
changed them wrote both collections (dual write) and is newer than the backfill's copy.

Replicas. The migration's work runs only while this process holds its job lease
(`migration:<id>`, `embedding_service.leases`): `claim()` takes it, its TTL is renewed while the
task runs, and the task is cancelled the moment the lease is lost. Every registry change of the
task is fenced by the lease and the lease is confirmed right before each write or delete in the
target, so a replica that was paused past the TTL takes no further step once it runs again. A
supervisor (shared registry only) looks for active migrations every TTL/2 and claims those whose
owner stopped renewing (killed, cut off): the new owner resumes from the stored cursor; the
same tick refreshes the replica's view of the registry. Other replicas write both collections
as soon as the registry names the target; a write that reached the source through a replica
that had not seen the migration yet is found by the verification (missing id, or a copy that
differs) and re-embedded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from embedding_service.batching import BatchSizer
from embedding_service.collection_registry import CollectionRecord, MigrationRecord, RegistryStore
from embedding_service.config import MigrationConfig
from embedding_service.domain import MigrationState
from embedding_service.events import EVENTS
from embedding_service.leases import Lease, LeaseLostError, Leases, LocalLeases
from embedding_service.locks import BaseLocks
from embedding_service.store import ChromaStore, StoredDocument
from embedding_service.vectors import EmbeddedBatch, VectorSource, embed_checked
from sekha_runtime.errors import DimensionMismatchError, GatewayError, UnavailableError

_log = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 200


@dataclass(frozen=True)
class _Prepared:
    """A batch read from the source and embedded, waiting to be written."""

    ids: list[str]
    documents: list[StoredDocument]
    batch: EmbeddedBatch | None


_DONE = object()

# Documents compared per read during verification.
_VERIFY_CHUNK = 256


def _fingerprint(document: StoredDocument) -> bytes:
    """What must be equal in source and target: the text (the vector follows from it) and metadata."""
    metadata = json.dumps(document.metadata, sort_keys=True, default=str)
    return hashlib.blake2b(f"{document.text}\x00{metadata}".encode(), digest_size=16).digest()


class MigrationRunner:
    """Runs migrations as background tasks, one per migration id."""

    def __init__(
        self,
        *,
        config: MigrationConfig,
        store: ChromaStore,
        registry: RegistryStore,
        vectors: VectorSource,
        locks: BaseLocks,
        leases: Leases | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        batches: BatchSizer | None = None,
        supervise_every_s: float = 5.0,
    ) -> None:
        self._config = config
        # Sizes each backfill call by the target model's speed; None: `batch_size` every time.
        self._batches = batches
        self._store = store
        self._registry = registry
        self._vectors = vectors
        self._locks = locks
        self._leases: Leases = leases or LocalLeases()
        self._sleep = sleep
        self._supervise_every_s = supervise_every_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._supervisor: asyncio.Task[None] | None = None

    async def claim(self, migration_id: str) -> bool:
        """Take the migration's job lease if it is free and start its task; True when started.

        False when the task runs here already, another holder has the lease, or the lease's home
        is unreachable (the supervisor tries again later)."""
        if self.running(migration_id):
            return False
        try:
            lease = await self._leases.try_acquire(f"migration:{migration_id}")
        except UnavailableError:
            return False
        if lease is None:
            return False
        if self.running(migration_id):  # claimed twice concurrently in this process
            await self._leases.release(lease)
            return False
        task = asyncio.create_task(self._run(migration_id, lease), name=f"migration-{migration_id}")

        def stop() -> None:
            if task is not asyncio.current_task() and not task.done():
                task.cancel()

        lease.on_lost.append(stop)
        self._tasks[migration_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(migration_id, None))
        return True

    def start_supervisor(self) -> None:
        """With a shared registry: claim, every `supervise_every_s`, active migrations nobody runs."""
        if not self._leases.shared or self._supervisor is not None:
            return
        self._supervisor = asyncio.create_task(self._supervise(), name="migration-supervisor")

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self._supervise_every_s)
            try:
                # The same tick keeps this replica's view of the registry fresh even when it
                # serves no request: the view is what it serves from during a Redis outage.
                await self._registry.collections()
                for record in await self._registry.active_migrations():
                    if await self.claim(record.id):
                        EVENTS.info(
                            "migration_taken_over",
                            f"migration {record.id}: taken over by this replica",
                            subject=record.id,
                            migration=record.id,
                        )
            except UnavailableError:
                continue  # the shared state is down; its outage is logged once by the connection
            except Exception as exc:
                _log.warning("migration supervisor: %s; trying again", type(exc).__name__)

    def running(self, migration_id: str) -> bool:
        """Whether the migration's task is alive in this process."""
        task = self._tasks.get(migration_id)
        return task is not None and not task.done()

    async def wait(self, migration_id: str) -> None:
        """Wait until the migration's task ends (for callers that need the outcome, e.g. tests)."""
        task = self._tasks.get(migration_id)
        if task is not None:
            await asyncio.shield(task)

    def reconfigure(self, config: MigrationConfig) -> None:
        """New settings (a config reload): running migrations use them from their next step on.

        Their tasks are left alone, so a backfill is neither interrupted nor started twice; its
        batch size is the one stored with the migration.
        """
        self._config = config

    async def aclose(self) -> None:
        """Cancel every running migration and release its lease; the stored cursor lets it resume
        later, here or on another replica."""
        supervisor, self._supervisor = self._supervisor, None
        tasks = list(self._tasks.values()) + ([supervisor] if supervisor is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # -- the task ---------------------------------------------------------------------------------

    async def _run(self, migration_id: str, lease: Lease) -> None:
        try:
            record = await self._registry.migration(migration_id)
            if not record.state.active:
                return
            source = await self._registry.collection(record.source_collection)
            target = await self._registry.collection(record.target_collection)
            if source is None or target is None:
                await self._fail(migration_id, "a collection of the migration no longer exists", lease)
                return
            if record.cursor is not None or record.state is MigrationState.VERIFYING:
                EVENTS.info(
                    "migration_resumed",
                    f"migration {migration_id}: resuming on this replica in {record.state.value} "
                    f"from its cursor ({record.migrated_documents} of {record.total_documents} done)",
                    subject=migration_id,
                    migration=migration_id,
                    state=record.state.value,
                    done=record.migrated_documents,
                    total=record.total_documents,
                )
            if record.state in (MigrationState.PENDING, MigrationState.BACKFILLING):
                record = await self._registry.update_migration(
                    migration_id, state=MigrationState.BACKFILLING, fence=lease
                )
                await self._backfill(record, source, target, lease)
            await self._verify_and_switch(record, source, target, lease)
        except asyncio.CancelledError:
            if lease.lost:
                _lease_lost(migration_id)
            else:
                EVENTS.info(
                    "migration_paused",
                    f"migration {migration_id} paused; it resumes from its cursor",
                    subject=migration_id,
                    migration=migration_id,
                    reason="stopped",
                )
            raise
        except LeaseLostError:
            _lease_lost(migration_id)
        except UnavailableError as exc:
            if exc.reason == "STATE_UNAVAILABLE":
                # The shared state is down, not the work: stop; the lease lapses and the migration
                # resumes from its cursor (here or elsewhere) once Redis is back.
                EVENTS.warning(
                    "migration_paused",
                    f"migration {migration_id}: paused, the shared state is unavailable",
                    subject=migration_id,
                    migration=migration_id,
                    reason="state_unavailable",
                )
            else:
                await self._fail(migration_id, exc.message[:_MAX_ERROR_CHARS], lease, type(exc).__name__)
        except GatewayError as exc:
            await self._fail(migration_id, exc.message[:_MAX_ERROR_CHARS], lease, type(exc).__name__)
        except Exception as exc:
            await self._fail(migration_id, "internal error during the migration", lease, type(exc).__name__)
        finally:
            await self._leases.release(lease)

    async def _fail(self, migration_id: str, error: str, lease: Lease, error_type: str = "") -> None:
        # `error` is what GetMigration shows the caller: written for them, no provider text.
        EVENTS.warning(
            "migration_failed",
            f"migration {migration_id} failed: {error}",
            subject=migration_id,
            migration=migration_id,
            error=error_type,
            reason=error,
        )
        try:
            await self._registry.fail_migration(migration_id, error, fence=lease)
        except LeaseLostError:
            _log.warning("migration %s: lost the lease; its failure is not recorded here", migration_id)
        except Exception as exc:  # the registry may be closing; the migration resumes on restart
            _log.error("could not record failure of migration %s: %s", migration_id, type(exc).__name__)

    async def _backfill(
        self, record: MigrationRecord, source: CollectionRecord, target: CollectionRecord, lease: Lease
    ) -> None:
        ids = await self._store.all_ids(source.chroma_name)
        remaining = [doc_id for doc_id in ids if record.cursor is None or doc_id > record.cursor]
        migrated = record.migrated_documents
        total = migrated + len(remaining)
        await self._registry.update_migration(record.id, total_documents=total, fence=lease)
        _progress(record, migrated, total)
        reported = migrated * 10 // max(total, 1)

        async def written(prepared: _Prepared) -> None:
            nonlocal migrated, reported
            migrated += len(prepared.ids)
            await self._registry.update_migration(
                record.id, migrated_documents=migrated, cursor=prepared.ids[-1], fence=lease
            )
            tenth = migrated * 10 // max(total, 1)
            if tenth > reported:  # one progress line per tenth, not one per batch
                reported = tenth
                _progress(record, migrated, total)

        await self._reembed(record, source, target, remaining, lease, after_batch=written)

    async def _verify_and_switch(
        self, record: MigrationRecord, source: CollectionRecord, target: CollectionRecord, lease: Lease
    ) -> None:
        await self._registry.update_migration(record.id, state=MigrationState.VERIFYING, fence=lease)
        for verification in range(1, self._config.verify_passes + 1):
            async with self._locks(record.base):
                source_ids = set(await self._store.all_ids(source.chroma_name))
                target_ids = set(await self._store.all_ids(target.chroma_name))
                differing = await self._differing(source, target, sorted(source_ids & target_ids))
                if source_ids == target_ids and not differing:
                    # The alias swap: refused by the registry unless this replica still holds the lease.
                    await self._registry.complete_migration(record.id, len(source_ids), fence=lease)
                    EVENTS.info(
                        "migration_finished",
                        f"migration {record.id} finished: reads switched to {target.name}",
                        subject=record.id,
                        migration=record.id,
                        base=record.base,
                        collection=target.name,
                        documents=len(source_ids),
                    )
                    return
            missing = sorted(source_ids - target_ids)
            extra = sorted(target_ids - source_ids)
            EVENTS.warning(
                "migration_verify_mismatch",
                f"migration {record.id} verification {verification}: {len(missing)} missing, "
                f"{len(extra)} extra, {len(differing)} differing",
                subject=record.id,
                migration=record.id,
                verification=verification,
                missing=len(missing),
                extra=len(extra),
                differing=len(differing),
            )
            if extra:
                await self._drop_extras(record.base, source, target, extra, lease)
            if missing or differing:
                repair = sorted({*missing, *differing})
                await self._reembed(record, source, target, repair, lease, after_batch=None)
        await self._fail(
            record.id,
            f"target collection still differs from the source after {self._config.verify_passes} "
            "verification passes",
            lease,
        )

    async def _differing(
        self, source: CollectionRecord, target: CollectionRecord, ids: Sequence[str]
    ) -> list[str]:
        """Ids whose text or metadata differ between source and target (a write that reached
        only the source, or a backfill copy that overtook a newer dual write on another replica)."""
        differing: list[str] = []
        for start in range(0, len(ids), _VERIFY_CHUNK):
            chunk = list(ids[start : start + _VERIFY_CHUNK])
            theirs, ours = await asyncio.gather(
                self._store.get(source.chroma_name, chunk), self._store.get(target.chroma_name, chunk)
            )
            copies = {doc.id: _fingerprint(doc) for doc in ours}
            for doc in theirs:
                fingerprint = _fingerprint(doc)
                if copies.get(doc.id, fingerprint) != fingerprint:
                    differing.append(doc.id)
        return differing

    async def _drop_extras(
        self,
        base: str,
        source: CollectionRecord,
        target: CollectionRecord,
        extra: Sequence[str],
        lease: Lease,
    ) -> None:
        async with self._locks(base):
            still_in_source = {
                doc.id for doc in await self._store.get(source.chroma_name, extra, include_documents=False)
            }
            stale = [doc_id for doc_id in extra if doc_id not in still_in_source]
            if stale:
                await self._leases.confirm(lease)
                await self._store.delete(target.chroma_name, ids=stale)

    # -- re-embedding pipeline --------------------------------------------------------------------

    async def _reembed(
        self,
        record: MigrationRecord,
        source: CollectionRecord,
        target: CollectionRecord,
        ids: Sequence[str],
        lease: Lease,
        after_batch: Callable[[_Prepared], Awaitable[None]] | None,
    ) -> None:
        if not ids:
            return
        # maxsize=1: one batch is embedded ahead of the one being written, never more.
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        producer = asyncio.create_task(self._prepare(record, source, ids, queue))
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, _Prepared)
                await self._write(record.base, source, target, item, lease)
                if after_batch is not None:
                    await after_batch(item)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def _prepare(
        self,
        record: MigrationRecord,
        source: CollectionRecord,
        ids: Sequence[str],
        queue: asyncio.Queue[object],
    ) -> None:
        try:
            start = 0
            while start < len(ids):
                size = record.batch_size
                if self._batches is not None:  # the migration's batch_size is the most a call carries
                    size = self._batches.size([record.target_model], record.batch_size)
                chunk = list(ids[start : start + size])
                start += len(chunk)
                documents = await self._store.get(source.chroma_name, chunk)
                batch = (
                    await self._embed([doc.text for doc in documents], record.target_model)
                    if documents
                    else None
                )
                await queue.put(_Prepared(chunk, documents, batch))
            await queue.put(_DONE)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await queue.put(exc)

    async def _embed(self, texts: list[str], model: str) -> EmbeddedBatch:
        attempts = self._config.retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await embed_checked(self._vectors, texts, model)
            except UnavailableError:
                if attempt == attempts:
                    raise
                await self._sleep(self._config.retry_backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def _write(
        self,
        base: str,
        source: CollectionRecord,
        target: CollectionRecord,
        prepared: _Prepared,
        lease: Lease,
    ) -> None:
        batch = prepared.batch
        if batch is None:
            return
        if batch.dimension != target.dimension:
            raise DimensionMismatchError(target.name, target.dimension, batch.dimension)
        async with self._locks(base):
            current = {
                doc.id: doc
                for doc in await self._store.get(source.chroma_name, [d.id for d in prepared.documents])
            }
            keep = [
                (current[doc.id], vector)
                for doc, vector in zip(prepared.documents, batch.vectors, strict=True)
                if doc.id in current and current[doc.id].text == doc.text
            ]
            if keep:
                # Chroma has no conditional write: the lease is confirmed at its home right before,
                # and its deadline checked once more on the thread that sends the write.
                await self._leases.confirm(lease)
                await self._store.upsert(
                    target.chroma_name,
                    [doc.id for doc, _ in keep],
                    [vector for _, vector in keep],
                    [doc.text for doc, _ in keep],
                    [doc.metadata for doc, _ in keep],
                    guard=lease.still_held,
                )


def _progress(record: MigrationRecord, done: int, total: int) -> None:
    EVENTS.info(
        "migration_progress",
        f"migration {record.id}: {done} of {total} documents re-embedded",
        subject=record.id,
        migration=record.id,
        base=record.base,
        done=done,
        total=total,
    )


def _lease_lost(migration_id: str) -> None:
    EVENTS.warning(
        "migration_lease_lost",
        f"migration {migration_id}: lost the lease; stopped before its next step, the replica "
        "holding the lease carries on from the stored cursor",
        subject=migration_id,
        migration=migration_id,
    )
