"""Two embedding-service PROCESSES on one `chroma run` server and one real redis-server.

Each replica is `python -m embedding_service serve --config F` with `state.backend: redis` and a
short lease TTL; both get their vectors from one router (in this test's event loop) whose
provider is the fake HTTP server. The scenarios of issue 17:

* concurrent upserts to one new base through both replicas: one collection, every id once,
  the same answers from both;
* a migration started through replica A under writes through both; A is SIGKILLed mid-backfill,
  B takes the job lease after its TTL, resumes from the stored cursor and switches the base;
* a stale owner: A is SIGSTOPped mid-backfill, B takes over and finishes, writes newer texts;
  A is resumed and takes no irreversible step (fencing), and logs that it lost the lease;
* Redis stopped during ingest: plain upserts and reads go on, steps that need a lease answer
  UNAVAILABLE with a retry delay, and the migration resumes once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from router_service.server import RouterDeps
from sekha import client as c
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.router.v1 import router_service_pb2 as rt
from testkit.chroma_server import ChromaServer, chroma_server_or_skip
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import embedding_model, openai_provider, router_config, running_router
from testkit.redis_server import RedisServer, redis_server_or_skip
from testkit.service_process import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.redis, pytest.mark.e2e]

SMALL, LARGE = "vec/mini-384", "vec/base-768"
LEASE_TTL_S = 1.5
# Each backfill batch waits this long at the fake provider, so a migration of a few dozen
# documents lasts long enough to be interrupted half way.
SLOW_TARGET = Behaviour(latency_s=0.12)


@pytest.fixture(scope="module")
def chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    server = chroma_server_or_skip(tmp_path_factory.mktemp("chroma") / "db")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = redis_server_or_skip(persistent=True)
    yield server
    server.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


class BackfillGate(grpc.aio.ServerInterceptor):
    """On the router: lets `passing` backfill batches (Embed calls for the target model with
    seeded texts) through, then holds the next ones until `open()`, so a replica can be paused
    at a known point: waiting for its next batch's vectors, not in the middle of a write."""

    def __init__(self, passing: int) -> None:
        self.passing = passing
        self.holding = asyncio.Event()
        self._open = asyncio.Event()

    def open(self) -> None:
        self._open.set()

    def _selects(self, request: rt.EmbedRequest) -> bool:
        return request.routing.preferred_model == LARGE and request.inputs[0].startswith("text ")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.endswith("/Embed"):
            return handler
        inner = handler.unary_unary

        async def embed(request: rt.EmbedRequest, context: grpc.aio.ServicerContext) -> Any:
            if self._selects(request) and not self._open.is_set():
                if self.passing > 0:
                    self.passing -= 1
                else:
                    self.holding.set()
                    await self._open.wait()
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            embed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class Replicas:
    a: ServiceProcess
    b: ServiceProcess
    client_a: c.EmbeddingClient
    client_b: c.EmbeddingClient

    @property
    def clients(self) -> tuple[c.EmbeddingClient, c.EmbeddingClient]:
        return self.client_a, self.client_b

    async def restart_a(self) -> None:
        await self.client_a.close()
        await self.a.start()
        self.client_a = _client(self.a)


def _client(process: ServiceProcess) -> c.EmbeddingClient:
    return c.EmbeddingClient(c.ConnectionConfig(process.target, default_timeout_s=30))


def _config(router_port: int, chroma: ChromaServer, redis: RedisServer, tmp_path: Path) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1},
        "router": {"target": f"127.0.0.1:{router_port}", "timeout_s": 20},
        "chroma": {"mode": "http", "host": "127.0.0.1", "port": chroma.port},
        "state_path": str(tmp_path / "unused.sqlite3"),
        "state": {
            "backend": "redis",
            "redis_url": redis.url,
            "key_prefix": f"e2e-{uuid.uuid4().hex[:8]}",
            "lease_ttl_s": LEASE_TTL_S,
            "lease_wait_s": 10,
            "reconnect_interval_s": 0.2,
        },
        "defaults": {"model": SMALL},
        "migration": {"retry_backoff_s": 0.05, "verify_passes": 5},
    }


