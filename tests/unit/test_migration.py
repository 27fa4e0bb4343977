"""Zero-downtime migrations against real embedded Chroma and a real SQLite registry.

The fake VectorSource holds backfill calls at chosen points so writes, deletes and searches can
run while a backfill is half done, and so a service can be closed mid-backfill and resumed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from embedding_service.config import ChromaConfig, EmbeddingConfig, MigrationConfig
from embedding_service.domain import CollectionInUseError, DocumentIn, MigrationState
from embedding_service.service import EmbeddingStoreService
from embedding_service.store import ChromaStore
from sekha_runtime.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from testkit.vectors import FakeVectorSource

SMALL = "fake/mini-384"
LARGE = "fake/large-1536"
BASE = "notes"


def make_config(tmp_path: Path, batch_size: int = 5) -> EmbeddingConfig:
    return EmbeddingConfig(
        chroma=ChromaConfig(path=tmp_path / "chroma"),
        state_path=tmp_path / "state.sqlite3",
        migration=MigrationConfig(batch_size=batch_size, retry_attempts=2, retry_backoff_s=0),
    )


OpenService = Callable[..., EmbeddingStoreService]


@pytest.fixture
async def open_service(tmp_path: Path) -> AsyncIterator[OpenService]:
    opened: list[EmbeddingStoreService] = []

    def factory(vectors: FakeVectorSource) -> EmbeddingStoreService:
        service = EmbeddingStoreService.open(make_config(tmp_path), vectors)
        opened.append(service)
        return service

    yield factory
    for service in opened:
        await service.aclose()


def seed(count: int) -> list[DocumentIn]:
    return [DocumentIn(f"d{i:02d}", f"doc {i} about subject {i % 7}", {"n": i}) for i in range(count)]


def hold_backfill_after(batches: int) -> Callable[[str, Sequence[str]], bool]:
    """Let `batches` backfill calls (target model, seeded texts) through, hold the next ones."""
    seen = 0

    def hold(model: str, texts: Sequence[str]) -> bool:
        nonlocal seen
        if model != LARGE or not texts[0].startswith("doc "):
            return False
        seen += 1
        return seen > batches

    return hold


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll an in-process condition; the bound only turns a hang into a readable failure."""
    for _ in range(2000):
        if await predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def test_migration_with_concurrent_writes_deletes_and_searches(open_service: OpenService) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors)
    await service.upsert(BASE, seed(40), model=SMALL)
    vectors.hold = hold_backfill_after(2)

    migration = await service.start_migration(BASE, LARGE, batch_size=5)
    assert (migration.source_collection, migration.target_collection) == ("notes_384", "notes_1536")
    assert migration.total_documents == 40
    await asyncio.wait_for(vectors.held.wait(), 10)
    # Batches d00-d04 and d05-d09 are embedded; d10-d14 was read from the source and is held.
    running = await service.get_migration(migration.id)
    assert running.state is MigrationState.BACKFILLING
    assert running.migrated_documents <= 10

    with pytest.raises(AlreadyExistsError):
        await service.start_migration(BASE, "fake/base-768")
    with pytest.raises(CollectionInUseError):
        await service.delete_collection("notes_1536")

    # Writes during the backfill: new, changed (before, inside and after the held batch), deleted.
    await service.upsert(
        BASE,
        [
            DocumentIn("n1", "fresh note on gardening", {"n": 100}),
            DocumentIn("d01", "changed early document", {"n": 1}),
            DocumentIn("d12", "changed held document", {"n": 12}),
            DocumentIn("d38", "changed late document", {"n": 38}),
        ],
    )
    assert await service.delete(BASE, ids=["d02", "d13", "d39"]) == 3

    # The target got the writes at once (dual write) ...
    in_target = await service.get(BASE, ids=["n1", "d12"], dimension=1536)
    assert [d.id for d in in_target.documents] == ["n1", "d12"]
    # ... while searches read only the complete source collection.
    during = await service.search(BASE, "fresh note on gardening", top_k=50)
    assert during.collections == ["notes_384"]
    assert during.hits[0].id == "n1"
    assert len(during.hits) == 38
    changed = await service.search(BASE, "changed held document", top_k=1)
    assert changed.hits[0].text == "changed held document"

    vectors.hold = None
    vectors.release.set()
    done = await service.wait_for_migration(migration.id)

    assert done.state is MigrationState.COMPLETED, done.error
    assert done.total_documents == done.migrated_documents == 38
    after = await service.search(BASE, "changed held document", top_k=3)
    assert after.collections == ["notes_1536"]
    assert after.hits[0].id == "d12"
    # The held batch's stale copy of d12 did not overwrite the newer dual write, and deletes held.
    d12 = (await service.get(BASE, ids=["d12", "d13"], include_embeddings=True)).documents
    assert [d.id for d in d12] == ["d12"]
    assert d12[0].text == "changed held document"
    assert d12[0].embedding is not None
    np.testing.assert_allclose(d12[0].embedding, vectors.vector("changed held document", LARGE), atol=1e-5)
    assert (await service.get(BASE, ids=["d38"])).documents[0].text == "changed late document"

    # Writes now go to the target only; the old collection is kept until deleted.
    await service.upsert(BASE, [DocumentIn("n2", "after the switch")])
    assert [d.id for d in (await service.get(BASE, ids=["n2"], dimension=384)).documents] == []
    by_name = {c.name: c for c in (await service.list_collections(BASE)).collections}
    assert by_name["notes_1536"].document_count == 39
    assert by_name["notes_384"].document_count == 38
    assert not by_name["notes_384"].serving_reads
    assert await service.delete_collection("notes_384") == "notes_384"


