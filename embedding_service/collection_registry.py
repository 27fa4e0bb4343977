"""The service's own alias and migration registry: the `RegistryStore` contract and its SQLite home.

Chroma has no aliases, so this registry says, per base, which collections serve reads, which
receive writes (two during a migration) and which one is the primary (the one GetDocuments and
migrations start from), plus the logical name -> Chroma name alias of adopted collections. It
also keeps migrations with their resumable cursor.

Two implementations keep the same contract (tests/unit/test_registry_contract.py runs both):
`SqliteRegistry` here, for one process (the default), and
`embedding_service.redis_state.RedisRegistry`, shared by replicas. Changes that must not come
from a holder whose lease expired take `fence=` (the lease): the registry refuses them with
LeaseLostError when the lease is no longer held, in the same atomic step as the change.

SQLite: one connection, used from one worker thread (WAL mode), so the event loop never waits
on the disk.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from embedding_service.domain import DistanceMetric, MigrationState
from embedding_service.leases import Lease
from sekha_runtime.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError

T = TypeVar("T")

_ACTIVE_STATES = tuple(s.value for s in MigrationState if s.active)
_ACTIVE_MARKS = ",".join("?" * len(_ACTIVE_STATES))

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    base TEXT NOT NULL,
    chroma_name TEXT NOT NULL UNIQUE,
    dimension INTEGER NOT NULL,
    model TEXT NOT NULL,
    distance_metric TEXT NOT NULL,
    created_at TEXT NOT NULL,
    serving_reads INTEGER NOT NULL,
    receiving_writes INTEGER NOT NULL,
    is_primary INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS collections_by_base ON collections (base);
CREATE UNIQUE INDEX IF NOT EXISTS one_primary_per_base ON collections (base) WHERE is_primary = 1;
CREATE TABLE IF NOT EXISTS migrations (
    id TEXT PRIMARY KEY,
    base TEXT NOT NULL,
    source_collection TEXT NOT NULL,
    target_collection TEXT NOT NULL,
    target_model TEXT NOT NULL,
    state TEXT NOT NULL,
    total_documents INTEGER NOT NULL,
    migrated_documents INTEGER NOT NULL,
    cursor TEXT,
    batch_size INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    source_model TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_migration_per_base ON migrations (base)
    WHERE state IN {_ACTIVE_STATES!r};
"""


@dataclass(frozen=True)
class CollectionRecord:
    """A dimension collection of a base; `chroma_name` differs from `name` only for adopted ones."""

    name: str
    base: str
    chroma_name: str
    dimension: int
    model: str
    distance_metric: DistanceMetric
    created_at: datetime
    serving_reads: bool
    receiving_writes: bool
    primary: bool


@dataclass(frozen=True)
class MigrationRecord:
    """A migration with its backfill cursor (the last source id re-embedded, ids in sorted order)."""

    id: str
    base: str
    source_collection: str
    target_collection: str
    target_model: str
    state: MigrationState
    total_documents: int
    migrated_documents: int
    cursor: str | None
    batch_size: int
    created_at: datetime
    updated_at: datetime
    error: str = ""
    # The model the base wrote with before (a write naming it later goes to the current model).
    source_model: str = ""


def not_active(record: MigrationRecord) -> FailedPreconditionError:
    """The refusal of a phase change for a migration that already ended."""
    return FailedPreconditionError(
        f"migration {record.id} is {record.state.value}, not in progress", record.id, "MIGRATION_ENDED"
    )