@contextlib.asynccontextmanager
async def replicas(
    tmp_path: Path,
    fake: FakeProvider,
    chroma: ChromaServer,
    redis: RedisServer,
    gate: BackfillGate | None = None,
) -> AsyncIterator[Replicas]:
    models = [embedding_model("mini-384", 384), embedding_model("base-768", 768)]
    deps = RouterDeps(extra_interceptors=[gate] if gate is not None else [])
    config = router_config([openai_provider("vec", fake.base_url, models)])
    async with running_router(config, deps) as (router, _):
        config = _config(router.port, chroma, redis, tmp_path)
        a = ServiceProcess("embedding_service", config, tmp_path, name="embedding-a")
        b = ServiceProcess("embedding_service", config, tmp_path, name="embedding-b")
        try:
            await asyncio.gather(a.start(), b.start())
            cluster = Replicas(a, b, _client(a), _client(b))
            try:
                yield cluster
            finally:
                await cluster.client_a.close()
                await cluster.client_b.close()
        finally:
            for process in (a, b):
                if process.process is not None and process.process.returncode is None:
                    process.signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
                await process.stop()


def doc(doc_id: str, text: str) -> emb.Document:
    return emb.Document(id=doc_id, text=text)


async def until(check: Callable[[], Awaitable[bool]], what: str, within_s: float = 60.0) -> None:
    """Poll another process's state; the bound only turns a hang into a readable failure."""
    try:
        async with asyncio.timeout(within_s):
            while not await check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def migration_of(client: c.EmbeddingClient, migration_id: str) -> emb.Migration:
    return (await client.get_migration(emb.GetMigrationRequest(id=migration_id))).migration


async def ids_in(client: c.EmbeddingClient, base: str, ids: list[str], dimension: int) -> set[str]:
    got = await client.get_documents(emb.GetDocumentsRequest(base=base, ids=ids, dimension=dimension))
    return {d.id for d in got.documents}


async def start_slow_migration(
    fake: FakeProvider, client: c.EmbeddingClient, base: str, count: int, slow: bool = True
) -> tuple[emb.Migration, list[emb.Document]]:
    seeded = [doc(f"d{i:03d}", f"text {i} on topic {i % 5}") for i in range(count)]
    await client.upsert_documents(emb.UpsertDocumentsRequest(base=base, model=SMALL, documents=seeded))
    if slow:
        fake.set_default(SLOW_TARGET, model="base-768")
    started = await client.start_migration(
        emb.StartMigrationRequest(base=base, target_model=LARGE, batch_size=5)
    )
    return started.migration, seeded


async def test_concurrent_upserts_through_two_replicas_land_once_and_read_the_same_from_both(
    tmp_path: Path, fake: FakeProvider, chroma: ChromaServer, redis_server: RedisServer
) -> None:
    async with replicas(tmp_path, fake, chroma, redis_server) as cluster:
        # A new base: both replicas race to create its collection, under the base's lease.
        async def write(i: int) -> None:
            documents = [doc(f"s{i:02d}-{j}", f"shared note {i} part {j}") for j in range(4)]
            documents.append(doc(f"both-{i % 3}", f"contested text from writer {i}"))
            await cluster.clients[i % 2].upsert_documents(
                emb.UpsertDocumentsRequest(base="shared", documents=documents)
            )

        await asyncio.gather(*(write(i) for i in range(24)))

        expected = sorted(
            [f"s{i:02d}-{j}" for i in range(24) for j in range(4)] + [f"both-{k}" for k in range(3)]
        )
        answers = []
        for client in cluster.clients:
            listing = (await client.list_collections(emb.ListCollectionsRequest(base="shared"))).collections
            assert [(i.name, i.document_count) for i in listing] == [("shared_384", len(expected))]
            got = await client.get_documents(emb.GetDocumentsRequest(base="shared", ids=expected))
            assert sorted(d.id for d in got.documents) == expected
            found = await client.search_documents(
                emb.SearchDocumentsRequest(base="shared", query="shared note 7 part 2", top_k=5)
            )
            assert found.hits[0].document.id == "s07-2"
            answers.append(
                (
                    {d.id: d.text for d in got.documents},
                    [(h.document.id, round(h.score, 6)) for h in found.hits],
                )
            )
        assert answers[0] == answers[1]  # whichever replica answers, the same documents and ranking

        # A delete through one replica is seen through the other.
        gone = [f"s{i:02d}-0" for i in range(24)]
        deleted = await cluster.client_b.delete_documents(emb.DeleteDocumentsRequest(base="shared", ids=gone))
        assert deleted.deleted_count == len(gone)
        left = await cluster.client_a.get_documents(emb.GetDocumentsRequest(base="shared", ids=expected))
        assert sorted(d.id for d in left.documents) == sorted(set(expected) - set(gone))