async def test_restart_mid_backfill_resumes_from_the_cursor(tmp_path: Path) -> None:
    first_source = FakeVectorSource()
    first = EmbeddingStoreService.open(make_config(tmp_path), first_source)
    await first.upsert(BASE, seed(30), model=SMALL)
    # The probe plus three backfill batches pass; the fourth batch blocks until the service closes.
    first_source.block_model = LARGE
    first_source.block_after_calls = 4
    migration = await first.start_migration(BASE, LARGE, batch_size=5)

    async def three_batches_written() -> bool:
        return (await first.get_migration(migration.id)).migrated_documents == 15

    await wait_until(three_batches_written, "three backfill batches written")
    await first.aclose()

    second_source = FakeVectorSource()
    second = EmbeddingStoreService.open(make_config(tmp_path), second_source)
    try:
        paused = await second.get_migration(migration.id)
        assert paused.state is MigrationState.BACKFILLING
        assert paused.migrated_documents == 15

        resumed = await second.resume_migrations()
        assert [m.id for m in resumed] == [migration.id]
        done = await second.wait_for_migration(migration.id)

        assert done.state is MigrationState.COMPLETED, done.error
        reembedded = second_source.texts_embedded(LARGE)
        assert sorted(reembedded) == sorted(f"doc {i} about subject {i % 7}" for i in range(15, 30))
        counts = {c.name: c.document_count for c in (await second.list_collections(BASE)).collections}
        assert counts == {"notes_384": 30, "notes_1536": 30}
    finally:
        await second.aclose()


async def test_verification_repairs_ids_the_backfill_missed(
    open_service: OpenService, tmp_path: Path
) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors)
    await service.upsert(BASE, seed(12), model=SMALL)
    vectors.hold = hold_backfill_after(1)
    migration = await service.start_migration(BASE, LARGE, batch_size=4)
    await asyncio.wait_for(vectors.held.wait(), 10)

    # A document that reached the source behind the service's back (no dual write) after the
    # backfill took its id snapshot: only verification can find it.
    outside = ChromaStore(ChromaConfig(path=tmp_path / "chroma"))
    try:
        await outside.upsert(
            "notes_384", ["d00b"], [vectors.vector("sneaked in", SMALL)], ["sneaked in"], [{"n": -1}]
        )
    finally:
        await outside.aclose()
    vectors.hold = None
    vectors.release.set()
    done = await service.wait_for_migration(migration.id)

    assert done.state is MigrationState.COMPLETED, done.error
    got = await service.get(BASE, ids=["d00b"])
    assert got.collection == "notes_1536"
    assert [d.text for d in got.documents] == ["sneaked in"]


async def test_router_failure_fails_the_migration_and_keeps_reads(open_service: OpenService) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors)
    await service.upsert(BASE, seed(8), model=SMALL)
    vectors.hold = hold_backfill_after(1)
    migration = await service.start_migration(BASE, LARGE, batch_size=4)
    await asyncio.wait_for(vectors.held.wait(), 10)

    vectors.fail_models = {LARGE}
    vectors.release.set()
    failed = await service.wait_for_migration(migration.id)

    assert failed.state is MigrationState.FAILED
    assert failed.error == "embedding source unavailable"
    by_name = {c.name: c for c in (await service.list_collections(BASE)).collections}
    assert by_name["notes_384"].serving_reads and by_name["notes_384"].receiving_writes
    assert not by_name["notes_1536"].receiving_writes
    # Writes no longer need the failed target's model, and a new migration may start.
    await service.upsert(BASE, [DocumentIn("x", "still writable")])
    vectors.fail_models = set()
    retry = await service.start_migration(BASE, LARGE)
    assert retry.target_collection == "notes_1536_v2"
    assert (await service.wait_for_migration(retry.id)).state is MigrationState.COMPLETED


async def test_same_dimension_migration_gets_a_versioned_name(open_service: OpenService) -> None:
    vectors = FakeVectorSource({SMALL: 384, "fake/other-384": 384})
    service = open_service(vectors)
    await service.upsert(BASE, seed(6), model=SMALL)

    migration = await service.start_migration(BASE, "other-384")
    done = await service.wait_for_migration(migration.id)

    assert (done.target_collection, done.target_model, done.state) == (
        "notes_384_v2",
        "fake/other-384",
        MigrationState.COMPLETED,
    )
    assert (await service.search(BASE, "doc 3 about subject 3", top_k=1)).hits[0].id == "d03"