class RegistryStore(Protocol):
    """Collections, aliases and migrations of every base; see the module docstring."""

    @property
    def shared(self) -> bool:
        """Whether other processes change this registry too (replicas)."""
        ...

    async def collections(self, base: str | None = None) -> list[CollectionRecord]:
        """Registered collections ordered by name, of one base or of all."""
        ...

    async def collection(self, name: str) -> CollectionRecord | None:
        """The collection registered as `name`."""
        ...

    async def name_taken(self, name: str) -> bool:
        """Whether `name` is used as a logical or a Chroma name."""
        ...

    async def add_collection(self, record: CollectionRecord, fence: Lease | None = None) -> CollectionRecord:
        """Register a collection; AlreadyExistsError when a name is taken or the base has a primary."""
        ...

    async def remove_collection(self, name: str, fence: Lease | None = None) -> None:
        """Forget a collection."""
        ...

    async def begin_migration(
        self, migration: MigrationRecord, target: CollectionRecord, fence: Lease | None = None
    ) -> MigrationRecord:
        """Register the target and the migration atomically; AlreadyExistsError when one is active."""
        ...

    async def migration(self, migration_id: str) -> MigrationRecord:
        """The migration `migration_id`; NotFoundError when unknown."""
        ...

    async def migrations(self, base: str) -> list[MigrationRecord]:
        """Every migration of `base`, ended ones included, oldest first."""
        ...

    async def active_migrations(self, base: str | None = None) -> list[MigrationRecord]:
        """Migrations in PENDING, BACKFILLING or VERIFYING, oldest first."""
        ...

    async def update_migration(
        self,
        migration_id: str,
        *,
        state: MigrationState | None = None,
        total_documents: int | None = None,
        migrated_documents: int | None = None,
        cursor: str | None = None,
        fence: Lease | None = None,
    ) -> MigrationRecord:
        """Record progress or a phase change of a migration."""
        ...

    async def complete_migration(
        self, migration_id: str, document_count: int, fence: Lease | None = None
    ) -> MigrationRecord:
        """Switch reads and writes of the base to the target (the alias swap), atomically."""
        ...

    async def fail_migration(
        self, migration_id: str, error: str, fence: Lease | None = None
    ) -> MigrationRecord:
        """Mark FAILED and stop dual writes to the target; reads stay on the source."""
        ...

    async def aclose(self) -> None:
        """Release the connection."""
        ...


