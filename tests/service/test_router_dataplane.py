"""Chat, StreamChat and Embed over real gRPC against a fake provider on loopback.

Each test asserts on the fake provider's request log, so a fallback, a
skipped dead provider or a closed upstream connection is observed at the
network edge, not inferred. Both transports run: the lean OpenAI-compatible
path ("native") and LiteLLM's real HTTP path ("litellm").
"""

from __future__ import annotations

import asyncio
import base64

import pytest

from router_service.server import RouterDeps
from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import (
    FakeClock,
    chat_model,
    embedding_model,
    openai_provider,
    router_config,
    running_router,
)

CHAT = "/v1/chat/completions"
TRANSPORTS = ["native", "litellm"]


@pytest.fixture
async def fake():  # type: ignore[no-untyped-def]
    async with FakeProvider() as provider:
        yield provider


def two_providers(fake: FakeProvider, transport: str, primary_timeout_s: float = 5.0, **sections):  # type: ignore[no-untyped-def]
    """primary (priority 10, model alpha) and backup (priority 20, model beta), same fake server."""
    return router_config(
        [
            openai_provider(
                "primary",
                fake.base_url,
                [chat_model("alpha", price=(1.0, 2.0))],
                priority=10,
                transport=transport,
                timeout_s=primary_timeout_s,
            ),
            openai_provider(
                "backup",
                fake.base_url,
                [chat_model("beta", price=(10.0, 20.0))],
                priority=20,
                transport=transport,
                timeout_s=5,
            ),
        ],
        **sections,
    )


def ask(text: str = "hello there", **kwargs) -> rt.ChatRequest:  # type: ignore[no-untyped-def]
    return rt.ChatRequest(messages=[c.user(text)], generation=rt.GenerationConfig(max_tokens=50), **kwargs)


def ask_stream(text: str = "hello there") -> rt.StreamChatRequest:
    return rt.StreamChatRequest(messages=[c.user(text)], generation=rt.GenerationConfig(max_tokens=50))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_success_on_first_candidate_with_usage_and_real_cost(
    fake: FakeProvider, transport: str
) -> None:
    fake.set_default(Behaviour(text="the answer", usage=(12, 3)))
    async with running_router(two_providers(fake, transport)) as (_, router):
        reply = await router.chat(ask(request_id="req-1"))
    assert reply.text == "the answer" and reply.request_id == "req-1"
    assert fake.count(CHAT, "alpha") == 1 and fake.count(CHAT, "beta") == 0
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (12, 3)
    assert not reply.usage.counted_locally
    assert reply.cost.cost_usd == pytest.approx((12 * 1.0 + 3 * 2.0) / 1e6)
    assert reply.finish_reason == rt.FINISH_REASON_STOP
    assert [a.outcome for a in reply.attempts] == [rt.ATTEMPT_OUTCOME_SUCCEEDED]
    # the provider entry's own key went upstream
    assert fake.requests[-1].headers.get("Authorization") == "Bearer sk-test-primary"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (Behaviour(status=503), "http_503"),
        (Behaviour(reset=True), None),
        (Behaviour(latency_s=3.0), "timeout"),
    ],
    ids=["503", "reset", "timeout"],
)
async def test_fallback_to_second_candidate(
    fake: FakeProvider, transport: str, failure: Behaviour, kind: str | None
) -> None:
    fake.script("alpha", failure)
    # primary gives up after 1 s; the fake waits 3 s
    async with running_router(two_providers(fake, transport, primary_timeout_s=1.0)) as (_, router):
        reply = await router.chat(ask())
    assert fake.count(CHAT, "alpha") == 1 and fake.count(CHAT, "beta") == 1
    first, second = reply.attempts
    assert (first.provider_id, first.outcome) == ("primary", rt.ATTEMPT_OUTCOME_FAILED)
    if kind is not None:
        assert first.error_kind == kind
    assert (second.provider_id, second.outcome) == ("backup", rt.ATTEMPT_OUTCOME_SUCCEEDED)
    assert reply.routing.chosen.provider_id == "primary"  # the plan; attempts say who served


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_caller_errors_do_not_fall_back_or_feed_the_breaker(fake: FakeProvider, transport: str) -> None:
    context_error = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    }
    fake.script("alpha", Behaviour(status=400), Behaviour(status=400, error_body=context_error))
    async with running_router(two_providers(fake, transport)) as (app, router):
        with pytest.raises(c.InvalidArgumentError) as bad:
            await router.chat(ask())
        with pytest.raises(c.InvalidArgumentError) as too_long:
            await router.chat(ask())
        snapshot = app.breakers.get("primary").snapshot()
    assert fake.count(CHAT, "alpha") == 2 and fake.count(CHAT, "beta") == 0
    assert too_long.value.details.reason == "CONTEXT_LENGTH"
    assert "context window" in too_long.value.message
    assert not bad.value.details.field_violations  # the provider named no field: none is blamed
    assert bad.value.message.startswith("rejected by the provider")
    assert snapshot.consecutive_failures == 0 and snapshot.window_calls == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_providers_400_names_the_field_it_objected_to_or_none(
    fake: FakeProvider, transport: str
) -> None:
    def rejection(param: str | None, code: str) -> dict[str, dict[str, str | None]]:
        message = "Invalid value: the prompt said 'hello there'"  # free text: never passed on
        return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}

    fake.script(
        "alpha",
        Behaviour(status=400, error_body=rejection("temperature", "invalid_value")),
        Behaviour(status=400, error_body=rejection("stop", "invalid_value")),
        Behaviour(status=400, error_body=rejection("response_format", "unsupported_parameter")),
    )
    async with running_router(two_providers(fake, transport)) as (_, router):
        refusals = []
        for _ in range(3):
            with pytest.raises(c.InvalidArgumentError) as refused:
                await router.chat(ask())
            refusals.append(refused.value)
    temperature, stop, unknown = refusals
    assert [f for f, _ in temperature.details.field_violations] == ["generation.temperature"]
    assert [f for f, _ in stop.details.field_violations] == ["generation.stop_sequences"]
    assert not unknown.details.field_violations  # a parameter we never send: no field of ours is blamed
    assert "rejected by the provider" in unknown.message and "unsupported_parameter" in unknown.message
    assert unknown.details.metadata["provider_code"] == "unsupported_parameter"
    for refusal in refusals:
        assert refusal.details.reason == "BAD_REQUEST"
        assert "hello there" not in refusal.message and "Invalid value" not in refusal.message
    assert fake.count(CHAT, "beta") == 0


