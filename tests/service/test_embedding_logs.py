"""What an operator sees in the Embedding service's log: one JSON line per operational event
(the router out of reach and back, a migration from start to finish), never a document's text."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from embedding_service.server import EmbeddingDeps
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
from testkit.logs import capture_json_logs
from testkit.vectors import FakeVectorSource

SECRET_TEXT = "confidential memo SECRET-DOC-17"


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upsert(doc_id: str) -> emb.UpsertDocumentsRequest:
    return emb.UpsertDocumentsRequest(
        base="notes", model="vec/vec-16", documents=[emb.Document(id=doc_id, text=SECRET_TEXT)]
    )


async def test_the_router_out_of_reach_and_back_is_logged(fake: FakeProvider, tmp_path: Path) -> None:
    port = _unused_port()  # the router is not started yet
    config = embedding_config(tmp_path, f"127.0.0.1:{port}")
    router = router_config(
        [openai_provider("vec", fake.base_url, [embedding_model("vec-16", 16)])], server={"port": port}
    )
    with capture_json_logs() as log:
        async with running_embedding(config) as (_, client):
            with pytest.raises(c.UnavailableError):
                await client.upsert_documents(upsert("a"), timeout_s=10)
            async with running_router(router):
                for _ in range(80):  # the embedding service's channel reconnects on its own back-off
                    try:
                        await client.upsert_documents(upsert("a"), timeout_s=10)
                        break
                    except c.UnavailableError:
                        await asyncio.sleep(0.25)
    lost = log.events("router_unreachable")[0]  # more while the channel reconnects, rate-limited
    assert (lost["level"], lost["router"], lost["code"]) == ("WARNING", f"127.0.0.1:{port}", "UNAVAILABLE")
    [back] = log.events("router_reachable")
    assert (back["level"], back["router"]) == ("INFO", f"127.0.0.1:{port}")
    assert SECRET_TEXT not in log.text


async def test_a_migration_is_logged_from_start_to_finish(tmp_path: Path) -> None:
    vectors = FakeVectorSource()
    config = embedding_config(tmp_path, "127.0.0.1:1")
    with capture_json_logs() as log:
        async with running_embedding(config, EmbeddingDeps(vectors=vectors)) as (_, client):
            docs = [emb.Document(id=f"d{i:02d}", text=f"{SECRET_TEXT} {i}") for i in range(10)]
            await client.upsert_documents(emb.UpsertDocumentsRequest(base="kb", documents=docs))
            started = (
                await client.start_migration(
                    emb.StartMigrationRequest(base="kb", target_model="fake/base-768", batch_size=4)
                )
            ).migration
            for _ in range(400):  # the migration runs in the service's background
                migration = (await client.get_migration(emb.GetMigrationRequest(id=started.id))).migration
                if migration.state == emb.MIGRATION_STATE_COMPLETED:
                    break
                await asyncio.sleep(0.05)
            assert migration.state == emb.MIGRATION_STATE_COMPLETED
    [begun] = log.events("migration_started", migration=started.id)
    assert (begun["level"], begun["base"], begun["model"], begun["total"]) == (
        "INFO",
        "kb",
        "fake/base-768",
        10,
    )
    progress = log.events("migration_progress", migration=started.id)
    assert progress[0]["done"] == 0 and progress[0]["total"] == 10
    # every batch written is one event; a summary line counts the ones inside one window
    assert sum(p.get("suppressed", 1) for p in progress) == 1 + 3  # the start, then batches of 4, 4, 2
    [done] = log.events("migration_finished", migration=started.id)
    assert (done["level"], done["documents"]) == ("INFO", 10)
    assert not log.events("migration_failed")
    assert SECRET_TEXT not in log.text


async def test_a_failed_migration_is_a_warning(tmp_path: Path) -> None:
    vectors = FakeVectorSource()
    config = embedding_config(tmp_path, "127.0.0.1:1")
    with capture_json_logs() as log:
        async with running_embedding(config, EmbeddingDeps(vectors=vectors)) as (_, client):
            docs = [emb.Document(id=f"d{i}", text=f"{SECRET_TEXT} {i}") for i in range(6)]
            await client.upsert_documents(emb.UpsertDocumentsRequest(base="kb", documents=docs))
            started = (
                await client.start_migration(
                    emb.StartMigrationRequest(base="kb", target_model="fake/base-768", batch_size=2)
                )
            ).migration
            vectors.fail_models.add("fake/base-768")  # the router loses the target model mid-way
            for _ in range(400):
                migration = (await client.get_migration(emb.GetMigrationRequest(id=started.id))).migration
                if migration.state == emb.MIGRATION_STATE_FAILED:
                    break
                await asyncio.sleep(0.05)
    [failed] = log.events("migration_failed", migration=started.id)
    assert failed["level"] == "WARNING" and failed["error"] == "UnavailableError"
    assert SECRET_TEXT not in log.text
