"""Two router PROCESSES sharing one real redis-server: the state that must hold across replicas.

The fake provider runs in this test's event loop; the routers are separate
`python -m router_service serve` processes started from a YAML file, exactly
as an operator runs them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.redis_server import RedisServer, redis_server_or_skip

pytestmark = [pytest.mark.subprocess]

CHAT = "/v1/chat/completions"
PRICE = {"input_per_million": 1000.0, "output_per_million": 2000.0}
ESTIMATE_CEILING = 0.12  # one request's maximum cost: its reservation (prompt + 50 max_tokens)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = redis_server_or_skip()
    yield server
    server.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        # Real usage close to the router's estimate (prompt + all 50 max_tokens), so the budget
        # holds about 10 requests whether they run concurrently or one after the other.
        provider.set_default(Behaviour(text="ok", usage=(10, 50)))
        yield provider


async def _start_router(config_path: Path, port: int, log: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "SEKHA_ROUTER__SERVER__PORT": str(port)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router_service",
        "serve",
        "--config",
        str(config_path),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


async def _serving(client: c.RouterClient, process: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if process.returncode is not None:
            raise AssertionError(f"router exited with {process.returncode}")
        try:
            if await client.health(timeout_s=1.0) == "SERVING":
                return
        except c.SekhaError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("router never became SERVING")


def ask(tenant: str) -> rt.ChatRequest:
    return rt.ChatRequest(
        messages=[c.user("hello there")],
        generation=rt.GenerationConfig(max_tokens=50),
        metadata={"tenant": tenant},
    )


async def test_two_router_processes_share_budget_and_breaker(
    tmp_path: Path, fake: FakeProvider, redis_server: RedisServer
) -> None:
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1},
        "retry": {"backoff_base_s": 0.001, "backoff_max_s": 0.01},
        "circuit_breaker": {"failure_threshold": 2, "minimum_calls": 2, "reset_timeout_s": 300},
        "state": {
            "backend": "redis",
            "redis_url": redis_server.url,
            "key_prefix": f"e2e{uuid.uuid4().hex[:8]}",
        },
        "budgets": {"tenants": {"acme": {"daily_usd": 1.1}}},
        "providers": [
            {
                "id": "primary",
                "type": "openai_compatible",
                "base_url": f"{fake.base_url}/v1",
                "priority": 10,
                "models": [{"id": "alpha", "tasks": ["chat_smart"], "context_window": 8192, "price": PRICE}],
            },
            {
                "id": "backup",
                "type": "openai_compatible",
                "base_url": f"{fake.base_url}/v1",
                "priority": 20,
                "models": [{"id": "beta", "tasks": ["chat_smart"], "context_window": 8192, "price": PRICE}],
            },
        ],
    }
    config_path = tmp_path / "router.yaml"
    config_path.write_text(yaml.safe_dump(config))
    ports = [_free_port(), _free_port()]
    processes = [
        await _start_router(config_path, port, tmp_path / f"router{i}.log") for i, port in enumerate(ports)
    ]
    clients = [
        c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{port}", default_timeout_s=20)) for port in ports
    ]
    try:
        for client, process in zip(clients, processes, strict=True):
            await _serving(client, process)

        # 50 concurrent requests, half through each replica, against a budget that holds about 10.
        async def one(i: int) -> bool:
            try:
                await clients[i % 2].chat(ask("acme"))
                return True
            except c.ResourceExhaustedError as refused:
                assert refused.details.reason == "BUDGET_EXHAUSTED"
                return False

        outcomes = await asyncio.gather(*(one(i) for i in range(50)))
        served = sum(outcomes)
        assert 0 < served <= 11
        assert fake.count(CHAT) == served  # refused requests never reached a provider
        for client in clients:
            report = await client.get_spend(rt.GetSpendRequest(caller="acme"))
            assert report.total_cost_usd <= 1.1 + ESTIMATE_CEILING
            assert sum(r.request_count for r in report.rows) == served

        # Successes reach the shared breaker on the next sync (failures at once), so a success of
        # replica 1 still queued could land between replica 0's two failures below and reset the
        # consecutive count: wait until replica 0 sees every served call in the shared window.
        for _ in range(100):
            primary = (
                await clients[0].get_provider_status(rt.GetProviderStatusRequest(provider_id="primary"))
            ).providers[0]
            if primary.breaker.window_calls >= served:
                break
            await asyncio.sleep(0.05)

        # failures seen by replica 0 open the breaker for replica 1
        fake.script("alpha", Behaviour(status=503), Behaviour(status=503))
        for _ in range(2):
            reply = await clients[0].chat(ask("other"))
            assert reply.attempts[-1].provider_id == "backup"
        for _ in range(100):  # replicas sync every ~0.2 s
            status = (
                await clients[1].get_provider_status(rt.GetProviderStatusRequest(provider_id="primary"))
            ).providers[0]
            if status.breaker.state == rt.BREAKER_STATE_OPEN:
                break
            await asyncio.sleep(0.05)
        assert status.breaker.state == rt.BREAKER_STATE_OPEN
        alpha_calls = fake.count(CHAT, "alpha")
        reply = await clients[1].chat(ask("other"))
        assert [a.provider_id for a in reply.attempts] == ["backup"]
        assert fake.count(CHAT, "alpha") == alpha_calls

        # Redis goes away: both replicas keep serving on local state, then recover.
        redis_server.stop()
        for client in clients:
            assert (await client.chat(ask("third"))).text == "ok"
        redis_server.start()
        for client in clients:
            assert (await client.chat(ask("third"))).text == "ok"
    finally:
        for client in clients:
            await client.close()
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            await asyncio.wait_for(process.wait(), timeout=15)
    assert all(p.returncode == 0 for p in processes), [p.returncode for p in processes]
