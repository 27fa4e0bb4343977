"""Config reload of the Embedding service: SIGHUP to a real process, the admin command, and in process.

The embedding service runs as `python -m embedding_service serve --config F` (or in process via
`build_server`) with Chroma persistent under tmp_path; its routers run in the test's event loop
against the fake provider. Each router carries an `EmbedGate` interceptor that records the Embed
calls it served and can hold them: which router served a call is how the tests see which channel
the service used, and a held call is a request in flight for as long as the test needs, without
timers.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from embedding_service.config import EmbeddingConfig
from embedding_service.domain import MigrationState
from embedding_service.reload import restart_needed
from embedding_service.service import PROBE_TEXT
from router_service.config import RouterConfig
from router_service.server import RouterDeps
from sekha import client as c
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.keys import hash_api_key
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import FakeProvider
from testkit.harness import embedding_model, openai_provider, router_config, running_embedding, running_router
from testkit.service_process import ServiceProcess

OLD_KEY = "sk-emb-old-0123456789"
NEW_KEY = "sk-emb-new-9876543210"


class EmbedGate(grpc.aio.ServerInterceptor):
    """Records a router's Embed calls and, while closed, holds the ones `hold()` selects."""

    def __init__(self) -> None:
        self.calls: list[rt.EmbedRequest] = []
        self._open = asyncio.Event()
        self._open.set()
        self._holding = asyncio.Event()
        self._selects: Callable[[rt.EmbedRequest], bool] = lambda request: True

    def hold(self, selects: Callable[[rt.EmbedRequest], bool] = lambda request: True) -> None:
        self._selects = selects
        self._holding.clear()
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def holding(self) -> None:
        """Return once a selected call is being held."""
        async with asyncio.timeout(20):  # a hang guard only
            await self._holding.wait()

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
            self.calls.append(request)
            if not self._open.is_set() and self._selects(request):
                self._holding.set()
                await self._open.wait()
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            embed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def _router_config(fake: FakeProvider) -> RouterConfig:
    models = [embedding_model("vec-16", 16), embedding_model("vec-32", 32)]
    return router_config([openai_provider("vec", fake.base_url, models)])


def _embedding_yaml(tmp_path: Path, router_port: int, keys: list[str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1},
        "router": {"target": f"127.0.0.1:{router_port}", "timeout_s": 30},
        "chroma": {"mode": "persistent", "path": str(tmp_path / "chroma")},
        "state_path": str(tmp_path / "state.sqlite3"),
        "migration": {"retry_backoff_s": 0.01},
    }
    if keys is not None:
        data["auth"] = {
            "enabled": True,
            "keys": [{"id": f"ops-{i}", "hash": hash_api_key(key)} for i, key in enumerate(keys)],
        }
    return data


def _documents(count: int, prefix: str = "doc") -> list[emb.Document]:
    return [emb.Document(id=f"{prefix}-{i:02d}", text=f"text of {prefix} {i}") for i in range(count)]


def _client(service: ServiceProcess, key: str | None = None) -> c.EmbeddingClient:
    return c.EmbeddingClient(c.ConnectionConfig(service.target, api_key=key, default_timeout_s=30))


def _search(query: str, top_k: int = 3) -> emb.SearchDocumentsRequest:
    return emb.SearchDocumentsRequest(base="notes", query=query, top_k=top_k)


async def test_sighup_rotates_keys_and_moves_to_a_new_router_without_dropping_an_in_flight_search(
    fake: FakeProvider, tmp_path: Path
) -> None:
    old_gate, new_gate = EmbedGate(), EmbedGate()
    async with (
        running_router(_router_config(fake), RouterDeps(extra_interceptors=[old_gate])) as (old_router, _),
        running_router(_router_config(fake), RouterDeps(extra_interceptors=[new_gate])) as (new_router, _),
    ):
        service = await ServiceProcess(
            "embedding_service", _embedding_yaml(tmp_path, old_router.port, [OLD_KEY]), tmp_path, "embedding"
        ).start()
        try:
            async with _client(service, OLD_KEY) as old_key, _client(service, NEW_KEY) as new_key:
                with pytest.raises(c.UnauthenticatedError):  # not a key yet
                    await new_key.list_collections(emb.ListCollectionsRequest())
                await old_key.upsert_documents(
                    emb.UpsertDocumentsRequest(base="notes", model="vec/vec-16", documents=_documents(6))
                )
                old_gate.hold()
                in_flight = asyncio.create_task(old_key.search_documents(_search("text of doc 3")))
                await old_gate.holding()  # the search's query is inside the old router now

                service.write_config(_embedding_yaml(tmp_path, new_router.port, [NEW_KEY]))
                service.signal(signal.SIGHUP)
                await service.wait_for_log("config reloaded")

                with pytest.raises(c.UnauthenticatedError):
                    await old_key.list_collections(emb.ListCollectionsRequest())
                await new_key.upsert_documents(
                    emb.UpsertDocumentsRequest(
                        base="notes", model="vec/vec-16", documents=_documents(2, prefix="late")
                    )
                )
                late = await new_key.search_documents(_search("text of late 1"))
                assert late.hits[0].document.id == "late-01"
                # Both calls after the reload went to the new router; the old one saw only the
                # first upsert and the search it is still holding.
                assert [list(call.inputs) for call in new_gate.calls] == [
                    ["text of late 0", "text of late 1"],
                    ["text of late 1"],
                ]
                assert len(old_gate.calls) == 2 and not in_flight.done()

                old_gate.release()
                held = await in_flight  # started before the reload, finished on the old channel
                assert held.hits[0].document.id == "doc-03"
                await service.wait_for_log("previous router connection closed")
                assert await new_key.health() == "SERVING"
        finally:
            await service.stop()
    assert not any(key in message for message in service.log_messages() for key in (OLD_KEY, NEW_KEY))


