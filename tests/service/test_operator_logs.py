"""What an operator sees in the Router's log: one JSON line per operational event.

Real routers on loopback, providers faked at the network edge, the log captured from the same
JSON handler the service process installs (`testkit.logs`). Every test also checks that no
key, prompt or provider error text reached the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from router_service.server import RouterDeps
from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from sekha_runtime.telemetry import TelemetryConfig, setup_telemetry
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import FakeClock, chat_model, openai_provider, router_config, running_router
from testkit.logs import JsonLog, capture_json_logs
from testkit.redis_server import redis_server_or_skip

CHAT = "/v1/chat/completions"
PROMPT = "my private prompt PROMPT-ECHO-42"
LEAKY = {"error": {"message": f"invalid key sk-LEAK-123; you sent: {PROMPT}", "type": "server_error"}}
SECRETS = ("sk-LEAK-123", "PROMPT-ECHO", "sk-test-")


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def ask(text: str = PROMPT, **kwargs: Any) -> rt.ChatRequest:
    return rt.ChatRequest(messages=[c.user(text)], generation=rt.GenerationConfig(max_tokens=20), **kwargs)


def two_providers(fake: FakeProvider, **sections: Any) -> Any:
    return router_config(
        [
            openai_provider("primary", fake.base_url, [chat_model("alpha")], priority=10, transport="native"),
            openai_provider("backup", fake.base_url, [chat_model("beta")], priority=20, transport="native"),
        ],
        **sections,
    )


def occurrences(lines: list[dict[str, Any]]) -> int:
    """How many events the lines stand for: a summary line counts the ones it suppressed."""
    return sum(line.get("suppressed", 1) for line in lines)


def assert_clean(log: JsonLog) -> None:
    for secret in SECRETS:
        assert secret not in log.text, secret


async def test_failures_fallbacks_and_breaker_transitions_are_one_line_each(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(status=503, error_body=LEAKY), model="alpha")
    clock = FakeClock()
    config = two_providers(fake, circuit_breaker={"failure_threshold": 2, "initial_reset_timeout_s": 5})
    with capture_json_logs() as log:
        async with running_router(config, RouterDeps(clock=clock)) as (_, router):
            for _ in range(2):
                reply = await router.chat(ask(request_id="req-7"))
                assert reply.attempts[-1].provider_id == "backup"
            clock.advance(6)  # half-open: the probe call fails, the breaker reopens for twice as long
            await router.chat(ask())
    failed = log.events("provider_attempt_failed", provider="primary")
    assert occurrences(failed) == 3 and failed[0]["level"] == "WARNING"
    assert {k: failed[0][k] for k in ("model", "operation", "error_kind", "http_status", "request_id")} == {
        "model": "alpha",
        "operation": "chat",
        "error_kind": "http_503",
        "http_status": 503,
        "request_id": "req-7",
    }
    assert isinstance(failed[0]["latency_ms"], float)
    fallbacks = log.events("fallback", from_provider="primary", to_provider="backup")
    assert occurrences(fallbacks) == 3 and fallbacks[0]["level"] == "INFO"
    transitions = [
        (e["from_state"], e["to_state"], e["level"])
        for e in log.entries()
        if e.get("event") == "breaker_transition" and e["provider"] == "primary"
    ]
    assert transitions == [
        ("closed", "open", "WARNING"),
        ("open", "half_open", "INFO"),
        ("half_open", "open", "WARNING"),
    ]
    opened, _, reopened = log.events("breaker_transition", provider="primary")
    assert "2 failures in a row (the last: http_503)" in opened["cause"] and "open for 5 s" in opened["cause"]
    assert "probe call failed (http_503)" in reopened["cause"] and "open for 10 s" in reopened["cause"]
    assert_clean(log)


async def test_a_dead_provider_is_counted_not_flooded(fake: FakeProvider) -> None:
    """Within one window only the first failure per provider is a line; the rest are counted in
    one summary line (written at the latest when the server stops)."""
    fake.set_default(Behaviour(status=502), model="alpha")
    config = two_providers(fake, telemetry={"event_log_window_s": 3600})
    requests = 12
    with capture_json_logs() as log:
        async with running_router(config) as (_, router):
            await asyncio.gather(*(router.chat(ask(f"question {i}")) for i in range(requests)))
    failed = log.events("provider_attempt_failed", provider="primary")
    calls = fake.count(CHAT, "alpha")  # until its breaker opened
    assert calls > 2 and len(failed) == 2  # the first, then the summary
    assert "suppressed" not in failed[0] and failed[1]["suppressed"] == calls - 1
    assert failed[1]["error_kind"] == "http_502" and failed[1]["level"] == "WARNING"
    assert_clean(log)


async def test_refusals_by_rate_limit_and_budget_name_the_caller_and_the_limit(fake: FakeProvider) -> None:
    config = two_providers(
        fake,
        rate_limits={"tenants": {"acme": {"requests_per_minute": 1}}},
        budgets={"callers": {"globex": {"daily_usd": 0.000001}}},
    )
    with capture_json_logs() as log:
        async with running_router(config) as (_, router):
            await router.chat(ask(metadata={"tenant": "acme"}))
            with pytest.raises(c.ResourceExhaustedError):
                await router.chat(ask(metadata={"tenant": "acme"}))
            with pytest.raises(c.ResourceExhaustedError):
                await router.chat(ask(metadata={"tenant": "globex"}))
    [rate] = log.events("request_refused", caller="acme")
    assert (rate["limit"], rate["which"], rate["scope"], rate["level"]) == (
        "rate_limit",
        "requests_per_minute",
        "tenant:acme",
        "WARNING",
    )
    assert rate["retry_after_s"] > 0
    [budget] = log.events("request_refused", caller="globex")
    assert (budget["limit"], budget["which"], budget["scope"]) == ("budget", "daily", "caller:globex")
    assert_clean(log)


async def test_a_broken_stream_is_logged_with_what_was_delivered(fake: FakeProvider) -> None:
    fake.script("alpha", Behaviour(chunks=["a1 ", "a2 ", "a3"], stream_error_after_chunks=2))
    with capture_json_logs() as log:
        async with running_router(two_providers(fake)) as (_, router):
            with pytest.raises(c.UnavailableError):
                async for _ in router.stream_chat(rt.StreamChatRequest(messages=[c.user(PROMPT)])):
                    pass
    [broken] = log.events("stream_interrupted")
    assert (broken["provider"], broken["model"], broken["error_kind"], broken["chunks_delivered"]) == (
        "primary",
        "alpha",
        "http_502",
        2,
    )
    assert broken["level"] == "WARNING"
    assert_clean(log)


async def test_probe_results_that_change_are_logged(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(status=503))
    config = router_config(
        [openai_provider("probed", fake.base_url, [chat_model("alpha")], health_probe_interval_s=0.02)]
    )
    with capture_json_logs() as log:
        async with running_router(config):
            while fake.count("/v1/models") < 3:
                await asyncio.sleep(0.02)
            fake.set_default(Behaviour())
            while not log.events("probe_result_changed", healthy=True):
                await asyncio.sleep(0.02)
    changes = [(e["healthy"], e["level"]) for e in log.events("probe_result_changed", provider="probed")]
    assert changes == [(False, "WARNING"), (True, "INFO")]  # one line per change, not per probe
    assert log.events("probe_result_changed")[0]["error_kind"] == "http_503"


async def test_config_reloads_and_refusals_are_events(fake: FakeProvider, tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("providers: [{id: x, type: nonsense, models: []}]\n")
    with capture_json_logs() as log:
        async with running_router(two_providers(fake)) as (app, _):
            assert app.reloader is not None
            assert not await app.reloader.reload(path)
            assert await app.reloader.apply(two_providers(fake, retry={"max_attempts": 2}))
    [refused] = log.events("config_reload_refused")
    assert refused["level"] == "WARNING" and "invalid" in refused["reason"] and refused["problems"] >= 1
    [reloaded] = log.events("config_reloaded")
    assert (reloaded["level"], reloaded["generation"], reloaded["providers"]) == ("INFO", 1, 2)


async def test_event_lines_carry_the_requests_trace_and_span_ids(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(status=503), model="alpha")
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry("sekha-router", TelemetryConfig(), span_exporter=spans, environ={})
    try:
        with capture_json_logs() as log:
            async with running_router(two_providers(fake), RouterDeps(telemetry=telemetry)) as (_, router):
                await router.chat(ask())
        telemetry.force_flush()
        finished = spans.get_finished_spans()
    finally:
        telemetry.shutdown()
    [failed] = log.events("provider_attempt_failed")
    [fallback] = log.events("fallback")
    rpc = next(s for s in finished if s.kind is SpanKind.SERVER)
    assert failed["trace_id"] == fallback["trace_id"] == f"{rpc.context.trace_id:032x}"
    assert {failed["span_id"], fallback["span_id"]} <= {f"{s.context.span_id:016x}" for s in finished}
    assert_clean(log)


# ------------------------------------------------------------------ the state backend


async def gauge(port: int) -> float:
    """The router's state-backend health as Prometheus scrapes it."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    [value] = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sekha_router_state_backend_healthy" and sample.labels.get("backend") == "redis"
    ]
    return value


