"""Background work of a model migration: backfill, verification and the read switch.

The facade creates the target collection and the migration record (dual writes start at that
moment); this runner then
1. BACKFILLING: pages through the source ids in sorted order after the stored cursor, reads
   the texts at batch time, re-embeds them with the target model and writes them to the target.
   One batch is prepared ahead through a bounded queue while the previous one is written.
   The cursor and progress are saved after every written batch, so a restart resumes where it
   stopped without re-embedding finished batches.
2. VERIFYING: compares the id sets of source and target under the base lock; equal -> the
   registry switches reads and writes to the target (COMPLETED). Otherwise ids missing from
   the target are re-embedded (and ids only in the target are dropped) and it verifies again,
   up to `verify_passes` times, then FAILED with a short error; reads stay on the source.

A backfill batch is written under the base lock after re-reading the source: documents deleted
since are skipped, and documents whose text changed are skipped too, because the upsert that
changed them wrote both collections (dual write) and is newer than the backfill's copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from embedding_service.config import MigrationConfig
from embedding_service.domain import MigrationState
from embedding_service.events import EVENTS
from embedding_service.locks import BaseLocks
from embedding_service.registry import CollectionRecord, MigrationRecord, SqliteRegistry
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


class MigrationRunner:
    """Runs migrations as background tasks, one per migration id."""

    def __init__(
        self,
        *,
        config: MigrationConfig,
        store: ChromaStore,
        registry: SqliteRegistry,
        vectors: VectorSource,
        locks: BaseLocks,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._config = config
        self._store = store
        self._registry = registry
        self._vectors = vectors
        self._locks = locks
        self._sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def spawn(self, migration_id: str) -> bool:
        """Start the migration's task unless it is running; True when a task was started."""
        running = self._tasks.get(migration_id)
        if running is not None and not running.done():
            return False
        task = asyncio.create_task(self._run(migration_id), name=f"migration-{migration_id}")
        self._tasks[migration_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(migration_id, None))
        return True

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
        """Cancel every running migration; the stored cursor lets them resume later."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # -- the task ---------------------------------------------------------------------------------

    async def _run(self, migration_id: str) -> None:
        try:
            record = await self._registry.migration(migration_id)
            if not record.state.active:
                return
            source = await self._registry.collection(record.source_collection)
            target = await self._registry.collection(record.target_collection)
            if source is None or target is None:
                await self._fail(migration_id, "a collection of the migration no longer exists")
                return
            if record.state in (MigrationState.PENDING, MigrationState.BACKFILLING):
                record = await self._registry.update_migration(migration_id, state=MigrationState.BACKFILLING)
                await self._backfill(record, source, target)
            await self._verify_and_switch(record, source, target)
        except asyncio.CancelledError:
            EVENTS.info(
                "migration_paused",
                f"migration {migration_id} paused; it resumes from its cursor",
                subject=migration_id,
                migration=migration_id,
            )
            raise
        except GatewayError as exc:
            await self._fail(migration_id, exc.message[:_MAX_ERROR_CHARS], type(exc).__name__)
        except Exception as exc:
            await self._fail(migration_id, "internal error during the migration", type(exc).__name__)

    async def _fail(self, migration_id: str, error: str, error_type: str = "") -> None:
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
            await self._registry.fail_migration(migration_id, error)
        except Exception as exc:  # the registry may be closing; the migration resumes on restart
            _log.error("could not record failure of migration %s: %s", migration_id, type(exc).__name__)

    async def _backfill(
        self, record: MigrationRecord, source: CollectionRecord, target: CollectionRecord
    ) -> None:
        ids = await self._store.all_ids(source.chroma_name)
        remaining = [doc_id for doc_id in ids if record.cursor is None or doc_id > record.cursor]
        migrated = record.migrated_documents
        total = migrated + len(remaining)
        await self._registry.update_migration(record.id, total_documents=total)
        self._progress(record, migrated, total)

        async def written(prepared: _Prepared) -> None:
            nonlocal migrated
            migrated += len(prepared.ids)
            await self._registry.update_migration(
                record.id, migrated_documents=migrated, cursor=prepared.ids[-1]
            )
            self._progress(record, migrated, total)

        await self._reembed(record, source, target, remaining, after_batch=written)

    async def _verify_and_switch(
        self, record: MigrationRecord, source: CollectionRecord, target: CollectionRecord
    ) -> None:
        await self._registry.update_migration(record.id, state=MigrationState.VERIFYING)
        for verification in range(1, self._config.verify_passes + 1):
            async with self._locks(record.base):
                source_ids = set(await self._store.all_ids(source.chroma_name))
                target_ids = set(await self._store.all_ids(target.chroma_name))
                if source_ids == target_ids:
                    await self._registry.complete_migration(record.id, len(source_ids))
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
                f"migration {record.id} verification {verification}: "
                f"{len(missing)} missing, {len(extra)} extra",
                subject=record.id,
                migration=record.id,
                verification=verification,
                missing=len(missing),
                extra=len(extra),
            )
            if extra:
                await self._drop_extras(record.base, source, target, extra)
            if missing:
                await self._reembed(record, source, target, missing, after_batch=None)
        await self._fail(
            record.id,
            f"target collection still differs from the source after {self._config.verify_passes} "
            "verification passes",
        )

    async def _drop_extras(
        self, base: str, source: CollectionRecord, target: CollectionRecord, extra: Sequence[str]
    ) -> None:
        async with self._locks(base):
            still_in_source = {
                doc.id for doc in await self._store.get(source.chroma_name, extra, include_documents=False)
            }
            stale = [doc_id for doc_id in extra if doc_id not in still_in_source]
            if stale:
                await self._store.delete(target.chroma_name, ids=stale)

    # -- re-embedding pipeline --------------------------------------------------------------------

    @staticmethod
    def _progress(record: MigrationRecord, done: int, total: int) -> None:
        """One line per batch written, rate-limited per migration (the summary keeps the count)."""
        EVENTS.info(
            "migration_progress",
            f"migration {record.id}: {done} of {total} documents re-embedded",
            subject=record.id,
            migration=record.id,
            base=record.base,
            done=done,
            total=total,
        )

    async def _reembed(
        self,
        record: MigrationRecord,
        source: CollectionRecord,
        target: CollectionRecord,
        ids: Sequence[str],
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
                await self._write(record.base, source, target, item)
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
            for start in range(0, len(ids), record.batch_size):
                chunk = list(ids[start : start + record.batch_size])
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
        self, base: str, source: CollectionRecord, target: CollectionRecord, prepared: _Prepared
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
                await self._store.upsert(
                    target.chroma_name,
                    [doc.id for doc, _ in keep],
                    [vector for _, vector in keep],
                    [doc.text for doc, _ in keep],
                    [doc.metadata for doc, _ in keep],
                )
