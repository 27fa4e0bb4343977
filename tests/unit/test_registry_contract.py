"""The registry contract (`RegistryStore`), run against both homes: SQLite and a real redis-server.

Every test in the first part runs twice, on `SqliteRegistry` and on `RedisRegistry` with its
`RedisLeases`; a change fenced by a lease that is no longer held must be refused by both. The
second part covers what only the shared home has: leases that expire and move to another
holder, and a Redis outage (reads from the last view, changes refused with UNAVAILABLE and a
retry delay, recovery by itself).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from embedding_service.collection_registry import (
    CollectionRecord,
    MigrationRecord,
    RegistryStore,
    SqliteRegistry,
)
from embedding_service.config import StateConfig
from embedding_service.domain import DistanceMetric, MigrationState
from embedding_service.leases import Lease, LeaseLostError, Leases, LocalLeases
from embedding_service.redis_state import RedisConnection, RedisLeases, RedisRegistry
from sekha_runtime.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    UnavailableError,
)
from testkit.redis_server import RedisServer, redis_server_or_skip

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = redis_server_or_skip()
    yield server
    server.close()


@dataclass
class Home:
    """One registry implementation with its leases, and how to make a lease lose its hold."""

    registry: RegistryStore
    leases: Leases
    steal: Callable[[Lease], Awaitable[None]]


def redis_config(server: RedisServer, **overrides: object) -> StateConfig:
    values: dict[str, object] = {
        "backend": "redis",
        "redis_url": server.url,
        "key_prefix": f"t{uuid.uuid4().hex[:10]}",
        "lease_ttl_s": 5.0,
        "lease_wait_s": 0.5,
        "reconnect_interval_s": 0.05,
    }
    return StateConfig.model_validate(values | overrides)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def home(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Home]:
    if request.param == "sqlite":
        registry = SqliteRegistry(tmp_path / "state.sqlite3", clock=lambda: NOW)
        leases = LocalLeases()

        async def steal(lease: Lease) -> None:
            lease.mark_lost()  # one process: a lease is lost only when its holder is told

        yield Home(registry, leases, steal)
        await registry.aclose()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    config = redis_config(server)
    connection = RedisConnection(config)
    redis_leases = RedisLeases(connection, holder="replica-a", ttl_s=5.0, wait_s=0.5)
    thief_connection = RedisConnection(config)
    thief = RedisLeases(thief_connection, holder="replica-b", ttl_s=5.0, wait_s=0.5)

    async def steal_redis(lease: Lease) -> None:
        # The holder was paused past its TTL: its key expired and another replica took the lease.
        # The holder itself has not noticed (its local deadline has not even passed).
        await connection.client.delete(connection.key(f"lease:{lease.name}"))
        assert await thief.try_acquire(lease.name) is not None

    redis_registry = RedisRegistry(connection, clock=lambda: NOW)
    await redis_registry.collections()  # the first replica on this prefix creates the registry
    yield Home(redis_registry, redis_leases, steal_redis)
    await thief.aclose()
    await redis_leases.aclose()
    await thief_connection.aclose()
    await redis_registry.aclose()


def collection(
    name: str, base: str = "kb", *, primary: bool = True, dimension: int = 384
) -> CollectionRecord:
    return CollectionRecord(
        name=name,
        base=base,
        chroma_name=name,
        dimension=dimension,
        model=f"vec/m-{dimension}",
        distance_metric=DistanceMetric.COSINE,
        created_at=NOW,
        serving_reads=primary,
        receiving_writes=True,
        primary=primary,
    )


def migration(migration_id: str, base: str = "kb", created: datetime = NOW) -> MigrationRecord:
    return MigrationRecord(
        id=migration_id,
        base=base,
        source_collection=f"{base}_384",
        target_collection=f"{base}_768",
        target_model="vec/m-768",
        source_model="vec/m-384",
        state=MigrationState.PENDING,
        total_documents=10,
        migrated_documents=0,
        cursor=None,
        batch_size=5,
        created_at=created,
        updated_at=created,
    )


def target(base: str = "kb") -> CollectionRecord:
    return replace(collection(f"{base}_768", base, primary=False, dimension=768), serving_reads=False)


# -- the contract, on both homes ------------------------------------------------------------------


async def test_collections_are_registered_listed_and_unique(home: Home) -> None:
    registry = home.registry
    await registry.add_collection(collection("kb_384"))
    adopted = replace(collection("kb_768", primary=False, dimension=768), chroma_name="legacy_docs")
    await registry.add_collection(adopted)
    await registry.add_collection(collection("other_384", base="other"))

    assert [c.name for c in await registry.collections("kb")] == ["kb_384", "kb_768"]
    assert [c.name for c in await registry.collections()] == ["kb_384", "kb_768", "other_384"]
    assert await registry.collection("kb_768") == adopted
    assert await registry.collection("nope") is None
    assert await registry.name_taken("legacy_docs") and await registry.name_taken("kb_384")
    assert not await registry.name_taken("kb_1536")

    with pytest.raises(AlreadyExistsError):
        await registry.add_collection(collection("kb_384", primary=False))
    with pytest.raises(AlreadyExistsError):  # the Chroma name is taken by the adopted collection
        await registry.add_collection(
            replace(collection("kb_1536", primary=False), chroma_name="legacy_docs")
        )
    with pytest.raises(AlreadyExistsError):  # one primary per base
        await registry.add_collection(collection("kb_1536", dimension=1536))

    await registry.remove_collection("kb_768")
    assert not await registry.name_taken("legacy_docs")
    assert [c.name for c in await registry.collections("kb")] == ["kb_384"]


async def test_a_migration_begins_progresses_and_switches_reads_atomically(home: Home) -> None:
    registry = home.registry
    await registry.add_collection(collection("kb_384"))
    started = await registry.begin_migration(migration("m1"), target())
    assert started.state is MigrationState.PENDING
    assert (await registry.collection("kb_768")) == target()
    with pytest.raises(AlreadyExistsError) as second:
        await registry.begin_migration(
            migration("m2"), replace(target(), name="kb_1536", chroma_name="kb_1536")
        )
    assert second.value.resource_name == "m1"
    assert [m.id for m in await registry.active_migrations("kb")] == ["m1"]
    assert await registry.active_migrations("other") == []

    moved = await registry.update_migration("m1", state=MigrationState.BACKFILLING, total_documents=12)
    moved = await registry.update_migration("m1", migrated_documents=5, cursor="d04")
    assert (moved.state, moved.total_documents, moved.migrated_documents, moved.cursor) == (
        MigrationState.BACKFILLING,
        12,
        5,
        "d04",
    )
    kept = await registry.update_migration("m1", migrated_documents=6)
    assert kept.cursor == "d04"  # None means unchanged
    assert (await registry.migration("m1")) == kept

    done = await registry.complete_migration("m1", 12)
    assert (done.state, done.total_documents, done.migrated_documents) == (MigrationState.COMPLETED, 12, 12)
    by_name = {c.name: c for c in await registry.collections("kb")}
    assert (
        by_name["kb_768"].primary,
        by_name["kb_768"].serving_reads,
        by_name["kb_768"].receiving_writes,
    ) == (
        True,
        True,
        True,
    )
    assert (
        by_name["kb_384"].primary,
        by_name["kb_384"].serving_reads,
        by_name["kb_384"].receiving_writes,
    ) == (
        False,
        False,
        False,
    )
    assert await registry.active_migrations() == []
    with pytest.raises(FailedPreconditionError):  # an ended migration switches nothing twice
        await registry.complete_migration("m1", 12)
    with pytest.raises(NotFoundError):
        await registry.migration("nope")
    with pytest.raises(NotFoundError):
        await registry.update_migration("nope", migrated_documents=1)


async def test_a_failed_migration_stops_dual_writes_and_a_new_one_may_start(home: Home) -> None:
    registry = home.registry
    await registry.add_collection(collection("kb_384"))
    await registry.begin_migration(migration("m1"), target())
    failed = await registry.fail_migration("m1", "embedding source unavailable")
    assert (failed.state, failed.error) == (MigrationState.FAILED, "embedding source unavailable")
    stopped = await registry.collection("kb_768")
    assert stopped is not None and not stopped.receiving_writes and not stopped.serving_reads
    assert (await registry.collection("kb_384")) == collection("kb_384")
    with pytest.raises(FailedPreconditionError):
        await registry.fail_migration("m1", "again")

    later = NOW + timedelta(seconds=1)
    retry = replace(migration("m2", created=later), target_collection="kb_768_v2")
    await registry.begin_migration(retry, replace(target(), name="kb_768_v2", chroma_name="kb_768_v2"))
    assert [m.id for m in await registry.active_migrations()] == ["m2"]
    history = await registry.migrations("kb")
    assert [(m.id, m.state, m.source_model) for m in history] == [
        ("m1", MigrationState.FAILED, "vec/m-384"),
        ("m2", MigrationState.PENDING, "vec/m-384"),
    ]
    assert await registry.migrations("other") == []


async def test_a_change_fenced_by_a_lease_no_longer_held_is_refused_and_changes_nothing(home: Home) -> None:
    registry, leases = home.registry, home.leases
    await registry.add_collection(collection("kb_384"))
    async with leases.hold("base:kb", "starting a migration") as base_lease:
        await registry.begin_migration(migration("m1"), target(), fence=base_lease)
    job = await leases.try_acquire("migration:m1")
    assert job is not None
    await registry.update_migration("m1", migrated_documents=5, cursor="d04", fence=job)

    await home.steal(job)

    with pytest.raises(LeaseLostError):
        await registry.update_migration("m1", migrated_documents=0, cursor="d00", fence=job)
    with pytest.raises(LeaseLostError):
        await registry.complete_migration("m1", 10, fence=job)
    with pytest.raises(LeaseLostError):
        await registry.fail_migration("m1", "stale owner", fence=job)
    with pytest.raises(LeaseLostError):
        await leases.confirm(job)
    assert job.lost
    unchanged = await registry.migration("m1")
    assert (unchanged.state, unchanged.cursor, unchanged.migrated_documents) == (
        MigrationState.PENDING,
        "d04",
        5,
    )
    assert [c.name for c in await registry.collections("kb") if c.serving_reads] == ["kb_384"]
    await leases.release(job)


# -- what only the shared home has ----------------------------------------------------------------


@pytest.fixture
async def shared(
    redis_server: RedisServer,
) -> AsyncIterator[Callable[..., tuple[RedisRegistry, RedisLeases]]]:
    opened: list[tuple[RedisConnection, RedisRegistry, RedisLeases]] = []
    config = redis_config(redis_server)

    def replica(holder: str, ttl_s: float = 5.0, **overrides: object) -> tuple[RedisRegistry, RedisLeases]:
        connection = RedisConnection(config.model_copy(update=overrides))
        registry = RedisRegistry(connection, clock=lambda: NOW)
        leases = RedisLeases(connection, holder=holder, ttl_s=ttl_s, wait_s=0.3)
        opened.append((connection, registry, leases))
        return registry, leases

    yield replica
    for _, registry, leases in opened:
        await leases.aclose()
        await registry.aclose()


@pytest.mark.redis
async def test_an_expired_lease_moves_to_another_replica_with_a_larger_token(
    shared: Callable[..., tuple[RedisRegistry, RedisLeases]], caplog: pytest.LogCaptureFixture
) -> None:
    registry_a, leases_a = shared("replica-a", ttl_s=0.3)
    registry_b, leases_b = shared("replica-b", ttl_s=0.3)
    await registry_a.add_collection(collection("kb_384"))
    first = await leases_a.try_acquire("migration:m1")
    assert first is not None
    assert await leases_b.try_acquire("migration:m1") is None  # held and renewed by A

    lost = asyncio.Event()
    first.on_lost.append(lost.set)
    # A stops renewing without releasing (as if its process froze): its renewal task is stopped.
    leases_a._renewals.pop(first.value).cancel()
    second = None
    async with asyncio.timeout(10):  # a hang guard; the key expires after the TTL
        while second is None:
            second = await leases_b.try_acquire("migration:m1")
            await asyncio.sleep(0.05)
    assert second.token > first.token
    with (
        caplog.at_level(logging.WARNING, logger="embedding_service.redis_state"),
        pytest.raises(LeaseLostError),
    ):
        await leases_a.confirm(first)
    assert lost.is_set()
    assert any("lost the lease migration:m1" in r.getMessage() for r in caplog.records)
    await registry_b.add_collection(collection("kb_768", primary=False, dimension=768), fence=second)
    with pytest.raises(LeaseLostError):
        await registry_a.remove_collection("kb_768", fence=first)
    assert await registry_a.name_taken("kb_768")


@pytest.mark.redis
async def test_a_busy_lease_makes_the_waiter_unavailable_with_a_retry_delay(
    shared: Callable[..., tuple[RedisRegistry, RedisLeases]],
) -> None:
    _, leases_a = shared("replica-a")
    registry_b, leases_b = shared("replica-b")
    await registry_b.collections()
    async with leases_a.hold("base:kb", "creating a collection"):
        with pytest.raises(UnavailableError) as busy:
            async with leases_b.hold("base:kb", "creating a collection"):
                pytest.fail("two holders of one lease")
    assert busy.value.reason == "LEASE_BUSY" and busy.value.retry_after_s
    async with leases_b.hold("base:kb", "creating a collection") as lease:  # released by A: free
        assert lease.valid()


@pytest.mark.redis
async def test_redis_outage_serves_the_last_view_refuses_changes_then_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_or_skip(persistent=True)
    try:
        connection = RedisConnection(redis_config(server))
        registry = RedisRegistry(connection, clock=lambda: NOW)
        leases = RedisLeases(connection, holder="replica-a", ttl_s=5.0, wait_s=0.3)
        await registry.add_collection(collection("kb_384"))
        await registry.begin_migration(migration("m1"), target())
        assert [c.name for c in await registry.collections("kb")] == ["kb_384", "kb_768"]
        assert [m.id for m in await registry.active_migrations("kb")] == ["m1"]

        server.stop()
        with caplog.at_level(logging.WARNING, logger="embedding_service.redis_state"):
            # Reads keep working from this replica's last view ...
            assert [c.name for c in await registry.collections("kb")] == ["kb_384", "kb_768"]
            assert [m.id for m in await registry.active_migrations("kb")] == ["m1"]
            assert (await registry.migration("m1")).id == "m1"
            # ... what changes the registry or needs a lease is refused, with a retry delay.
            with pytest.raises(UnavailableError) as refused:
                await registry.add_collection(collection("kb_1536", primary=False, dimension=1536))
            assert refused.value.reason == "STATE_UNAVAILABLE" and refused.value.retry_after_s
            with pytest.raises(UnavailableError) as no_lease:
                async with leases.hold("base:kb", "creating a collection"):
                    pytest.fail("a lease without redis")
            assert no_lease.value.reason == "STATE_UNAVAILABLE"
        assert sum("redis unreachable" in r.getMessage() for r in caplog.records) == 1

        server.start()  # with its append-only file: the registry is back
        async with asyncio.timeout(10):  # the reconnect task pings every 50 ms
            while not connection.healthy:
                await asyncio.sleep(0.02)
        await registry.add_collection(collection("kb_1536", primary=False, dimension=1536))
        async with leases.hold("base:kb", "creating a collection") as lease:
            assert lease.valid()

        # Redis losing its data is not a fresh start: the last view serves, changes are refused.
        await connection.client.flushall()
        with caplog.at_level(logging.ERROR, logger="embedding_service.redis_state"):
            assert [c.name for c in await registry.collections("kb")] == ["kb_1536", "kb_384", "kb_768"]
            with pytest.raises(UnavailableError):
                await registry.remove_collection("kb_1536")
        assert any("registry in redis is gone" in r.getMessage() for r in caplog.records)
        await leases.aclose()
        await registry.aclose()
    finally:
        server.close()


async def test_a_state_file_from_before_source_model_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:  # the migrations table as the previous release wrote it
        db.executescript(
            """
            CREATE TABLE migrations (
                id TEXT PRIMARY KEY, base TEXT NOT NULL, source_collection TEXT NOT NULL,
                target_collection TEXT NOT NULL, target_model TEXT NOT NULL, state TEXT NOT NULL,
                total_documents INTEGER NOT NULL, migrated_documents INTEGER NOT NULL, cursor TEXT,
                batch_size INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
                error TEXT NOT NULL DEFAULT ''
            );
            INSERT INTO migrations VALUES ('old', 'kb', 'kb_384', 'kb_768', 'vec/m-768', 'COMPLETED',
                3, 3, 'd2', 5, '2024-01-01T00:00:00+00:00', '2024-01-01T00:00:00+00:00', '');
            """
        )
    registry = SqliteRegistry(path, clock=lambda: NOW)
    try:
        (old,) = await registry.migrations("kb")
        assert (old.id, old.state, old.source_model, old.cursor) == (
            "old",
            MigrationState.COMPLETED,
            "",
            "d2",
        )
        await registry.add_collection(collection("kb_384"))
        await registry.begin_migration(migration("new"), target())
        assert (await registry.migration("new")).source_model == "vec/m-384"
    finally:
        await registry.aclose()