async def test_a_migration_survives_its_owner_being_killed_mid_backfill(
    tmp_path: Path, fake: FakeProvider, chroma: ChromaServer, redis_server: RedisServer
) -> None:
    async with replicas(tmp_path, fake, chroma, redis_server) as cluster:
        migration, seeded = await start_slow_migration(fake, cluster.client_a, "killed", 60)
        acknowledged = {d.id for d in seeded}
        killed = asyncio.Event()

        async def write_through_both() -> None:
            for i in range(10_000):
                client = cluster.client_b if killed.is_set() else cluster.clients[i % 2]
                new = doc(f"w{i:04d}", f"written during the migration {i}")
                with contextlib.suppress(c.SekhaError):  # A may die while answering
                    await client.upsert_documents(emb.UpsertDocumentsRequest(base="killed", documents=[new]))
                    acknowledged.add(new.id)
                if (
                    await migration_of(cluster.client_b, migration.id)
                ).state == emb.MIGRATION_STATE_COMPLETED:
                    return
                await asyncio.sleep(0.02)

        writing = asyncio.create_task(write_through_both())

        async def half_way() -> bool:
            return (await migration_of(cluster.client_b, migration.id)).migrated_documents >= 15

        await until(half_way, "replica A backfilled 15 documents")
        cluster.a.signal(signal.SIGKILL)
        await cluster.a.wait(10)
        killed.set()

        async def completed() -> bool:
            return (await migration_of(cluster.client_b, migration.id)).state == emb.MIGRATION_STATE_COMPLETED

        await until(completed, "replica B completed the migration A started")
        await asyncio.wait_for(writing, 30)

        done = await migration_of(cluster.client_b, migration.id)
        assert done.state == emb.MIGRATION_STATE_COMPLETED, done.error
        assert any(
            f"migration {migration.id}: taken over by this replica" in m for m in cluster.b.log_messages()
        )
        assert any("resuming on this replica in BACKFILLING" in m for m in cluster.b.log_messages())
        # Every acknowledged write is in the new collection, the seeded ones and those made
        # through either replica while the migration ran.
        assert await ids_in(cluster.client_b, "killed", sorted(acknowledged), 768) == acknowledged
        await cluster.restart_a()
        for client in cluster.clients:
            found = await client.search_documents(
                emb.SearchDocumentsRequest(base="killed", query="text 7 on topic 2", top_k=3)
            )
            assert found.collections == ["killed_768"] and found.hits[0].document.id == "d007"
            listing = (await client.list_collections(emb.ListCollectionsRequest(base="killed"))).collections
            assert sorted(i.name for i in listing) == ["killed_384", "killed_768"]


async def test_a_paused_owner_whose_lease_expired_takes_no_further_step(
    tmp_path: Path, fake: FakeProvider, chroma: ChromaServer, redis_server: RedisServer
) -> None:
    gate = BackfillGate(passing=2)
    async with replicas(tmp_path, fake, chroma, redis_server, gate) as cluster:
        migration, seeded = await start_slow_migration(fake, cluster.client_a, "stale", 40, slow=False)

        async def two_batches_written() -> bool:
            return (await migration_of(cluster.client_b, migration.id)).migrated_documents == 10

        # A wrote two batches and waits for the vectors of its third (held at the router).
        await until(two_batches_written, "replica A backfilled two batches")
        await asyncio.wait_for(gate.holding.wait(), 30)
        cluster.a.signal(signal.SIGSTOP)
        gate.open()  # A's third batch is answered while A is paused; B's calls pass from now on

        async def completed() -> bool:
            return (await migration_of(cluster.client_b, migration.id)).state == emb.MIGRATION_STATE_COMPLETED

        await until(completed, "replica B took the migration over from the paused A and completed it")
        finished = await migration_of(cluster.client_b, migration.id)
        # Newer texts for every document, after the switch: a stale backfill batch of A would
        # overwrite some of them with the old texts it read before it was paused.
        revised = [doc(d.id, f"revised {d.text}") for d in seeded]
        await cluster.client_b.upsert_documents(emb.UpsertDocumentsRequest(base="stale", documents=revised))

        cluster.a.signal(signal.SIGCONT)
        await cluster.a.wait_for_log(f"migration {migration.id}: lost the lease", within_s=20)
        assert any("lost the lease migration:" in m for m in cluster.a.log_messages())

        for client in cluster.clients:  # A serves again, from the shared registry
            got = await client.get_documents(
                emb.GetDocumentsRequest(base="stale", ids=[d.id for d in seeded], dimension=768)
            )
            assert {d.id: d.text for d in got.documents} == {d.id: d.text for d in revised}
        after = await migration_of(cluster.client_a, migration.id)
        assert (after.state, after.update_time, after.migrated_documents) == (
            emb.MIGRATION_STATE_COMPLETED,
            finished.update_time,
            finished.migrated_documents,
        )
        a_log = cluster.a.log_messages()
        assert not any("completed: reads switched" in m for m in a_log)
        assert not any(f"migration {migration.id} failed" in m for m in a_log)
        listing = (
            await cluster.client_a.list_collections(emb.ListCollectionsRequest(base="stale"))
        ).collections
        assert sorted(i.name for i in listing) == ["stale_384", "stale_768"]