async def test_breaker_opens_skips_dead_provider_then_half_open_probe_recovers(fake: FakeProvider) -> None:
    clock = FakeClock()
    config = two_providers(
        fake,
        "native",
        circuit_breaker={
            "failure_threshold": 3,
            "reset_timeout_s": 30,
            "half_open_max_probes": 1,
            "minimum_calls": 100,
            "window_size": 100,
        },
    )
    fake.set_default(Behaviour(status=503), model="alpha")
    async with running_router(config, RouterDeps(clock=clock)) as (_, router):
        for _ in range(3):
            await router.chat(ask())  # each falls back to beta
        assert fake.count(CHAT, "alpha") == 3
        status = (
            await router.get_provider_status(rt.GetProviderStatusRequest(provider_id="primary"))
        ).providers[0]
        assert status.breaker.state == rt.BREAKER_STATE_OPEN
        for _ in range(5):
            reply = await router.chat(ask())
            assert reply.attempts[0].provider_id == "backup"  # the open breaker skips primary in routing
        assert fake.count(CHAT, "alpha") == 3  # the dead provider received nothing while open

        clock.advance(31)  # half-open: one probe; it fails -> open again
        await router.chat(ask())
        assert fake.count(CHAT, "alpha") == 4
        await router.chat(ask())
        assert fake.count(CHAT, "alpha") == 4

        fake.set_default(Behaviour(text="back"), model="alpha")
        clock.advance(31)  # the probe succeeds -> closed, traffic returns
        first_back = await router.chat(ask())
        assert first_back.text == "back" and first_back.attempts[-1].provider_id == "primary"
        await router.chat(ask())
        assert fake.count(CHAT, "alpha") == 6
        status = (
            await router.get_provider_status(rt.GetProviderStatusRequest(provider_id="primary"))
        ).providers[0]
        assert status.breaker.state == rt.BREAKER_STATE_CLOSED


async def test_retry_after_from_429_keeps_the_provider_out_until_it_passes(fake: FakeProvider) -> None:
    clock = FakeClock()
    fake.script("alpha", Behaviour(status=429, retry_after="20"))
    async with running_router(two_providers(fake, "native"), RouterDeps(clock=clock)) as (_, router):
        first = await router.chat(ask())
        assert first.attempts[0].error_kind == "rate_limited"
        await router.chat(ask())
        clock.advance(10)
        await router.chat(ask())
        assert fake.count(CHAT, "alpha") == 1  # still cooling down
        clock.advance(11)
        reply = await router.chat(ask())
        assert reply.attempts[-1].provider_id == "primary"
        assert fake.count(CHAT, "alpha") == 2


