"""Graceful shutdown, durable upserts across kill -9, and config reload on SIGHUP, with real processes.

The services run as `python -m router_service serve --config F` and
`python -m embedding_service serve --config F`; the fake provider (and, for the
embedding service, a router) run in the test's event loop.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router_service.config import RouterConfig
from router_service.server import RouterDeps
from sekha import client as c
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import embedding_model, openai_provider, router_config, running_router
from testkit.service_process import ServiceProcess

GRACE_S = 2.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def _router_yaml(fake: FakeProvider, chat_models: list[str], grace_s: float = GRACE_S) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": grace_s},
        "state": {"backend": "memory"},
        "retry": {"backoff_base_s": 0.001, "backoff_max_s": 0.01},
        "providers": [
            {
                "id": "primary",
                "type": "openai_compatible",
                "base_url": f"{fake.base_url}/v1",
                "api_key": "sk-test",
                "transport": "native",
                "timeout_s": 120,
                "models": [
                    {
                        "id": m,
                        "tasks": ["chat_smart"],
                        "context_window": 8192,
                        "price": {"input_per_million": 1, "output_per_million": 2},
                    }
                    for m in chat_models
                ],
            }
        ],
    }


def _stream_request(model: str) -> rt.StreamChatRequest:
    return rt.StreamChatRequest(
        messages=[c.user("count")],
        generation=rt.GenerationConfig(max_tokens=50),
        routing=rt.RoutingPreferences(preferred_model=model, disable_fallback=True),
    )


async def _collect(router: c.RouterClient, request: rt.StreamChatRequest, first: asyncio.Event) -> list[Any]:
    messages = []
    async for message in router.stream_chat(request, timeout_s=60):
        messages.append(message)
        first.set()
    return messages


@pytest.mark.subprocess
async def test_sigterm_flips_health_finishes_short_streams_and_exits_within_grace(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.set_default(Behaviour(chunks=[f"s{i} " for i in range(5)], chunk_delay_s=0.2), model="short")
    fake.set_default(Behaviour(chunks=[f"l{i} " for i in range(600)], chunk_delay_s=0.1), model="long")
    service = await ServiceProcess(
        "router_service", _router_yaml(fake, ["short", "long"]), tmp_path, "router"
    ).start()
    try:
        async with (
            c.RouterClient(c.ConnectionConfig(service.target)) as router,
            grpc.aio.insecure_channel(service.target) as channel,
        ):
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            started = [asyncio.Event(), asyncio.Event()]
            short = asyncio.create_task(_collect(router, _stream_request("short"), started[0]))
            long = asyncio.create_task(_collect(router, _stream_request("long"), started[1]))
            await asyncio.gather(*(event.wait() for event in started))

            service.signal(signal.SIGTERM)
            signalled = asyncio.get_running_loop().time()
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()

            messages = await short  # finishes within the grace period: complete, with its summary
            assert "".join(m.delta.text for m in messages if m.HasField("delta")) == "s0 s1 s2 s3 s4 "
            assert messages[-1].HasField("summary")
            with pytest.raises(c.SekhaError) as cut:  # outlives the grace period: never a silent OK
                await long
            assert cut.value.code != grpc.StatusCode.OK

            # The requirement itself is a bound: the process is gone within grace + 1 s.
            code = await service.wait(
                within_s=GRACE_S + 1.0 - (asyncio.get_running_loop().time() - signalled)
            )
        assert code == 0
        assert any("stopping: NOT_SERVING" in m for m in service.log_messages())
    finally:
        await service.stop()


@pytest.mark.subprocess
async def test_acknowledged_upserts_survive_kill_9(fake: FakeProvider, tmp_path: Path) -> None:
    config = router_config([openai_provider("vec", fake.base_url, [embedding_model("vec-16", 16)])])
    async with running_router(config) as (router_app, _):
        emb_yaml = {
            "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1},
            "router": {"target": f"127.0.0.1:{router_app.port}", "timeout_s": 30},
            "chroma": {"mode": "persistent", "path": str(tmp_path / "chroma")},
            "state_path": str(tmp_path / "state.sqlite3"),
        }
        service = await ServiceProcess("embedding_service", emb_yaml, tmp_path, "embedding").start()
        acknowledged: list[str] = []
        try:
            async with c.EmbeddingClient(c.ConnectionConfig(service.target)) as client:
                for batch in range(5):
                    ids = [f"doc-{batch}-{i}" for i in range(20)]
                    documents = [emb.Document(id=i, text=f"text of {i}") for i in ids]
                    reply = await client.upsert_documents(
                        emb.UpsertDocumentsRequest(base="durable", model="vec/vec-16", documents=documents)
                    )
                    assert reply.upserted_count == len(ids)
                    acknowledged.extend(ids)
            service.process.kill()  # type: ignore[union-attr]  # SIGKILL: no shutdown code runs
            assert await service.wait(within_s=10) == -signal.SIGKILL

            await service.start()  # same config, same paths
            async with c.EmbeddingClient(c.ConnectionConfig(service.target)) as client:
                found: list[str] = []
                for start in range(0, len(acknowledged), 50):
                    got = await client.get_documents(
                        emb.GetDocumentsRequest(base="durable", ids=acknowledged[start : start + 50])
                    )
                    found.extend(d.id for d in got.documents)
        finally:
            await service.stop()
    assert sorted(found) == sorted(acknowledged)


async def _models(router: c.RouterClient) -> set[str]:
    return {m.model for m in (await router.list_models()).models}


@pytest.mark.subprocess
async def test_sighup_reloads_the_config_and_refuses_an_invalid_one(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.set_default(Behaviour(chunks=[f"w{i} " for i in range(10)], chunk_delay_s=0.15), model="alpha")
    service = await ServiceProcess(
        "router_service", _router_yaml(fake, ["alpha"]), tmp_path, "router"
    ).start()
    try:
        async with c.RouterClient(c.ConnectionConfig(service.target)) as router:
            assert await _models(router) == {"alpha"}
            first = asyncio.Event()
            in_flight = asyncio.create_task(_collect(router, _stream_request("alpha"), first))
            await first.wait()

            service.write_config(_router_yaml(fake, ["alpha", "gamma"]))
            assert await service.admin_reload() == 0  # `sekha-router reload`: checks, then SIGHUP
            await service.wait_for_log("config reloaded")
            assert await _models(router) == {"alpha", "gamma"}
            reply = await router.chat(
                rt.ChatRequest(
                    messages=[c.user("hi")],
                    routing=rt.RoutingPreferences(preferred_model="gamma", disable_fallback=True),
                )
            )
            assert reply.attempts[-1].model == "gamma"

            messages = await in_flight  # started before the reload, finished on the old config
            assert "".join(m.delta.text for m in messages if m.HasField("delta")) == "".join(
                f"w{i} " for i in range(10)
            )
            assert messages[-1].HasField("summary")
            await service.wait_for_log("previous config retired")

            service.write_config("providers: [{id: broken, type: not-a-provider}]\n")
            assert await service.admin_reload() == 1  # the admin command refuses to send it...
            service.signal(signal.SIGHUP)  # ...and a raw SIGHUP is refused by the router itself
            await service.wait_for_log("config reload refused")
            assert await _models(router) == {"alpha", "gamma"}
            assert (await router.chat(rt.ChatRequest(messages=[c.user("still here")]))).text
            assert await router.health() == "SERVING"
    finally:
        await service.stop()
    assert not any("sk-test" in m for m in service.log_messages())


async def test_reload_in_process_swaps_atomically_and_closes_the_old_core_after_it_drains(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.set_default(Behaviour(chunks=[f"w{i} " for i in range(6)], chunk_delay_s=0.1))
    path = tmp_path / "router.yaml"
    import yaml

    path.write_text(yaml.safe_dump(_router_yaml(fake, ["alpha"])))
    config = RouterConfig.load(path)
    async with running_router(config, RouterDeps()) as (app, router):
        reloader = app.reloader
        assert reloader is not None
        old_core = reloader.core
        first = asyncio.Event()
        in_flight = asyncio.create_task(_collect(router, _stream_request("alpha"), first))
        await first.wait()

        path.write_text(yaml.safe_dump(_router_yaml(fake, ["alpha", "gamma"])))
        assert await reloader.reload(path)
        assert reloader.core is not old_core and app.registry is reloader.core.registry
        assert reloader.draining == 1  # the old core waits for the stream
        await in_flight
        await reloader.retired()
        assert reloader.draining == 0

        # A config that needs a restart is refused whole.
        moved = _router_yaml(fake, ["delta"])
        moved["server"]["grace_period_s"] = 5
        path.write_text(yaml.safe_dump(moved))
        assert not await reloader.reload(path)
        assert "server" in (reloader.last_error or "")
        assert await _models(router) == {"alpha", "gamma"}


async def test_a_reload_keeps_the_open_breaker_of_an_unchanged_provider(
    fake: FakeProvider, tmp_path: Path
) -> None:
    import yaml

    fake.set_default(Behaviour(status=503), model="alpha")  # primary's model is down
    settings = _router_yaml(fake, ["alpha"])
    settings["circuit_breaker"] = {"failure_threshold": 1, "reset_timeout_s": 300}
    settings["providers"][0]["priority"] = 10
    backup = {**settings["providers"][0], "id": "backup", "priority": 90}
    backup["models"] = [{**backup["models"][0], "id": "beta"}]
    settings["providers"].append(backup)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(settings))
    ask = rt.ChatRequest(messages=[c.user("hello")], generation=rt.GenerationConfig(max_tokens=20))
    async with running_router(RouterConfig.load(path), RouterDeps()) as (app, router):
        assert app.reloader is not None
        reply = await router.chat(ask)  # primary fails once and its breaker opens; backup answers
        assert [a.provider_id for a in reply.attempts] == ["primary", "backup"]

        # Only the backup's settings change: primary's breaker must stay open across the reload.
        settings["providers"][1]["timeout_s"] = 60
        path.write_text(yaml.safe_dump(settings))
        assert await app.reloader.reload(path)
        primary_calls = len([r for r in fake.requests if r.model == "alpha"])
        reply = await router.chat(ask)
        assert [a.provider_id for a in reply.attempts] == ["backup"]
        assert len([r for r in fake.requests if r.model == "alpha"]) == primary_calls
        status = await router.get_provider_status(rt.GetProviderStatusRequest(provider_id="primary"))
        assert status.providers[0].breaker.state == rt.BREAKER_STATE_OPEN

        # A changed provider starts afresh: a closed breaker, so it is tried again.
        settings["providers"][0]["timeout_s"] = 60
        path.write_text(yaml.safe_dump(settings))
        assert await app.reloader.reload(path)
        reply = await router.chat(ask)
        assert [a.provider_id for a in reply.attempts] == ["primary", "backup"]
