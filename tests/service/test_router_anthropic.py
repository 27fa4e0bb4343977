"""Anthropic through the router, over real gRPC, against the fake's Messages API on loopback.

A ``type: anthropic`` provider is served by LiteLLM, which translates the router's OpenAI-style
request into Anthropic's wire format and posts it to ``{base_url}/v1/messages``. These tests
check that translation at the network edge (key in ``x-api-key``, an ``anthropic-version``
header, the system prompt in the top-level ``system`` field, ``max_tokens``, image blocks) and
that Anthropic's answers and errors come back as the router's own results: usage and cost,
streamed usage, fallback on 429 / 529 / 5xx / in-stream ``error`` events, provider disabled on
401, caller error on 400, and UNAVAILABLE (never a silent OK) when a stream breaks after output.

The OpenAI-compatible ``backup`` provider runs on the same fake, so every fallback is seen in
the fake's request log rather than inferred.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from router_service.config import RouterConfig
from router_service.server import RouterDeps
from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider, RecordedRequest
from testkit.harness import FakeClock, chat_model, openai_provider, router_config, running_router

MESSAGES = "/v1/messages"
CHAT = "/v1/chat/completions"
CLAUDE = "claude-3-5-sonnet-20241022"
KEY = "sk-ant-test"
# LiteLLM's bundled price map has no direct-Anthropic entry for this model, so the config pins one.
CLAUDE_PRICE = (3.0, 15.0)
BACKUP_PRICE = (10.0, 20.0)


@pytest.fixture
async def fake():  # type: ignore[no-untyped-def]
    async with FakeProvider() as provider:
        yield provider


def anthropic_provider(fake: FakeProvider, *, priority: int = 10, **extra: Any) -> dict[str, Any]:
    """The provider under test; ``model_extra`` goes into its one model entry."""
    model_extra = extra.pop("model_extra", {})
    return {
        "id": "anthropic",
        "type": "anthropic",
        # The API root, as for api.anthropic.com: LiteLLM appends /v1/messages itself.
        "base_url": fake.base_url,
        "api_key": KEY,
        "priority": priority,
        "timeout_s": 5,
        "models": [chat_model(CLAUDE, price=CLAUDE_PRICE, **model_extra)],
        **extra,
    }


def with_backup(fake: FakeProvider, **sections: Any) -> RouterConfig:
    """anthropic (priority 10) first, then an OpenAI-compatible backup (priority 20) on the same fake."""
    backup = openai_provider("backup", fake.base_url, [chat_model("beta", price=BACKUP_PRICE)], priority=20)
    return router_config([anthropic_provider(fake), backup], **sections)


def ask(*messages: rt.ChatMessage, **generation: Any) -> rt.ChatRequest:
    return rt.ChatRequest(
        messages=list(messages) or [c.user("hello there")],
        generation=rt.GenerationConfig(max_tokens=generation.pop("max_tokens", 50), **generation),
    )


def ask_stream(text: str = "hello there") -> rt.StreamChatRequest:
    return rt.StreamChatRequest(messages=[c.user(text)], generation=rt.GenerationConfig(max_tokens=50))


def cost(usage: tuple[int, int], price: tuple[float, float]) -> float:
    return (usage[0] * price[0] + usage[1] * price[1]) / 1e6


def block_text(content: Any) -> str:
    """The text of an Anthropic ``content`` / ``system`` field, a string or a list of blocks."""
    if isinstance(content, str):
        return content
    return "".join(block["text"] for block in content if block.get("type") == "text")


def anthropic_calls(fake: FakeProvider) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.path == MESSAGES]


async def provider_status(router: c.RouterClient, provider_id: str = "anthropic") -> rt.ProviderStatus:
    reply = await router.get_provider_status(rt.GetProviderStatusRequest(provider_id=provider_id))
    return reply.providers[0]


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [("end_turn", rt.FINISH_REASON_STOP), ("max_tokens", rt.FINISH_REASON_LENGTH)],
    ids=["end_turn", "max_tokens"],
)
async def test_unary_chat_speaks_the_messages_api(
    fake: FakeProvider, stop_reason: str, expected: int
) -> None:
    # Anthropic's own stop_reason names go out verbatim; the router must map them back.
    fake.set_default(Behaviour(text="Bonjour, monde", usage=(21, 4), finish_reason=stop_reason))
    conversation = [
        c.system("Answer in French."),
        c.user("say hello"),
        rt.ChatMessage(role=rt.ROLE_ASSISTANT, parts=[rt.ContentPart(text="Which world?")]),
        c.user("this one"),
    ]
    async with running_router(with_backup(fake)) as (_, router):
        reply = await router.chat(ask(*conversation, temperature=0.5, stop_sequences=["END"]))

    assert reply.text == "Bonjour, monde"
    assert reply.finish_reason == expected
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (21, 4)
    assert not reply.usage.counted_locally
    assert reply.cost.cost_usd == pytest.approx(cost((21, 4), CLAUDE_PRICE))
    assert [(a.provider_id, a.outcome) for a in reply.attempts] == [
        ("anthropic", rt.ATTEMPT_OUTCOME_SUCCEEDED)
    ]
    assert fake.count(CHAT) == 0

    (call,) = anthropic_calls(fake)
    assert call.header("x-api-key") == KEY
    assert call.header("anthropic-version")  # LiteLLM pins one; the API refuses a request without
    assert call.header("authorization") is None  # the key travels only where Anthropic expects it
    body = call.json
    assert body["model"] == CLAUDE
    assert body["max_tokens"] == 50
    assert block_text(body["system"]) == "Answer in French."
    assert [(m["role"], block_text(m["content"])) for m in body["messages"]] == [
        ("user", "say hello"),
        ("assistant", "Which world?"),
        ("user", "this one"),
    ]
    assert body["temperature"] == 0.5
    assert body["stop_sequences"] == ["END"]  # Anthropic's name for OpenAI's `stop`
    assert not body.get("stream")


async def test_stream_chat_delivers_chunks_in_order_and_ends_with_real_usage(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(chunks=["Once ", "upon ", "a ", "time"], usage=(9, 4)))
    async with running_router(with_backup(fake)) as (_, router):
        messages = [m async for m in router.stream_chat(ask_stream())]

    assert [m.delta.text for m in messages if m.HasField("delta")] == ["Once ", "upon ", "a ", "time"]
    assert messages[-1].HasField("summary") and sum(m.HasField("summary") for m in messages) == 1
    summary = messages[-1].summary
    # message_start reports input tokens (and an early output count of 1), message_delta the final
    # output count: the router must report the final pair, not a sum or the early value.
    assert (summary.usage.input_tokens, summary.usage.output_tokens) == (9, 4)
    assert not summary.usage.counted_locally
    assert summary.cost.cost_usd == pytest.approx(cost((9, 4), CLAUDE_PRICE))
    assert summary.finish_reason == rt.FINISH_REASON_STOP
    assert [a.provider_id for a in summary.attempts] == ["anthropic"]
    (call,) = anthropic_calls(fake)
    assert call.json["stream"] is True and call.json["max_tokens"] == 50
    assert call.header("x-api-key") == KEY and call.completed


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_base_url_with_or_without_v1_reaches_the_messages_endpoint(
    fake: FakeProvider, suffix: str
) -> None:
    # Configs copied from OpenAI-style entries end in /v1; chat and the health probe must agree.
    provider = anthropic_provider(fake, base_url=fake.base_url + suffix, health_probe_interval_s=0.02)
    async with running_router(router_config([provider])) as (_, router):
        reply = await router.chat(ask())
        await fake.wait_for(lambda r: r.path == "/v1/models", within_s=10.0)
    assert reply.text == "echo: hello there"
    assert fake.count(MESSAGES) == 1


# --------------------------------------------------------------------------- provider failures


async def test_429_with_retry_after_falls_back_and_cools_the_provider(fake: FakeProvider) -> None:
    clock = FakeClock()
    fake.script(CLAUDE, Behaviour(status=429, retry_after="20"))
    async with running_router(with_backup(fake), RouterDeps(clock=clock)) as (_, router):
        first = await router.chat(ask())
        assert [(a.provider_id, a.error_kind) for a in first.attempts[:1]] == [("anthropic", "rate_limited")]
        assert first.attempts[-1].provider_id == "backup" and first.text == "echo: hello there"
        await router.chat(ask())
        clock.advance(10)
        await router.chat(ask())
        assert fake.count(MESSAGES) == 1  # Retry-After (20 s) has not passed: routing skips anthropic
        clock.advance(11)
        back = await router.chat(ask())
    assert [a.provider_id for a in back.attempts] == ["anthropic"]
    assert fake.count(MESSAGES) == 2 and fake.count(CHAT, "beta") == 3


@pytest.mark.parametrize(
    ("status", "kind"), [(529, "http_529"), (500, "http_500")], ids=["529-overloaded", "500-api-error"]
)
async def test_overloaded_and_server_errors_fall_back_and_open_the_breaker(
    fake: FakeProvider, status: int, kind: str
) -> None:
    clock = FakeClock()
    config = with_backup(
        fake,
        circuit_breaker={
            "failure_threshold": 2,
            "reset_timeout_s": 30,
            "half_open_max_probes": 1,
            "minimum_calls": 100,
            "window_size": 100,
        },
    )
    fake.set_default(Behaviour(status=status), model=CLAUDE)
    async with running_router(config, RouterDeps(clock=clock)) as (_, router):
        for _ in range(2):
            reply = await router.chat(ask())
            assert [(a.provider_id, a.error_kind) for a in reply.attempts] == [
                ("anthropic", kind),
                ("backup", ""),
            ]
        assert (await provider_status(router)).breaker.state == rt.BREAKER_STATE_OPEN
        skipped = await router.chat(ask())
        assert [a.provider_id for a in skipped.attempts] == ["backup"]
        assert fake.count(MESSAGES) == 2  # nothing reached anthropic while its breaker was open

        fake.set_default(Behaviour(text="recovered"), model=CLAUDE)
        clock.advance(31)  # half-open: the probe succeeds and closes the breaker
        probe = await router.chat(ask())
        assert probe.text == "recovered" and [a.provider_id for a in probe.attempts] == ["anthropic"]
        assert (await provider_status(router)).breaker.state == rt.BREAKER_STATE_CLOSED
    assert fake.count(MESSAGES) == 3  # two failures, then the one half-open probe


async def test_401_disables_the_provider_and_says_so(fake: FakeProvider) -> None:
    fake.script(CLAUDE, Behaviour(status=401))
    async with running_router(with_backup(fake)) as (_, router):
        reply = await router.chat(ask())
        assert [(a.provider_id, a.error_kind) for a in reply.attempts] == [
            ("anthropic", "auth"),
            ("backup", ""),
        ]
        await router.chat(ask())
        status = await provider_status(router)
    assert fake.count(MESSAGES) == 1  # a disabled provider gets no more traffic
    assert not status.enabled and "401" in status.disabled_reason


@pytest.mark.parametrize(
    ("message", "reason", "field"),
    [
        ("messages.0.content: field required", None, "messages"),
        ("temperature: Input should be less than or equal to 1", None, "generation.temperature"),
        ("prompt is too long: 208310 tokens > 200000 maximum", "CONTEXT_LENGTH", "messages"),
    ],
    ids=["invalid-request", "bad-temperature", "prompt-too-long"],
)
async def test_400_invalid_request_is_the_callers_error_without_fallback(
    fake: FakeProvider, message: str, reason: str | None, field: str
) -> None:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    fake.script(CLAUDE, Behaviour(status=400, error_body=body))
    async with running_router(with_backup(fake)) as (app, router):
        with pytest.raises(c.InvalidArgumentError) as exc:
            await router.chat(ask())
        snapshot = app.breakers.get("anthropic").snapshot()
        status = await provider_status(router)
    assert fake.count(MESSAGES) == 1 and fake.count(CHAT) == 0
    if reason is not None:
        assert exc.value.details.reason == reason
    assert [f for f, _ in exc.value.details.field_violations] == [field]  # Anthropic names it first
    assert message not in exc.value.message  # provider text never reaches the caller
    assert snapshot.consecutive_failures == 0 and snapshot.window_calls == 0
    assert status.enabled


# --------------------------------------------------------------------------- streams that fail


async def test_stream_error_event_before_output_falls_back(fake: FakeProvider) -> None:
    """Anthropic can answer 200 and then send ``event: error`` before any text: still a fallback."""
    fake.script(CLAUDE, Behaviour(stream_error_after_chunks=0))
    fake.set_default(Behaviour(chunks=["from ", "backup"], usage=(5, 2)), model="beta")
    async with running_router(with_backup(fake)) as (_, router):
        messages = [m async for m in router.stream_chat(ask_stream())]
    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == "from backup"
    summary = messages[-1].summary
    assert [a.provider_id for a in summary.attempts] == ["anthropic", "backup"]
    assert summary.attempts[0].outcome == rt.ATTEMPT_OUTCOME_FAILED
    assert summary.cost.cost_usd == pytest.approx(cost((5, 2), BACKUP_PRICE))


@pytest.mark.parametrize(
    "failure",
    [
        Behaviour(chunks=["c1 ", "c2 ", "c3"], die_after_chunks=1),
        Behaviour(chunks=["c1 ", "c2 ", "c3"], stream_error_after_chunks=1),
    ],
    ids=["disconnect", "error-event"],
)
async def test_stream_broken_after_output_ends_unavailable(fake: FakeProvider, failure: Behaviour) -> None:
    fake.script(CLAUDE, failure)
    async with running_router(with_backup(fake)) as (_, router):
        deltas = []
        with pytest.raises(c.UnavailableError) as exc:
            async for message in router.stream_chat(ask_stream()):
                assert not message.HasField("summary")  # never a summary, never a silent OK
                deltas.append(message.delta.text)
    assert deltas == ["c1 "]
    assert exc.value.details.reason == "STREAM_INTERRUPTED"
    assert fake.count(CHAT) == 0  # no fallback once output reached the caller


async def test_cancelled_stream_closes_the_upstream_connection(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(chunks=[f"w{i} " for i in range(200)], chunk_delay_s=0.05))
    async with running_router(with_backup(fake)) as (app, router):
        stream = router.stream_chat(ask_stream())
        first = await stream.__anext__()
        assert first.delta.text == "w0 "
        await stream.aclose()  # the client cancels the RPC
        record = await fake.wait_for_disconnect(5.0)
        assert record.path == MESSAGES and not record.completed
        assert app.breakers.get("anthropic").snapshot().consecutive_failures == 0


# --------------------------------------------------------------------------- vision and probes

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def image_request(image: rt.Image) -> rt.ChatRequest:
    parts = [rt.ContentPart(text="what is this?"), rt.ContentPart(image=image)]
    return rt.ChatRequest(messages=[rt.ChatMessage(role=rt.ROLE_USER, parts=parts)])


async def test_images_are_sent_as_anthropic_image_blocks(fake: FakeProvider) -> None:
    # Vision is routed by configured capability; nothing else is Anthropic-specific.
    vision = {"capabilities": ["vision"], "tasks": ["chat_smart", "vision"]}
    config = router_config([anthropic_provider(fake, model_extra=vision)])
    async with running_router(config) as (_, router):
        inline = await router.chat(image_request(rt.Image(data=PNG, mime_type="image/png")))
        by_url = await router.chat(image_request(rt.Image(url="https://example.com/cat.png")))
    assert inline.text == by_url.text == "echo: what is this?"
    sent = [call.json["messages"][0]["content"] for call in anthropic_calls(fake)]
    assert [[block["type"] for block in content] for content in sent] == [["text", "image"]] * 2
    assert sent[0][0] == {"type": "text", "text": "what is this?"}
    png = base64.b64encode(PNG).decode()
    assert sent[0][1]["source"] == {"type": "base64", "media_type": "image/png", "data": png}
    # A URL goes to Anthropic as a URL source: neither the router nor LiteLLM fetched it.
    assert sent[1][1]["source"] == {"type": "url", "url": "https://example.com/cat.png"}


async def test_health_probe_lists_models_with_anthropic_headers(fake: FakeProvider) -> None:
    config = router_config([anthropic_provider(fake, health_probe_interval_s=0.02)])
    async with running_router(config) as (_, router):
        probe = await fake.wait_for(lambda r: r.path == "/v1/models", within_s=10.0)
        for _ in range(500):  # a hang guard; the status is normally there at the first look
            status = await provider_status(router)
            if status.HasField("last_probe"):
                break
            await asyncio.sleep(0.01)
    assert probe.header("x-api-key") == KEY and probe.header("anthropic-version")
    assert status.last_probe.healthy
