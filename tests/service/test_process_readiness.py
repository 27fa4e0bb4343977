"""What a real router process promises around its start and its stop.

* SERVING means ready: everything a request needs (the tokenizer encodings) is loaded before
  health says SERVING, so the first request loads nothing.
* During the grace period after SIGTERM, health checks are still answered, with NOT_SERVING,
  while in-flight calls finish.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.service_process import ServiceProcess

GRACE_S = 3.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def _router_yaml(fake: FakeProvider) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": GRACE_S},
        "state": {"backend": "memory"},
        "providers": [
            {
                "id": "primary",
                "type": "openai_compatible",
                "base_url": f"{fake.base_url}/v1",
                "api_key": "sk-test",
                "transport": "native",
                "models": [{"id": "alpha", "tasks": ["chat_smart"], "context_window": 8192}],
            }
        ],
    }


def _bundled_tokenizer_files() -> Path:
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"


async def test_the_tokenizers_are_loaded_before_health_says_serving(
    fake: FakeProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The router reads its encodings from this copy; it is deleted once the router says SERVING.
    # A first request that still had to load an encoding would find nothing there (and no network).
    encodings = tmp_path / "encodings"
    shutil.copytree(_bundled_tokenizer_files(), encodings)
    monkeypatch.setenv("CUSTOM_TIKTOKEN_CACHE_DIR", str(encodings))
    service = await ServiceProcess("router_service", _router_yaml(fake), tmp_path, "router").start()
    try:
        async with c.RouterClient(c.ConnectionConfig(service.target)) as router:
            assert await router.health() == "SERVING"
            shutil.rmtree(encodings)
            reply = await router.chat(rt.ChatRequest(messages=[c.user("the first request")]))
            assert reply.text == "echo: the first request"
            assert reply.routing.estimated_input_tokens > 0  # counted, with the preloaded encoding
    finally:
        await service.stop()


async def test_health_answers_not_serving_during_the_grace_period(fake: FakeProvider, tmp_path: Path) -> None:
    fake.set_default(Behaviour(chunks=[f"w{i} " for i in range(400)], chunk_delay_s=0.05))
    service = await ServiceProcess("router_service", _router_yaml(fake), tmp_path, "router").start()
    try:
        async with (
            c.RouterClient(c.ConnectionConfig(service.target)) as router,
            grpc.aio.insecure_channel(service.target) as channel,
        ):
            first = asyncio.Event()

            async def stream() -> None:
                request = rt.StreamChatRequest(messages=[c.user("a long answer")])
                async for _ in router.stream_chat(request, timeout_s=60):
                    first.set()

            in_flight = asyncio.create_task(stream())
            await first.wait()
            service.signal(signal.SIGTERM)
            await service.wait_for_log("stopping: NOT_SERVING")

            health = health_pb2_grpc.HealthStub(channel)
            for service_name in ("", "sekha.router.v1.RouterService"):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=service_name), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(c.UnavailableError):  # new work is refused while the old drains
                await router.chat(rt.ChatRequest(messages=[c.user("too late")]), timeout_s=5)
            assert not in_flight.done()  # the stream is still being served
            with pytest.raises(c.SekhaError):  # it outlives the grace period: cut, never a silent OK
                await in_flight
        assert await service.wait(within_s=GRACE_S + 5) == 0
    finally:
        await service.stop()


async def test_a_router_refuses_to_start_without_auth_on_a_non_loopback_address(
    fake: FakeProvider, tmp_path: Path
) -> None:
    config = _router_yaml(fake)
    config["server"]["host"] = "0.0.0.0"
    service = ServiceProcess("router_service", config, tmp_path, "router")
    with pytest.raises(AssertionError, match="exited with 2"):
        await service.start()
    log = service.log_text()
    assert "auth.allow_unauthenticated_non_loopback" in log and "Traceback" not in log
    await service.stop()
