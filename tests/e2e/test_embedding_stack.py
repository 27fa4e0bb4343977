"""Both services running: Python client -> EmbeddingService -> RouterService.Embed -> provider.

The router is backed by the fake provider (models of 384, 768 and 1536
dimensions) or by the real in-process local model; Chroma runs embedded.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sekha import client as c
from sekha.embedding.v1 import embedding_service_pb2 as emb
from testkit.fake_provider import FakeProvider
from testkit.harness import (
    embedding_config,
    embedding_model,
    openai_provider,
    router_config,
    running_embedding,
    running_router,
)

MODELS = {"mini-384": 384, "base-768": 768, "large-1536": 1536}


def doc(doc_id: str, text: str, **metadata: object) -> emb.Document:
    values = {}
    for key, value in metadata.items():
        if isinstance(value, str):
            values[key] = emb.MetadataValue(string_value=value)
        elif isinstance(value, int):
            values[key] = emb.MetadataValue(int_value=value)
    return emb.Document(id=doc_id, text=text, metadata=values)


@contextlib.asynccontextmanager
async def stack(tmp_path, fake: FakeProvider):  # type: ignore[no-untyped-def]
    config = router_config(
        [openai_provider("vec", fake.base_url, [embedding_model(name, dim) for name, dim in MODELS.items()])]
    )
    async with running_router(config) as (router_app, router):
        emb_config = embedding_config(tmp_path, f"127.0.0.1:{router_app.port}")
        async with running_embedding(emb_config) as (emb_app, client):
            yield router_app, router, emb_app, client, emb_config


@pytest.fixture
async def fake():  # type: ignore[no-untyped-def]
    async with FakeProvider() as provider:
        yield provider


async def test_dimensions_detected_per_model_and_search_fuses_across_them(
    tmp_path, fake: FakeProvider
) -> None:
    async with stack(tmp_path, fake) as (_, _, _, client, _):
        assert await client.health() == "SERVING"
        texts = {f"d{i}": f"document number {i} about topic {i % 3}" for i in range(12)}
        for model in MODELS:
            reply = await client.upsert_documents(
                emb.UpsertDocumentsRequest(
                    base="notes",
                    model=f"vec/{model}",
                    documents=[doc(i, t, topic=f"t{int(i[1:]) % 3}", n=int(i[1:])) for i, t in texts.items()],
                )
            )
            assert reply.upserted_count == 12
        listing = await client.list_collections(emb.ListCollectionsRequest(base="notes"))
        by_name = {info.name: info for info in listing.collections}
        assert set(by_name) == {"notes_384", "notes_768", "notes_1536"}
        assert {info.name: info.dimension for info in listing.collections} == {
            "notes_384": 384,
            "notes_768": 768,
            "notes_1536": 1536,
        }
        assert by_name["notes_768"].model == "vec/base-768" and by_name["notes_768"].document_count == 12
        assert fake.count("/v1/embeddings") == 3

        result = await client.search_documents(
            emb.SearchDocumentsRequest(base="notes", query=texts["d7"], top_k=3)
        )
        assert set(result.collections) == {"notes_384", "notes_768", "notes_1536"}
        best = result.hits[0]
        assert best.document.id == "d7"
        assert {m.collection for m in best.matches} == set(by_name) and all(m.rank == 1 for m in best.matches)
        # the query was embedded once per model, never a 384-d query against a 1536-d collection
        queries = [r for r in fake.requests if r.path == "/v1/embeddings"][3:]
        assert sorted(r.model for r in queries) == sorted(MODELS)

        only_768 = await client.search_documents(
            emb.SearchDocumentsRequest(base="notes", query=texts["d7"], top_k=3, dimensions=[768])
        )
        assert only_768.collections == ["notes_768"]

        filtered = emb.SearchDocumentsRequest(base="notes", query=texts["d7"], top_k=12)
        filtered.metadata_filter.update({"topic": "t0"})
        hits = (await client.search_documents(filtered)).hits
        assert hits and all(h.document.metadata["topic"].string_value == "t0" for h in hits)

        minmax = await client.search_documents(
            emb.SearchDocumentsRequest(
                base="notes", query=texts["d4"], top_k=2, fusion_method=emb.FUSION_METHOD_MIN_MAX
            )
        )
        assert minmax.hits[0].document.id == "d4"


async def test_upsert_is_idempotent_get_delete_and_paginate(tmp_path, fake: FakeProvider) -> None:
    async with stack(tmp_path, fake) as (_, _, _, client, _):
        docs = [doc(f"id-{i:02d}", f"text {i}", kind="a" if i % 2 else "b") for i in range(10)]
        await client.upsert_documents(
            emb.UpsertDocumentsRequest(base="kb", model="vec/mini-384", documents=docs)
        )
        await client.upsert_documents(
            emb.UpsertDocumentsRequest(base="kb", documents=[doc("id-03", "text three, revised", kind="a")])
        )
        info = (await client.list_collections()).collections
        assert [(i.name, i.document_count) for i in info] == [("kb_384", 10)]

        got = await client.get_documents(emb.GetDocumentsRequest(base="kb", ids=["id-03", "missing"]))
        assert [(d.id, d.text) for d in got.documents] == [("id-03", "text three, revised")]

        seen, token = [], ""
        while True:
            page = await client.get_documents(
                emb.GetDocumentsRequest(base="kb", page_size=4, page_token=token)
            )
            seen += [d.id for d in page.documents]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == [f"id-{i:02d}" for i in range(10)]

        by_filter = emb.DeleteDocumentsRequest(base="kb")
        by_filter.metadata_filter.update({"kind": "b"})
        assert (await client.delete_documents(by_filter)).deleted_count == 5
        assert (
            await client.delete_documents(emb.DeleteDocumentsRequest(base="kb", ids=["id-01"]))
        ).deleted_count == 1
        assert (await client.list_collections()).collections[0].document_count == 4

        with pytest.raises(c.InvalidArgumentError) as bad:
            await client.upsert_documents(emb.UpsertDocumentsRequest(base="kb", documents=[doc("", "x")]))
        assert bad.value.details.field_violations[0][0] == "documents[0].id"
        with pytest.raises(c.NotFoundError):
            await client.delete_collection(emb.DeleteCollectionRequest(name="nope_384"))


async def test_vector_dimension_change_is_refused(tmp_path) -> None:
    async with FakeProvider(embed_dimensions={"shifty": 384}) as fake:
        config = router_config([openai_provider("vec", fake.base_url, [embedding_model("shifty", 384)])])
        async with running_router(config) as (router_app, _):
            emb_config = embedding_config(tmp_path, f"127.0.0.1:{router_app.port}")
            async with running_embedding(emb_config) as (_, client):
                await client.upsert_documents(
                    emb.UpsertDocumentsRequest(base="kb", documents=[doc("a", "first")])
                )
                fake._embed_dimensions["shifty"] = 512  # the provider silently changed its model
                with pytest.raises(c.FailedPreconditionError) as exc:
                    await client.upsert_documents(
                        emb.UpsertDocumentsRequest(base="kb", documents=[doc("b", "second")])
                    )
                assert exc.value.details.precondition_violations
                got = await client.get_documents(emb.GetDocumentsRequest(base="kb", ids=["a", "b"]))
                assert [d.id for d in got.documents] == ["a"]


async def test_router_down_is_unavailable_not_a_half_write(tmp_path, fake: FakeProvider) -> None:
    config = router_config([openai_provider("vec", fake.base_url, [embedding_model("mini-384", 384)])])
    async with running_router(config) as (router_app, _):
        emb_config = embedding_config(tmp_path, f"127.0.0.1:{router_app.port}", router={"timeout_s": 2})
        async with running_embedding(emb_config) as (_, client):
            await client.upsert_documents(
                emb.UpsertDocumentsRequest(base="kb", documents=[doc("a", "first")])
            )
            await router_app.stop(0)
            with pytest.raises(c.UnavailableError):
                await client.upsert_documents(
                    emb.UpsertDocumentsRequest(base="kb", documents=[doc("b", "second")])
                )
            got = await client.get_documents(emb.GetDocumentsRequest(base="kb", ids=["a", "b"]))
            assert [d.id for d in got.documents] == ["a"]


async def test_migration_over_grpc_with_writes_and_searches_during_it(tmp_path, fake: FakeProvider) -> None:
    async with stack(tmp_path, fake) as (_, _, _, client, _):
        docs = [doc(f"m{i:03d}", f"memo {i} on subject {i % 7}") for i in range(300)]
        await client.upsert_documents(
            emb.UpsertDocumentsRequest(base="memos", model="vec/mini-384", documents=docs)
        )
        started = (
            await client.start_migration(
                emb.StartMigrationRequest(base="memos", target_model="vec/large-1536", batch_size=25)
            )
        ).migration
        assert started.target_collection == "memos_1536" and started.source_collection == "memos_384"
        with pytest.raises(c.AlreadyExistsError):
            await client.start_migration(emb.StartMigrationRequest(base="memos", target_model="vec/base-768"))

        writes = 0
        while True:
            migration = (await client.get_migration(emb.GetMigrationRequest(id=started.id))).migration
            new = doc(f"new{writes}", f"written during migration {writes}")
            await client.upsert_documents(emb.UpsertDocumentsRequest(base="memos", documents=[new]))
            writes += 1
            hits = (
                await client.search_documents(
                    emb.SearchDocumentsRequest(base="memos", query=docs[5].text, top_k=1)
                )
            ).hits
            assert hits[0].document.id == "m005"  # complete results throughout
            if migration.state in (emb.MIGRATION_STATE_COMPLETED, emb.MIGRATION_STATE_FAILED):
                break
            await asyncio.sleep(0.01)
        assert migration.state == emb.MIGRATION_STATE_COMPLETED
        assert migration.migrated_documents >= 300
        collections = {
            i.name: i
            for i in (await client.list_collections(emb.ListCollectionsRequest(base="memos"))).collections
        }
        assert collections["memos_1536"].serving_reads and not collections["memos_384"].serving_reads
        assert collections["memos_1536"].document_count == 300 + writes
        after = await client.search_documents(
            emb.SearchDocumentsRequest(base="memos", query=docs[9].text, top_k=1)
        )
        assert after.collections == ["memos_1536"] and after.hits[0].document.id == "m009"
        for i in range(writes):
            got = await client.get_documents(emb.GetDocumentsRequest(base="memos", ids=[f"new{i}"]))
            assert got.documents, f"write new{i} made during the migration is missing after the switch"


async def test_migration_resumes_after_a_restart(tmp_path, fake: FakeProvider) -> None:
    from testkit.fake_provider import Behaviour

    config = router_config(
        [openai_provider("vec", fake.base_url, [embedding_model(n, d) for n, d in MODELS.items()])]
    )
    async with running_router(config) as (router_app, _):
        emb_config = embedding_config(tmp_path, f"127.0.0.1:{router_app.port}")
        async with running_embedding(emb_config) as (_, client):
            docs = [doc(f"r{i:03d}", f"record {i}") for i in range(200)]
            await client.upsert_documents(
                emb.UpsertDocumentsRequest(base="recs", model="vec/mini-384", documents=docs)
            )
            fake.set_default(Behaviour(latency_s=0.05), model="base-768")  # slow the backfill down
            started = (
                await client.start_migration(
                    emb.StartMigrationRequest(base="recs", target_model="vec/base-768", batch_size=10)
                )
            ).migration
            while (
                await client.get_migration(emb.GetMigrationRequest(id=started.id))
            ).migration.migrated_documents < 30:
                await asyncio.sleep(0.02)
        # the service stopped mid-backfill
        before = fake.count("/v1/embeddings", "base-768")
        fake.set_default(Behaviour(), model="base-768")
        async with running_embedding(emb_config) as (_, client):
            while True:
                migration = (await client.get_migration(emb.GetMigrationRequest(id=started.id))).migration
                if migration.state in (emb.MIGRATION_STATE_COMPLETED, emb.MIGRATION_STATE_FAILED):
                    break
                await asyncio.sleep(0.02)
            assert migration.state == emb.MIGRATION_STATE_COMPLETED
            collections = {i.name: i.document_count for i in (await client.list_collections()).collections}
            assert collections["recs_768"] == 200
        resumed_batches = fake.count("/v1/embeddings", "base-768") - before
        assert resumed_batches < 20  # batches done before the restart were not embedded again


async def test_a_client_naming_the_old_model_after_a_migration_writes_to_the_new_collection(
    tmp_path, fake: FakeProvider
) -> None:
    async with stack(tmp_path, fake) as (_, _, _, client, _):
        docs = [doc(f"k{i}", f"knowledge item {i}") for i in range(8)]
        await client.upsert_documents(
            emb.UpsertDocumentsRequest(base="kb", model="vec/mini-384", documents=docs)
        )
        started = (
            await client.start_migration(emb.StartMigrationRequest(base="kb", target_model="vec/base-768"))
        ).migration
        while (
            await client.get_migration(emb.GetMigrationRequest(id=started.id))
        ).migration.state != emb.MIGRATION_STATE_COMPLETED:
            await asyncio.sleep(0.02)

        reply = await client.upsert_documents(
            emb.UpsertDocumentsRequest(
                base="kb", model="vec/mini-384", documents=[doc("k1", "knowledge item one, revised")]
            )
        )

        assert [(i.name, i.model) for i in reply.collections] == [("kb_768", "vec/base-768")]
        listing = (await client.list_collections(emb.ListCollectionsRequest(base="kb"))).collections
        assert sorted(i.name for i in listing) == ["kb_384", "kb_768"]
        got = await client.get_documents(emb.GetDocumentsRequest(base="kb", ids=["k1"]))
        assert [d.text for d in got.documents] == ["knowledge item one, revised"]
        found = await client.search_documents(
            emb.SearchDocumentsRequest(base="kb", query="knowledge item one, revised", top_k=2)
        )
        assert found.collections == ["kb_768"] and found.hits[0].document.id == "k1"
        assert [m.collection for m in found.hits[0].matches] == ["kb_768"]