async def test_redis_outage_during_ingest_keeps_plain_writes_and_reads_and_the_migration_resumes(
    tmp_path: Path, fake: FakeProvider, chroma: ChromaServer
) -> None:
    redis = redis_server_or_skip(persistent=True)  # its own: this test stops it
    try:
        async with replicas(tmp_path, fake, chroma, redis) as cluster:
            migration, seeded = await start_slow_migration(fake, cluster.client_a, "outage", 30)

            async def under_way() -> bool:
                return (await migration_of(cluster.client_b, migration.id)).migrated_documents >= 5

            await until(under_way, "the backfill started")
            for client in cluster.clients:  # both replicas serve traffic, so both hold a fresh view
                await client.get_documents(emb.GetDocumentsRequest(base="outage", ids=["d000"]))
            redis.stop()

            # Plain upserts to the existing base go on through both replicas ...
            during = [doc(f"o{i:02d}", f"written while redis was down {i}") for i in range(8)]
            for i, document in enumerate(during):
                reply = await cluster.clients[i % 2].upsert_documents(
                    emb.UpsertDocumentsRequest(base="outage", documents=[document])
                )
                assert reply.upserted_count == 1
            # ... and so do reads ...
            for client in cluster.clients:
                found = await client.search_documents(
                    emb.SearchDocumentsRequest(base="outage", query="written while redis was down 3", top_k=1)
                )
                assert found.hits[0].document.id == "o03"
            # ... while what needs a lease is refused with a retry delay instead of risking a fork.
            with pytest.raises(c.UnavailableError) as new_base:
                await cluster.client_a.upsert_documents(
                    emb.UpsertDocumentsRequest(base="brandnew", documents=[doc("n1", "first of a new base")])
                )
            assert new_base.value.details.reason == "STATE_UNAVAILABLE"
            assert new_base.value.details.retry_after_s
            with pytest.raises(c.UnavailableError) as deletion:
                await cluster.client_b.delete_collection(emb.DeleteCollectionRequest(name="outage_384"))
            assert deletion.value.details.retry_after_s

            redis.start()  # with its append-only file

            async def completed() -> bool:
                try:
                    state = (await migration_of(cluster.client_b, migration.id)).state
                except c.UnavailableError:
                    return False
                assert state != emb.MIGRATION_STATE_FAILED
                return state == emb.MIGRATION_STATE_COMPLETED

            await until(completed, "the migration resumed and completed after redis came back")
            every = sorted([d.id for d in seeded] + [d.id for d in during])
            assert await ids_in(cluster.client_a, "outage", every, 768) == set(every)
            reply = await cluster.client_b.upsert_documents(
                emb.UpsertDocumentsRequest(base="brandnew", documents=[doc("n1", "first of a new base")])
            )
            assert [i.name for i in reply.collections] == ["brandnew_384"]
            assert any("redis unreachable" in m for m in cluster.a.log_messages())
            assert any("redis reachable again" in m for m in cluster.a.log_messages())
    finally:
        redis.close()