async def test_invalid_and_restart_needed_configs_are_refused_and_the_admin_command_checks_first(
    fake: FakeProvider, tmp_path: Path
) -> None:
    async with running_router(_router_config(fake)) as (router, _):
        running = _embedding_yaml(tmp_path, router.port)
        service = await ServiceProcess("embedding_service", running, tmp_path, "embedding").start()
        try:
            async with _client(service) as client:
                await client.upsert_documents(
                    emb.UpsertDocumentsRequest(base="notes", model="vec/vec-16", documents=_documents(8))
                )
                invalid = "defaults: {top_k: 0}\n"
                service.write_config(invalid)
                assert await service.admin_reload() == 1  # checked first, and nothing was sent
                tightened = {**running, "defaults": {"top_k": 2, "max_top_k": 5}}
                service.write_config(tightened)
                assert await service.admin_reload() == 0
                await service.wait_for_log("config reloaded")
                # One reload reached the service: the invalid file's was never signalled.
                assert sum("config reload requested" in m for m in service.log_messages()) == 1
                with pytest.raises(c.InvalidArgumentError):  # the new limit applies to new requests
                    await client.search_documents(_search("text of doc 1", top_k=10))
                assert len((await client.search_documents(_search("text of doc 1", top_k=0))).hits) == 2

                service.write_config(invalid)  # a raw SIGHUP: the service checks by itself
                service.signal(signal.SIGHUP)
                await service.wait_for_log("config problem: defaults.top_k")

                # Valid, but moves the vectors and the listener: refused whole, the limits too.
                moved = {
                    **tightened,
                    "server": {**running["server"], "grace_period_s": 3},
                    "chroma": {"mode": "persistent", "path": str(tmp_path / "elsewhere")},
                    "defaults": {"top_k": 10, "max_top_k": 200},
                }
                service.write_config(moved)
                assert await service.admin_reload() == 0  # the file itself is valid
                await service.wait_for_log("restart needed: server, chroma changed")

                with pytest.raises(c.InvalidArgumentError):  # still the tightened config
                    await client.search_documents(_search("text of doc 1", top_k=10))
                hits = (await client.search_documents(_search("text of doc 1", top_k=0))).hits
                assert hits[0].document.id == "doc-01" and len(hits) == 2
                assert await client.health() == "SERVING"
            assert not (tmp_path / "elsewhere").exists()
        finally:
            await service.stop()