def _collection(row: sqlite3.Row) -> CollectionRecord:
    return CollectionRecord(
        name=row["name"],
        base=row["base"],
        chroma_name=row["chroma_name"],
        dimension=row["dimension"],
        model=row["model"],
        distance_metric=DistanceMetric(row["distance_metric"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        serving_reads=bool(row["serving_reads"]),
        receiving_writes=bool(row["receiving_writes"]),
        primary=bool(row["is_primary"]),
    )


def _migration(row: sqlite3.Row) -> MigrationRecord:
    return MigrationRecord(
        id=row["id"],
        base=row["base"],
        source_collection=row["source_collection"],
        target_collection=row["target_collection"],
        target_model=row["target_model"],
        state=MigrationState(row["state"]),
        total_documents=row["total_documents"],
        migrated_documents=row["migrated_documents"],
        cursor=row["cursor"],
        batch_size=row["batch_size"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        error=row["error"],
        source_model=row["source_model"],
    )


def _fenced(fence: Lease | None) -> None:
    # In one process a lease is lost only when its holder says so; checked inside the transaction.
    if fence is not None:
        fence.check()


class SqliteRegistry:
    """Async registry over one SQLite file; every query runs on the registry's own thread."""

    def __init__(self, path: Path | str, clock: Callable[[], datetime] | None = None) -> None:
        self._path = Path(path)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            if str(self._path) != ":memory:":
                self._path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=5000")
            connection.executescript(_SCHEMA)
            columns = {row["name"] for row in connection.execute("PRAGMA table_info(migrations)")}
            if "source_model" not in columns:  # a state file written before the column existed
                connection.execute("ALTER TABLE migrations ADD COLUMN source_model TEXT NOT NULL DEFAULT ''")
            self._connection = connection
        return self._connection

    async def _run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("registry is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: call(self._db()))

    def _now(self) -> str:
        return self._clock().isoformat()

    @property
    def shared(self) -> bool:
        return False

    @staticmethod
    def _transaction(db: sqlite3.Connection, work: Callable[[], T]) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def aclose(self) -> None:
        """Close the connection after pending queries."""
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, close)
        await loop.run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))

    # -- collections ------------------------------------------------------------------------------

    async def collections(self, base: str | None = None) -> list[CollectionRecord]:
        """Registered collections ordered by name, of one base or of all."""

        def query(db: sqlite3.Connection) -> list[CollectionRecord]:
            if base is None:
                rows = db.execute("SELECT * FROM collections ORDER BY name").fetchall()
            else:
                rows = db.execute(
                    "SELECT * FROM collections WHERE base = ? ORDER BY name", (base,)
                ).fetchall()
            return [_collection(row) for row in rows]

        return await self._run(query)

    async def collection(self, name: str) -> CollectionRecord | None:
        """The collection registered as `name`."""

        def query(db: sqlite3.Connection) -> CollectionRecord | None:
            row = db.execute("SELECT * FROM collections WHERE name = ?", (name,)).fetchone()
            return _collection(row) if row else None

        return await self._run(query)

    async def name_taken(self, name: str) -> bool:
        """Whether `name` is used as a logical or a Chroma name."""

        def query(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM collections WHERE name = ? OR chroma_name = ?", (name, name)
            ).fetchone()
            return row is not None

        return await self._run(query)

    async def add_collection(self, record: CollectionRecord, fence: Lease | None = None) -> CollectionRecord:
        """Register a collection; AlreadyExistsError when the name or Chroma name is taken."""

        def work(db: sqlite3.Connection) -> None:
            _fenced(fence)
            self._insert_collection(db, record)

        await self._run(lambda db: self._transaction(db, lambda: work(db)))
        return record

    @staticmethod
    def _insert_collection(db: sqlite3.Connection, record: CollectionRecord) -> None:
        try:
            db.execute(
                "INSERT INTO collections (name, base, chroma_name, dimension, model, distance_metric, "
                "created_at, serving_reads, receiving_writes, is_primary) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    record.name,
                    record.base,
                    record.chroma_name,
                    record.dimension,
                    record.model,
                    record.distance_metric.value,
                    record.created_at.isoformat(),
                    int(record.serving_reads),
                    int(record.receiving_writes),
                    int(record.primary),
                ),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(
                f"collection {record.name!r} already exists", "collection", record.name
            ) from None

    async def remove_collection(self, name: str, fence: Lease | None = None) -> None:
        """Forget a collection."""

        def work(db: sqlite3.Connection) -> None:
            _fenced(fence)
            db.execute("DELETE FROM collections WHERE name = ?", (name,))

        await self._run(lambda db: self._transaction(db, lambda: work(db)))

    # -- migrations -------------------------------------------------------------------------------

    async def begin_migration(
        self, migration: MigrationRecord, target: CollectionRecord, fence: Lease | None = None
    ) -> MigrationRecord:
        """Register the target (receiving writes, not serving reads) and the migration, atomically.

        AlreadyExistsError when the base already has an active migration.
        """

        def work(db: sqlite3.Connection) -> None:
            _fenced(fence)
            active = db.execute(
                f"SELECT id FROM migrations WHERE base = ? AND state IN ({_ACTIVE_MARKS})",
                (migration.base, *_ACTIVE_STATES),
            ).fetchone()
            if active is not None:
                raise AlreadyExistsError(
                    f"base {migration.base!r} already has a migration in progress", "migration", active["id"]
                )
            self._insert_collection(db, target)
            db.execute(
                "INSERT INTO migrations (id, base, source_collection, target_collection, target_model, "
                "state, total_documents, migrated_documents, cursor, batch_size, created_at, updated_at, "
                "error, source_model) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    migration.id,
                    migration.base,
                    migration.source_collection,
                    migration.target_collection,
                    migration.target_model,
                    migration.state.value,
                    migration.total_documents,
                    migration.migrated_documents,
                    migration.cursor,
                    migration.batch_size,
                    migration.created_at.isoformat(),
                    migration.updated_at.isoformat(),
                    migration.error,
                    migration.source_model,
                ),
            )

        await self._run(lambda db: self._transaction(db, lambda: work(db)))
        return migration

    async def migration(self, migration_id: str) -> MigrationRecord:
        """The migration `migration_id`; NotFoundError when unknown."""

        def query(db: sqlite3.Connection) -> MigrationRecord | None:
            row = db.execute("SELECT * FROM migrations WHERE id = ?", (migration_id,)).fetchone()
            return _migration(row) if row else None

        found = await self._run(query)
        if found is None:
            raise NotFoundError("migration", migration_id)
        return found

    async def migrations(self, base: str) -> list[MigrationRecord]:
        """Every migration of `base`, ended ones included, oldest first."""

        def query(db: sqlite3.Connection) -> list[MigrationRecord]:
            rows = db.execute(
                "SELECT * FROM migrations WHERE base = ? ORDER BY created_at, id", (base,)
            ).fetchall()
            return [_migration(row) for row in rows]

        return await self._run(query)

    async def active_migrations(self, base: str | None = None) -> list[MigrationRecord]:
        """Migrations in PENDING, BACKFILLING or VERIFYING, oldest first."""

        def query(db: sqlite3.Connection) -> list[MigrationRecord]:
            marks = _ACTIVE_MARKS
            if base is None:
                rows = db.execute(
                    f"SELECT * FROM migrations WHERE state IN ({marks}) ORDER BY created_at, id",
                    _ACTIVE_STATES,
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT * FROM migrations WHERE base = ? AND state IN ({marks}) ORDER BY created_at, id",
                    (base, *_ACTIVE_STATES),
                ).fetchall()
            return [_migration(row) for row in rows]

        return await self._run(query)

    async def update_migration(
        self,
        migration_id: str,
        *,
        state: MigrationState | None = None,
        total_documents: int | None = None,
        migrated_documents: int | None = None,
        cursor: str | None = None,
        fence: Lease | None = None,
    ) -> MigrationRecord:
        """Record progress or a phase change of an active migration."""

        def work(db: sqlite3.Connection) -> MigrationRecord:
            _fenced(fence)
            row = db.execute("SELECT * FROM migrations WHERE id = ?", (migration_id,)).fetchone()
            if row is None:
                raise NotFoundError("migration", migration_id)
            current = _migration(row)
            updated = replace(
                current,
                state=state or current.state,
                total_documents=current.total_documents if total_documents is None else total_documents,
                migrated_documents=(
                    current.migrated_documents if migrated_documents is None else migrated_documents
                ),
                cursor=current.cursor if cursor is None else cursor,
                updated_at=datetime.fromisoformat(self._now()),
            )
            db.execute(
                "UPDATE migrations SET state = ?, total_documents = ?, migrated_documents = ?, cursor = ?, "
                "updated_at = ? WHERE id = ?",
                (
                    updated.state.value,
                    updated.total_documents,
                    updated.migrated_documents,
                    updated.cursor,
                    updated.updated_at.isoformat(),
                    migration_id,
                ),
            )
            return updated

        return await self._run(lambda db: self._transaction(db, lambda: work(db)))

    async def complete_migration(
        self, migration_id: str, document_count: int, fence: Lease | None = None
    ) -> MigrationRecord:
        """Switch reads and writes of the base to the target, atomically; the source is kept idle."""

        def work(db: sqlite3.Connection) -> MigrationRecord:
            _fenced(fence)
            current = self._migration_sync(db, migration_id)
            if not current.state.active:
                raise not_active(current)
            source = db.execute(
                "SELECT is_primary FROM collections WHERE name = ?", (current.source_collection,)
            ).fetchone()
            was_primary = bool(source and source["is_primary"])
            db.execute(
                "UPDATE collections SET serving_reads = 0, receiving_writes = 0, is_primary = 0 "
                "WHERE name = ?",
                (current.source_collection,),
            )
            db.execute(
                "UPDATE collections SET serving_reads = 1, receiving_writes = 1, is_primary = ? "
                "WHERE name = ?",
                (int(was_primary), current.target_collection),
            )
            now = self._now()
            db.execute(
                "UPDATE migrations SET state = ?, total_documents = ?, migrated_documents = ?, "
                "updated_at = ?, error = '' WHERE id = ?",
                (MigrationState.COMPLETED.value, document_count, document_count, now, migration_id),
            )
            return self._migration_sync(db, migration_id)

        return await self._run(lambda db: self._transaction(db, lambda: work(db)))

    async def fail_migration(
        self, migration_id: str, error: str, fence: Lease | None = None
    ) -> MigrationRecord:
        """Mark FAILED and stop dual writes to the target; reads stay on the source."""

        def work(db: sqlite3.Connection) -> MigrationRecord:
            _fenced(fence)
            current = self._migration_sync(db, migration_id)
            if not current.state.active:
                raise not_active(current)
            db.execute(
                "UPDATE collections SET receiving_writes = 0, serving_reads = 0 WHERE name = ?",
                (current.target_collection,),
            )
            db.execute(
                "UPDATE migrations SET state = ?, updated_at = ?, error = ? WHERE id = ?",
                (MigrationState.FAILED.value, self._now(), error, migration_id),
            )
            return self._migration_sync(db, migration_id)

        return await self._run(lambda db: self._transaction(db, lambda: work(db)))

    @staticmethod
    def _migration_sync(db: sqlite3.Connection, migration_id: str) -> MigrationRecord:
        row = db.execute("SELECT * FROM migrations WHERE id = ?", (migration_id,)).fetchone()
        if row is None:
            raise NotFoundError("migration", migration_id)
        return _migration(row)