async def test_all_candidates_failing_is_unavailable_with_attempts(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(status=502))
    async with running_router(two_providers(fake, "native")) as (_, router):
        with pytest.raises(c.UnavailableError) as exc:
            await router.chat(ask())
    assert exc.value.details.retry_after_s is not None
    attempts = exc.value.details.metadata["attempts"].split(",")
    assert attempts[:2] == ["primary/alpha:http_502", "backup/beta:http_502"]
    assert fake.count(CHAT) == 3  # retry.max_attempts calls, no more


async def test_provider_401_disables_it_and_says_so(fake: FakeProvider) -> None:
    fake.script("alpha", Behaviour(status=401))
    async with running_router(two_providers(fake, "native")) as (_, router):
        reply = await router.chat(ask())
        assert reply.attempts[0].error_kind == "auth" and reply.attempts[-1].provider_id == "backup"
        await router.chat(ask())
        status = (
            await router.get_provider_status(rt.GetProviderStatusRequest(provider_id="primary"))
        ).providers[0]
    assert fake.count(CHAT, "alpha") == 1
    assert not status.enabled and "401" in status.disabled_reason


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stream_falls_back_before_first_chunk_and_carries_usage(
    fake: FakeProvider, transport: str
) -> None:
    fake.script("alpha", Behaviour(status=503))
    fake.set_default(Behaviour(chunks=["one ", "two ", "three"], usage=(7, 3)), model="beta")
    async with running_router(two_providers(fake, transport)) as (_, router):
        messages = [m async for m in router.stream_chat(ask_stream())]
    deltas = [m.delta.text for m in messages if m.HasField("delta")]
    assert "".join(deltas) == "one two three"
    summary = messages[-1].summary
    assert messages[-1].HasField("summary") and sum(m.HasField("summary") for m in messages) == 1
    assert (summary.usage.input_tokens, summary.usage.output_tokens) == (7, 3)
    assert summary.cost.cost_usd == pytest.approx((7 * 10.0 + 3 * 20.0) / 1e6)
    assert [a.provider_id for a in summary.attempts] == ["primary", "backup"]
    assert fake.count(CHAT, "alpha") == 1 and fake.count(CHAT, "beta") == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stream_broken_after_output_ends_unavailable_without_duplicates(
    fake: FakeProvider, transport: str
) -> None:
    fake.script("alpha", Behaviour(chunks=["a1 ", "a2 ", "a3 ", "a4"], die_after_chunks=2))
    async with running_router(two_providers(fake, transport)) as (_, router):
        deltas = []
        with pytest.raises(c.UnavailableError) as exc:
            async for message in router.stream_chat(ask_stream()):
                assert not message.HasField("summary")
                deltas.append(message.delta.text)
    # What reached the caller is a prefix of the answer, never repeated; the lean path delivers
    # every chunk the provider sent before the break (LiteLLM's path may lose the last one).
    text = "".join(deltas)
    assert text == "a1 a2 " if transport == "native" else text in ("a1 ", "a1 a2 ")
    assert exc.value.details.reason == "STREAM_INTERRUPTED"
    assert fake.count(CHAT, "beta") == 0  # no fallback once output reached the caller


async def test_stream_interrupted_after_a_fallback_names_every_attempt(fake: FakeProvider) -> None:
    fake.script("alpha", Behaviour(status=503))
    fake.script("beta", Behaviour(chunks=["b1 ", "b2 ", "b3"], stream_error_after_chunks=1))
    async with running_router(two_providers(fake, "native")) as (_, router):
        with pytest.raises(c.UnavailableError) as exc:
            async for _ in router.stream_chat(ask_stream()):
                pass
    assert exc.value.details.reason == "STREAM_INTERRUPTED"
    assert exc.value.details.metadata["attempts"].split(",") == [
        "primary/alpha:http_503",
        "backup/beta:http_502",
    ]