async def test_migration_requests_are_validated(open_service: OpenService) -> None:
    service = open_service(FakeVectorSource())
    with pytest.raises(NotFoundError) as no_base:
        await service.start_migration("missing", LARGE)
    assert no_base.value.resource_type == "base"
    await service.upsert(BASE, seed(2))
    with pytest.raises(InvalidArgumentError) as bad_size:
        await service.start_migration(BASE, LARGE, batch_size=-1)
    assert [v.field for v in bad_size.value.violations] == ["batch_size"]
    with pytest.raises(InvalidArgumentError) as bad_model:
        await service.start_migration(BASE, "")
    assert [v.field for v in bad_model.value.violations] == ["target_model"]
    with pytest.raises(NotFoundError) as no_model:
        await service.start_migration(BASE, "no-such-model")
    assert no_model.value.resource_type == "model"
    with pytest.raises(NotFoundError) as unknown:
        await service.get_migration("0" * 32)
    assert unknown.value.resource_type == "migration"
    assert (await service.list_collections(BASE)).collections[0].name == "notes_384"
    assert len((await service.list_collections(BASE)).collections) == 1


async def test_a_write_naming_the_model_the_base_migrated_away_from_goes_to_the_current_collection(
    open_service: OpenService,
) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors)
    await service.upsert(BASE, seed(6), model=SMALL)
    migration = await service.start_migration(BASE, LARGE)
    assert (await service.wait_for_migration(migration.id)).state is MigrationState.COMPLETED

    result = await service.upsert(
        BASE, [DocumentIn("old-client", "written by a client naming the old model")], model=SMALL
    )

    assert [(c.name, c.model) for c in result.collections] == [("notes_1536", LARGE)]
    assert sorted(c.name for c in (await service.list_collections(BASE)).collections) == [
        "notes_1536",
        "notes_384",
    ]
    got = await service.get(BASE, ids=["old-client"], include_embeddings=True)
    assert got.collection == "notes_1536"
    assert got.documents[0].embedding is not None
    np.testing.assert_allclose(
        got.documents[0].embedding,
        vectors.vector("written by a client naming the old model", LARGE),
        atol=1e-5,
    )
    hits = (await service.search(BASE, "written by a client naming the old model", top_k=3)).hits
    assert hits[0].id == "old-client" and [m.collection for m in hits[0].matches] == ["notes_1536"]
    # Later writes that name no model do not fan out to a forked collection either.
    after = await service.upsert(BASE, [DocumentIn("plain", "no model named")])
    assert [c.name for c in after.collections] == ["notes_1536"]

    # Still true once the old collection is deleted: the migration's history remembers the model.
    await service.delete_collection("notes_384")
    again = await service.upsert(
        BASE, [DocumentIn("old-client-2", "the old model once more")], model="mini-384"
    )
    assert [c.name for c in again.collections] == ["notes_1536"]
    assert [c.name for c in (await service.list_collections(BASE)).collections] == ["notes_1536"]
    # A model the base never wrote with still opens a new dimension collection, as before.
    other = await service.upsert(BASE, [DocumentIn("x", "a third model")], model="fake/base-768")
    assert [c.name for c in other.collections] == ["notes_768"]


async def test_an_old_model_write_sent_during_the_backfill_that_lands_after_the_switch_does_not_fork(
    open_service: OpenService,
) -> None:
    vectors = FakeVectorSource()
    service = open_service(vectors)
    await service.upsert(BASE, seed(12), model=SMALL)
    late_text = "sent during the backfill, written after the switch"
    vectors.hold = lambda model, texts: texts[0] == late_text
    migration = await service.start_migration(BASE, LARGE, batch_size=4)

    # The upsert names the old model while the migration runs: it embeds for both collections
    # and is held there until the migration has switched the base to the target.
    late = asyncio.create_task(service.upsert(BASE, [DocumentIn("late", late_text)], model=SMALL))
    await asyncio.wait_for(vectors.held.wait(), 10)
    assert (await service.wait_for_migration(migration.id)).state is MigrationState.COMPLETED
    vectors.release.set()
    result = await asyncio.wait_for(late, 10)

    assert [c.name for c in result.collections] == ["notes_1536"]
    assert sorted(c.name for c in (await service.list_collections(BASE)).collections) == [
        "notes_1536",
        "notes_384",
    ]
    got = await service.get(BASE, ids=["late"])
    assert (got.collection, [d.text for d in got.documents]) == ("notes_1536", [late_text])
    hits = (await service.search(BASE, late_text, top_k=1)).hits
    assert hits[0].id == "late" and [m.collection for m in hits[0].matches] == ["notes_1536"]
