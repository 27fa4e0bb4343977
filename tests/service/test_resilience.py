"""How the Router recovers, through real gRPC against providers faked at the network edge:

* a provider disabled by a 401/403 is re-checked by a probe (on a back-off, and at once on a
  config reload) and enabled again when the probe is accepted;
* a provider that timed out is not called again within the request, and a request without a
  deadline gets the configured default one;
* a lone provider that refuses connections: the caller is told so, naming the provider and its
  address, and the breaker's first opening is short, so the provider is used again soon.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router_service.server import RouterDeps
from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import FakeClock, chat_model, openai_provider, router_config, running_router
from testkit.logs import capture_json_logs

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


@pytest.fixture
async def keyed() -> AsyncIterator[FakeProvider]:
    """The provider whose key gets refused (its own server, so its probes can be scripted)."""
    async with FakeProvider() as provider:
        yield provider


def ask(text: str = "hello") -> rt.ChatRequest:
    return rt.ChatRequest(messages=[c.user(text)], generation=rt.GenerationConfig(max_tokens=20))


def keyed_and_backup(keyed: FakeProvider, fake: FakeProvider, **breaker: Any) -> Any:
    return router_config(
        [
            openai_provider("keyed", keyed.base_url, [chat_model("alpha")], priority=10, transport="native"),
            openai_provider("backup", fake.base_url, [chat_model("beta")], priority=20, transport="native"),
        ],
        circuit_breaker=breaker,
    )


async def status_of(router: c.RouterClient, provider_id: str) -> rt.ProviderStatus:
    reply = await router.get_provider_status(rt.GetProviderStatusRequest(provider_id=provider_id))
    return reply.providers[0]


async def until_enabled(router: c.RouterClient, provider_id: str) -> rt.ProviderStatus:
    for _ in range(200):  # the re-check runs in the router's background: poll its status
        status = await status_of(router, provider_id)
        if status.enabled:
            break
        await asyncio.sleep(0.05)
    return status


# ------------------------------------------------------------------ 401/403: re-checked


async def test_a_provider_disabled_by_a_401_is_rechecked_and_enabled_again(
    keyed: FakeProvider, fake: FakeProvider
) -> None:
    # keyed refuses the chat and the first re-check, then accepts (its key was rotated upstream)
    keyed.script(None, Behaviour(status=401), Behaviour(status=401))
    config = keyed_and_backup(keyed, fake, auth_recheck_initial_s=0.05, auth_recheck_max_s=0.1)
    with capture_json_logs() as log:
        async with running_router(config) as (_, router):
            first = await router.chat(ask())
            assert [a.error_kind for a in first.attempts] == ["auth", ""]
            disabled = await status_of(router, "keyed")
            enabled = await until_enabled(router, "keyed")
            again = await router.chat(ask())
    assert not disabled.enabled and "401" in disabled.disabled_reason
    assert "re-checked by a probe" in disabled.disabled_reason
    assert enabled.enabled and enabled.disabled_reason == ""
    assert enabled.last_probe.healthy
    assert again.attempts[-1].provider_id == "keyed" and again.text == "echo: hello"
    assert keyed.count(MODELS) == 2  # refused once, then accepted
    [off] = log.events("provider_disabled", provider="keyed")
    assert (off["level"], off["http_status"]) == ("WARNING", 401)
    [still] = log.events("provider_recheck_refused", provider="keyed")
    assert still["level"] == "WARNING" and still["next_check_s"] > 0
    [on] = log.events("provider_reenabled", provider="keyed")
    assert (on["level"], on["via"]) == ("INFO", "probe")
    assert "sk-test-" not in log.text


async def test_a_reload_rechecks_a_disabled_provider_at_once(keyed: FakeProvider, fake: FakeProvider) -> None:
    keyed.script(None, Behaviour(status=403), Behaviour(status=403))  # the chat, the first re-check
    config = keyed_and_backup(keyed, fake, auth_recheck_initial_s=3600)  # only a reload re-checks
    async with running_router(config) as (app, router):
        await router.chat(ask())
        assert app.reloader is not None
        assert await app.reloader.apply(config)  # same file: the key is still refused
        while keyed.count(MODELS) < 1:
            await asyncio.sleep(0.02)
        still = await status_of(router, "keyed")
        assert await app.reloader.apply(config)  # now it is accepted
        enabled = await until_enabled(router, "keyed")
        served = await router.chat(ask())
    assert not still.enabled and "403" in still.disabled_reason
    assert enabled.enabled and served.attempts[-1].provider_id == "keyed"
    assert keyed.count(CHAT) == 2 and keyed.count(MODELS) == 2


# ------------------------------------------------------------------ hung providers, deadlines


async def test_a_provider_that_timed_out_is_not_called_again_in_the_request(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(latency_s=3.0))
    config = router_config(
        [openai_provider("hung", fake.base_url, [chat_model("alpha")], timeout_s=0.5, transport="native")]
    )
    async with running_router(config) as (_, router):
        with pytest.raises(c.UnavailableError) as failed:
            await router.chat(ask())
    assert fake.count(CHAT) == 1  # not retry.max_attempts (3) times
    assert "hung/alpha: no answer within 0.5 s" in failed.value.message
    assert failed.value.details.metadata["attempts"] == "hung/alpha:timeout"


async def test_a_request_without_a_deadline_gets_the_configured_default(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(latency_s=10.0))
    config = router_config(
        [openai_provider("slow", fake.base_url, [chat_model("alpha")], timeout_s=60, transport="native")],
        retry={"default_deadline_s": 0.5},
    )
    async with running_router(config) as (app, _):
        no_deadline = c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{app.port}", default_timeout_s=None))
        try:
            with pytest.raises(c.DeadlineExceededError) as late:
                await no_deadline.chat(ask())
        finally:
            await no_deadline.close()
        record = await fake.wait_for_disconnect(5.0)
        snapshot = app.breakers.get("slow").snapshot()
    assert "retry.default_deadline_s" in late.value.message and "0.5 s" in late.value.message
    assert not record.completed and fake.count(CHAT) == 1
    assert snapshot.consecutive_failures == 0  # the router's own deadline is not the provider's fault


# ------------------------------------------------------------------ a lone provider, not started yet


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("transport", ["native", "litellm"])
async def test_a_lone_provider_refusing_connections_is_named_and_back_in_seconds(transport: str) -> None:
    port = _unused_port()  # nothing listens here until the "server" is started below
    clock = FakeClock()
    config = router_config(
        [openai_provider("lonely", f"http://127.0.0.1:{port}", [chat_model("alpha")], transport=transport)],
        circuit_breaker={"failure_threshold": 5},
    )
    async with running_router(config, RouterDeps(clock=clock)) as (_, router):
        with pytest.raises(c.UnavailableError) as first:
            await router.chat(ask())
        with pytest.raises(c.UnavailableError) as second:
            await router.chat(ask())  # two more refusals open the breaker; the last call is skipped
        status = await status_of(router, "lonely")
        async with FakeProvider(port=port):  # the user starts the server
            clock.advance(2.5)  # past the breaker's first, short opening
            reply = await router.chat(ask())
    refused = f"lonely/alpha: connection refused by 127.0.0.1:{port}"
    assert first.value.message == f"no provider could serve the request: {refused} (3 attempts)"
    assert second.value.message == (
        f"no provider could serve the request: {refused} (2 attempts); lonely/alpha: circuit breaker open"
    )
    assert status.breaker.state == rt.BREAKER_STATE_OPEN
    assert reply.text == "echo: hello" and reply.attempts[-1].provider_id == "lonely"


async def test_the_unavailable_message_is_bounded(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(status=503))
    long_id = "m" * 300
    providers = [
        openai_provider(f"p{i}", fake.base_url, [chat_model(f"{long_id}{i}")], transport="native")
        for i in range(10)
    ]
    config = router_config(providers, retry={"max_attempts": 10})
    async with running_router(config) as (_, router):
        with pytest.raises(c.UnavailableError) as failed:
            await router.chat(ask())
    message = failed.value.message
    assert len(message) < 1000 and message.endswith("more")
    assert "p0/" in message and "HTTP 503" in message
    assert failed.value.details.metadata["attempts"].startswith("p0/")  # the details, bounded too