async def test_a_401_after_the_first_chunk_disables_the_provider_as_before_it(fake: FakeProvider) -> None:
    """One rule for credentials refused, whenever they are: disabled, and the breaker spared."""
    refused = {"error": {"code": 401, "message": "invalid api key"}}
    fake.script("alpha", Behaviour(chunks=["a1 ", "a2"], stream_error_after_chunks=1, error_body=refused))
    async with running_router(two_providers(fake, "native")) as (app, router):
        deltas = []
        with pytest.raises(c.UnavailableError) as exc:
            async for message in router.stream_chat(ask_stream()):
                deltas.append(message.delta.text)
        status = (
            await router.get_provider_status(rt.GetProviderStatusRequest(provider_id="primary"))
        ).providers[0]
        snapshot = app.breakers.get("primary").snapshot()
        after = await router.chat(ask())
    assert deltas == ["a1 "] and exc.value.details.reason == "STREAM_INTERRUPTED"
    assert exc.value.details.metadata["attempts"] == "primary/alpha:auth"
    assert not status.enabled and "401" in status.disabled_reason
    assert snapshot.consecutive_failures == 0 and snapshot.window_calls == 0
    assert after.attempts[0].provider_id == "backup" and fake.count(CHAT, "alpha") == 1


async def test_back_to_back_chunks_before_a_reset_all_reach_the_caller_and_are_billed(
    fake: FakeProvider,
) -> None:
    """The lean path: chunks that arrived in the same read as the reset are delivered, then UNAVAILABLE."""
    chunks = [f"part{i} " for i in range(4)]
    async with running_router(two_providers(fake, "native")) as (_, router):
        fake.script("alpha", Behaviour(chunks=chunks, include_usage=False))
        complete = [m async for m in router.stream_chat(ask_stream())]
        tokens_of_the_whole_answer = complete[-1].summary.usage.output_tokens
        for attempt in range(5):  # the reset races the reads: several runs, each must deliver all
            fake.script("alpha", Behaviour(chunks=chunks, die_after_chunks=len(chunks)))
            request = rt.StreamChatRequest(
                messages=[c.user("hello there")],
                generation=rt.GenerationConfig(max_tokens=50),
                metadata={"tenant": f"t{attempt}"},
            )
            deltas = []
            with pytest.raises(c.UnavailableError) as broken:
                async for message in router.stream_chat(request):
                    deltas.append(message.delta.text)
            assert deltas == chunks, f"run {attempt}"
            assert broken.value.details.reason == "STREAM_INTERRUPTED"
            [row] = (await router.get_spend(rt.GetSpendRequest(caller=f"t{attempt}"))).rows
            assert row.output_tokens == tokens_of_the_whole_answer  # billed: all the provider sent
    assert fake.count(CHAT, "beta") == 0


async def test_stream_without_provider_usage_counts_tokens_locally(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(chunks=["counted ", "here"], include_usage=False))
    async with running_router(two_providers(fake, "native")) as (_, router):
        messages = [m async for m in router.stream_chat(ask_stream())]
    usage = messages[-1].summary.usage
    assert usage.counted_locally and usage.input_tokens > 0 and usage.output_tokens >= 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_deadline_shorter_than_provider_delay(fake: FakeProvider, transport: str) -> None:
    fake.set_default(Behaviour(latency_s=5.0))
    async with running_router(two_providers(fake, transport)) as (app, router):
        with pytest.raises(c.DeadlineExceededError):
            await router.chat(ask(), timeout_s=0.5)
        record = await fake.wait_for_disconnect(5.0)
        snapshot = app.breakers.get("primary").snapshot()
    assert record.model == "alpha" and not record.completed
    assert fake.count(CHAT, "beta") == 0
    assert snapshot.consecutive_failures == 0  # the caller's deadline is not the provider's fault


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelled_stream_closes_the_upstream_connection(fake: FakeProvider, transport: str) -> None:
    fake.set_default(Behaviour(chunks=[f"w{i} " for i in range(200)], chunk_delay_s=0.05))
    async with running_router(two_providers(fake, transport)) as (app, router):
        stream = router.stream_chat(ask_stream())
        first = await stream.__anext__()
        assert first.delta.text == "w0 "
        await stream.aclose()  # the client cancels the RPC
        record = await fake.wait_for_disconnect(5.0)
        assert record.disconnected and not record.completed
        for _ in range(100):
            if app.serving.errors.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        assert app.serving.errors.in_flight == 0
        assert app.breakers.get("primary").snapshot().consecutive_failures == 0


PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def image_request(image: rt.Image, text: str = "what is this?") -> rt.ChatRequest:
    return rt.ChatRequest(
        messages=[
            rt.ChatMessage(role=rt.ROLE_USER, parts=[rt.ContentPart(text=text), rt.ContentPart(image=image)])
        ]
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_images_route_only_to_vision_models_and_pass_through(
    fake: FakeProvider, transport: str
) -> None:
    config = router_config(
        [
            openai_provider("text", fake.base_url, [chat_model("blind")], priority=1, transport=transport),
            openai_provider(
                "eyes",
                fake.base_url,
                [chat_model("seer", capabilities=["vision"], tasks=("chat_smart", "vision"))],
                priority=50,
                transport=transport,
            ),
        ],
        limits={"max_images": 2, "max_image_bytes": 1024},
    )
    async with running_router(config) as (_, router):
        by_url = await router.chat(
            image_request(rt.Image(url="https://example.com/cat.png", detail=rt.IMAGE_DETAIL_LOW))
        )
        inline = await router.chat(image_request(rt.Image(data=PNG, mime_type="image/png")))
        assert by_url.attempts[-1].provider_id == "eyes" and inline.attempts[-1].provider_id == "eyes"
        assert fake.count(CHAT, "blind") == 0
        sent = [r.json["messages"][0]["content"] for r in fake.requests if r.model == "seer"]
        urls = [
            part["image_url"]["url"]
            for content in sent
            for part in content
            if part.get("type") == "image_url"
        ]
        assert urls[0] == "https://example.com/cat.png"
        assert urls[1] == "data:image/png;base64," + base64.b64encode(PNG).decode()

        with pytest.raises(c.InvalidArgumentError) as too_big:
            await router.chat(image_request(rt.Image(data=b"\x89PNG" + b"0" * 2000, mime_type="image/png")))
        assert too_big.value.details.field_violations[0][0] == "messages[0].parts[1].image.data"
        with pytest.raises(c.InvalidArgumentError) as bad_mime:
            await router.chat(image_request(rt.Image(data=PNG, mime_type="text/html")))
        assert bad_mime.value.details.field_violations[0][0] == "messages[0].parts[1].image.mime_type"
        with pytest.raises(c.InvalidArgumentError) as not_https:
            await router.chat(image_request(rt.Image(url="http://169.254.169.254/latest")))
        assert not_https.value.details.field_violations[0][0] == "messages[0].parts[1].image.url"
        many = rt.ChatRequest(
            messages=[
                rt.ChatMessage(parts=[rt.ContentPart(image=rt.Image(data=PNG, mime_type="image/png"))] * 3)
            ]
        )
        with pytest.raises(c.InvalidArgumentError):
            await router.chat(many)
        assert fake.count(CHAT) == 2  # limits are checked before any provider call


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_embed_returns_vectors_usage_and_cost(fake: FakeProvider, transport: str) -> None:
    config = router_config(
        [
            openai_provider(
                "emb", fake.base_url, [embedding_model("vec-768", 768, price=0.5)], transport=transport
            )
        ]
    )
    fake.set_default(Behaviour(usage=(9, 0)))
    async with running_router(config) as (_, router):
        reply = await router.embed(rt.EmbedRequest(inputs=["alpha beta", "gamma"]))
    assert reply.dimension == 768 and len(reply.embeddings) == 2
    assert all(len(e.values) == 768 for e in reply.embeddings)
    assert reply.usage.input_tokens == 9
    assert reply.cost.cost_usd == pytest.approx(9 * 0.5 / 1e6)
    assert fake.count("/v1/embeddings", "vec-768") == 1


async def test_active_probes_open_the_breaker_before_users_arrive(fake: FakeProvider) -> None:
    fake.set_default(Behaviour(status=503))
    config = router_config(
        [openai_provider("probed", fake.base_url, [chat_model("alpha")], health_probe_interval_s=0.02)],
        circuit_breaker={"failure_threshold": 2},
    )
    async with running_router(config) as (_, router):
        for _ in range(200):
            status = (await router.get_provider_status()).providers[0]
            if status.breaker.state == rt.BREAKER_STATE_OPEN:
                break
            await asyncio.sleep(0.02)
    assert status.breaker.state == rt.BREAKER_STATE_OPEN
    assert status.HasField("last_probe") and not status.last_probe.healthy
    assert status.last_probe.error_kind == "http_503"
    assert fake.count(CHAT) == 0 and fake.count("/v1/models") >= 2
