"""`sekha-router serve --workers 2`: two router processes on one port, sharing state in Redis.

One supervisor process starts two workers that bind the same gRPC port with SO_REUSEPORT; every
request here opens a fresh connection, so the kernel spreads them over both workers. Each worker
serves its own Prometheus port (metrics_port + index), which is how the test sees that both did
serve: their request counters add up to what was sent.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.redis_server import RedisServer, redis_server_or_skip

pytestmark = [pytest.mark.e2e, pytest.mark.subprocess, pytest.mark.redis, pytest.mark.slow]

CHAT = "/v1/chat/completions"
PRICE = {"input_per_million": 1000.0, "output_per_million": 2000.0}
_REQUESTS = re.compile(r'^sekha_rpc_requests_total\{[^}]*rpc="Chat"[^}]*\} ([0-9.e+]+)$', re.M)


def _free_port_pair() -> int:
    """A port p with p and p + 1 free (the two workers' metrics ports)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no two adjacent free ports")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = redis_server_or_skip()
    yield server
    server.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        provider.set_default(Behaviour(text="ok", usage=(10, 50)))
        yield provider


def _config(fake: FakeProvider, redis_url: str, metrics_port: int, backend: str = "redis") -> dict:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1, "metrics_port": metrics_port},
        "retry": {"backoff_base_s": 0.001, "backoff_max_s": 0.01},
        "circuit_breaker": {"failure_threshold": 2, "minimum_calls": 2, "reset_timeout_s": 300},
        "state": {"backend": backend, "redis_url": redis_url, "key_prefix": f"w{uuid.uuid4().hex[:8]}"},
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


def ask(tenant: str) -> rt.ChatRequest:
    return rt.ChatRequest(
        messages=[c.user("hello there")],
        generation=rt.GenerationConfig(max_tokens=50),
        metadata={"tenant": tenant},
    )


async def _fresh_chat(port: int, request: rt.ChatRequest) -> rt.ChatResponse:
    """One request on its own connection, so the kernel picks the worker anew."""
    # A local subchannel pool: channels in one process otherwise share one TCP connection.
    config = c.ConnectionConfig(
        f"127.0.0.1:{port}", default_timeout_s=20, channel_options=(("grpc.use_local_subchannel_pool", 1),)
    )
    async with c.RouterClient(config) as client:
        return await client.chat(request)


async def _breaker_open(port: int, provider_id: str) -> bool:
    config = c.ConnectionConfig(
        f"127.0.0.1:{port}", default_timeout_s=20, channel_options=(("grpc.use_local_subchannel_pool", 1),)
    )
    async with c.RouterClient(config) as client:
        status = await client.get_provider_status(rt.GetProviderStatusRequest(provider_id=provider_id))
    return status.providers[0].breaker.state == rt.BREAKER_STATE_OPEN


async def _chat_requests_served(metrics_port: int) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{metrics_port}/metrics") as reply,
    ):
        text = await reply.text()
    return sum(float(value) for value in _REQUESTS.findall(text))


def _text(log: Path) -> str:
    return log.read_text()


async def _serving_port(log: Path, supervisor: asyncio.subprocess.Process, workers: int) -> int:
    for _ in range(600):
        if supervisor.returncode is not None:
            raise AssertionError(f"supervisor exited with {supervisor.returncode}: {_text(log)[-2000:]}")
        ports = re.findall(r"router serving on port (\d+)", _text(log))
        if len(ports) >= workers:
            assert len(set(ports)) == 1, ports  # every worker on the one port
            return int(ports[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"workers never served: {_text(log)[-2000:]}")


async def test_two_workers_share_one_port_a_budget_and_a_breaker(
    tmp_path: Path, fake: FakeProvider, redis_server: RedisServer
) -> None:
    metrics_port = _free_port_pair()
    config_path = tmp_path / "router.yaml"
    config_path.write_text(yaml.safe_dump(_config(fake, redis_server.url, metrics_port)))
    log = tmp_path / "router.log"
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router_service",
        "serve",
        "--config",
        str(config_path),
        "--workers",
        "2",
        env={**os.environ, "SEKHA_LOG_LEVEL": "INFO"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        port = await _serving_port(log, supervisor, workers=2)

        # 40 requests on 40 connections against a budget that holds about 10: the budget lives in
        # Redis, so the two workers together serve no more than one process would.
        async def one(_: int) -> bool:
            try:
                await _fresh_chat(port, ask("acme"))
                return True
            except c.ResourceExhaustedError as refused:
                assert refused.details.reason == "BUDGET_EXHAUSTED"
                return False

        served = sum(await asyncio.gather(*(one(i) for i in range(40))))
        assert 0 < served <= 11
        assert fake.count(CHAT) == served
        # Both workers answered some of them (each counts its own RPCs on its own metrics port).
        # (A worker counts an RPC as it finishes, just after the caller has the answer: poll briefly.)
        for _ in range(50):
            per_worker = [await _chat_requests_served(metrics_port + i) for i in range(2)]
            if sum(per_worker) == 40:
                break
            await asyncio.sleep(0.1)
        assert sum(per_worker) == 40 and all(n > 0 for n in per_worker), per_worker

        # Failures seen by whichever worker opens the breaker for both: once open, no request on
        # any connection reaches the failing model.
        # Workers share the breaker's window through Redis and sync about every 0.2 s
        # (eventually consistent): fail the model until ten status reads in a row, each on a fresh
        # connection (so from either worker), see the breaker open.
        fake.script("alpha", *[Behaviour(status=503)] * 8)
        in_a_row = 0
        for _ in range(200):
            if in_a_row == 0:
                assert (await _fresh_chat(port, ask("other"))).attempts[-1].provider_id == "backup"
            in_a_row = in_a_row + 1 if await _breaker_open(port, "primary") else 0
            if in_a_row == 10:
                break
            await asyncio.sleep(0.05)
        assert in_a_row == 10
        alpha_calls = fake.count(CHAT, "alpha")
        for _ in range(10):
            reply = await _fresh_chat(port, ask("other"))
            assert [a.provider_id for a in reply.attempts] == ["backup"]
        assert fake.count(CHAT, "alpha") == alpha_calls

        # A worker that dies is replaced; the port keeps answering meanwhile.
        pid = int(re.findall(r"router worker 0 started \(pid (\d+)\)", _text(log))[0])
        os.kill(pid, signal.SIGKILL)
        await _serving_port(log, supervisor, workers=3)  # the replacement's "serving on port"
        assert f"router worker 0 (pid {pid}) exited with code -9; restarting" in _text(log)
        assert (await _fresh_chat(port, ask("other"))).text == "ok"
    finally:
        if supervisor.returncode is None:
            supervisor.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(supervisor.wait(), timeout=20)
    assert code == 0, _text(log)[-2000:]
    assert "stopping 2 router workers (SIGTERM)" in _text(log)


async def test_more_than_one_worker_without_redis_state_is_refused(
    tmp_path: Path, fake: FakeProvider
) -> None:
    config_path = tmp_path / "router.yaml"
    config_path.write_text(yaml.safe_dump(_config(fake, "redis://127.0.0.1:1/0", 0, backend="sqlite")))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router_service",
        "serve",
        "--config",
        str(config_path),
        "--workers",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "config error: server.workers: 2 workers need state.backend: redis" in stderr.decode()