async def sekha_status(router_target: str, *args: str) -> str:
    """`sekha status`, the operator's command, as a process; its standard output."""
    env = {**os.environ, "SEKHA_ROUTER_TARGET": router_target, "SEKHA_EMBEDDING_TARGET": "127.0.0.1:1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sekha_cli", "status", *args, env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)  # a hang guard only
    assert process.returncode == 0
    return out.decode()


async def test_a_redis_outage_shows_in_status_metrics_the_log_and_the_cli(fake: FakeProvider) -> None:
    redis = redis_server_or_skip()
    telemetry = setup_telemetry("sekha-router", TelemetryConfig(), prometheus=True, environ={})
    state = {"backend": "redis", "redis_url": redis.url, "redis_timeout_s": 2.0, "reconnect_interval_s": 0.05}
    config = two_providers(fake, state=state, server={"metrics_port": 0})
    try:
        with capture_json_logs() as log:
            async with running_router(config, RouterDeps(telemetry=telemetry)) as (app, router):
                assert app.metrics_port is not None
                before = (await router.get_provider_status()).state_backend
                redis.stop()
                await router.chat(ask())  # still served, on local state
                while (await router.get_provider_status()).state_backend.healthy:
                    await asyncio.sleep(0.05)  # the breaker sync notices within its interval
                during = (await router.get_provider_status()).state_backend
                down_gauge = await gauge(app.metrics_port)
                cli = json.loads(await sekha_status(f"127.0.0.1:{app.port}", "--json"))
                table = await sekha_status(f"127.0.0.1:{app.port}")
                redis.start()
                while not (await router.get_provider_status()).state_backend.healthy:
                    await asyncio.sleep(0.05)
                after = (await router.get_provider_status()).state_backend
                up_gauge = await gauge(app.metrics_port)
    finally:
        redis.close()
        telemetry.shutdown()
    assert (before.backend, before.healthy, before.HasField("change_time")) == ("redis", True, False)
    assert not during.healthy and "local state" in during.message and during.HasField("change_time")
    assert after.healthy and after.change_time.ToSeconds() >= during.change_time.ToSeconds()
    assert (down_gauge, up_gauge) == (0, 1)
    assert cli["state_backend"]["healthy"] is False and "local state" in cli["state_backend"]["message"]
    assert cli["providers"] and cli["spend"] == {"available": False, "reason": "UNAVAILABLE"}
    assert "state      redis unreachable: this router serves" in table
    lost = log.events("state_backend_lost")[0]  # a busy machine may time out a command later too
    assert (lost["level"], lost["backend"]) == ("WARNING", "redis") and lost["error"]
    recovered = log.events("state_backend_recovered")[0]
    assert (recovered["level"], recovered["backend"]) == ("INFO", "redis")
    assert redis.url.split("//")[1] not in log.text  # nothing Redis said or where it lives