async def test_a_running_migration_carries_on_through_a_reload_on_the_new_router_and_runs_once(
    fake: FakeProvider, tmp_path: Path
) -> None:
    old_gate, new_gate = EmbedGate(), EmbedGate()
    path = tmp_path / "embedding.yaml"

    def backfill(request: rt.EmbedRequest) -> bool:
        return request.routing.preferred_model == "vec/vec-32" and PROBE_TEXT not in request.inputs

    async with (
        running_router(_router_config(fake), RouterDeps(extra_interceptors=[old_gate])) as (old_router, _),
        running_router(_router_config(fake), RouterDeps(extra_interceptors=[new_gate])) as (new_router, _),
    ):
        path.write_text(yaml.safe_dump(_embedding_yaml(tmp_path, old_router.port)))
        async with running_embedding(EmbeddingConfig.load(path)) as (app, client):
            reloader = app.reloader
            assert reloader is not None
            await client.upsert_documents(
                emb.UpsertDocumentsRequest(base="notes", model="vec/vec-16", documents=_documents(12))
            )
            old_gate.hold(backfill)
            started = await client.start_migration(
                emb.StartMigrationRequest(base="notes", target_model="vec/vec-32", batch_size=4)
            )
            await old_gate.holding()  # the first of three backfill batches is inside the old router

            path.write_text(yaml.safe_dump(_embedding_yaml(tmp_path, new_router.port)))
            assert await reloader.reload(path)
            assert reloader.draining == 1  # the old channel waits for that batch
            old_gate.release()

            migration = await app.service.wait_for_migration(started.migration.id)
            assert migration.state is MigrationState.COMPLETED
            assert migration.migrated_documents == migration.total_documents == 12
            # Three batches, each embedded exactly once: the first by the old router, the rest by
            # the new one. A restarted or duplicated backfill would have embedded more.
            assert sum(map(backfill, old_gate.calls)) == 1
            assert sum(map(backfill, new_gate.calls)) == 2
            await reloader.retired()
            assert reloader.draining == 0

            hits = (await client.search_documents(_search("text of doc 7"))).hits  # reads the target now
            assert hits[0].document.id == "doc-07"
            assert new_gate.calls[-1].routing.preferred_model == "vec/vec-32"


async def test_an_upsert_in_flight_embeds_every_batch_through_the_router_it_started_on(
    fake: FakeProvider, tmp_path: Path
) -> None:
    old_gate, new_gate = EmbedGate(), EmbedGate()
    path = tmp_path / "embedding.yaml"
    async with (
        running_router(_router_config(fake), RouterDeps(extra_interceptors=[old_gate])) as (old_router, _),
        running_router(_router_config(fake), RouterDeps(extra_interceptors=[new_gate])) as (new_router, _),
    ):
        running = {**_embedding_yaml(tmp_path, old_router.port), "defaults": {"write_batch_size": 4}}
        path.write_text(yaml.safe_dump(running))
        async with running_embedding(EmbeddingConfig.load(path)) as (app, client):
            reloader = app.reloader
            assert reloader is not None
            old_gate.hold()
            upsert = asyncio.create_task(
                client.upsert_documents(
                    emb.UpsertDocumentsRequest(base="notes", model="vec/vec-16", documents=_documents(12))
                )
            )
            await old_gate.holding()  # the first of three batches is inside the old router

            reloaded = {**_embedding_yaml(tmp_path, new_router.port), "defaults": {"write_batch_size": 8}}
            path.write_text(yaml.safe_dump(reloaded))
            assert await reloader.reload(path)
            assert reloader.draining == 1
            old_gate.release()
            assert (await upsert).upserted_count == 12
            # One request, one router and one batch size: its later batches did not move to the
            # new router, nor grow to the new size.
            assert [len(call.inputs) for call in old_gate.calls] == [4, 4, 4]
            assert new_gate.calls == []
            await reloader.retired()  # the old channel closed once the upsert was done

            again = emb.UpsertDocumentsRequest(base="notes", model="vec/vec-16", documents=_documents(8, "b"))
            await client.upsert_documents(again)
            assert [len(call.inputs) for call in new_gate.calls] == [8]  # new router, new batch size


def test_restart_needed_names_what_only_a_restart_applies_and_nothing_else(tmp_path: Path) -> None:
    running = EmbeddingConfig.model_validate(_embedding_yaml(tmp_path, 50051, [OLD_KEY]))

    def changed(**sections: Any) -> str | None:
        data = running.model_dump(mode="json")
        for name, values in sections.items():
            data[name] = {**data[name], **values} if isinstance(values, dict) else values
        return restart_needed(running, EmbeddingConfig.model_validate(data))

    assert changed() is None
    # Applied live: keys, the router connection, request defaults and migration settings.
    assert changed(auth={"keys": [{"id": "ops-new", "hash": hash_api_key(NEW_KEY)}]}) is None
    assert changed(router={"target": "10.0.0.2:50051", "timeout_s": 5}) is None
    assert changed(defaults={"top_k": 3}, migration={"batch_size": 16}) is None
    # Built once per process.
    assert changed(server={"max_concurrent_rpcs": 8}) == "server"
    assert changed(auth={"enabled": False}) == "auth.enabled"
    assert changed(telemetry={"log_level": "DEBUG"}) == "telemetry"
    assert changed(chroma={"threads": 2}) == "chroma"
    assert changed(state_path=str(tmp_path / "other.sqlite3")) == "state_path"
    assert changed(state={"lease_ttl_s": 2}) == "state"
    assert changed(server={"port": 1}, state_path=str(tmp_path / "x")) == "server, state_path"
