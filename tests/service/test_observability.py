"""Observability over real servers: one trace client -> embedding -> router -> provider, no
secrets in telemetry, Prometheus names and values, and a cancelled traced stream.

Each service gets its own `setup_telemetry` with an in-memory span exporter and metric reader
(no global tracer provider is touched), exactly as two processes would have their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from embedding_service.server import EmbeddingDeps
from router_service.server import RouterDeps
from sekha import client as c
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.router.v1 import router_service_pb2 as rt
from sekha.router.v1 import router_service_pb2_grpc as rt_grpc
from sekha.tracing import client_interceptors
from sekha_runtime.server.logs import configure_logging, resolve_log_level
from sekha_runtime.telemetry import Telemetry, TelemetryConfig, setup_telemetry
from testkit.fake_provider import Behaviour, FakeProvider, FakeToolCall
from testkit.harness import (
    chat_model,
    embedding_config,
    embedding_model,
    openai_provider,
    router_config,
    running_embedding,
    running_router,
)

ROOT = Path(__file__).resolve().parents[2]
SENTINEL_PROMPT = "SENTINEL-PROMPT-7731"
SENTINEL_KEY = "sk-SENTINEL-KEY-4242"
ROUTER = "sekha.router.v1.RouterService"
EMBEDDING = "sekha.embedding.v1.EmbeddingService"
CHAT_PRICE = (1.0, 2.0)  # USD per million input / output tokens
EMBED_PRICE = 0.5
USAGE = (12, 3)


@dataclass
class Traced:
    """A service's telemetry plus the in-memory ends it exports to."""

    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished_spans(self) -> list[ReadableSpan]:
        self.telemetry.force_flush()
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        found = []
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@contextlib.contextmanager
def traced(service: str, *, capture: bool = False, prometheus: bool = False) -> Iterator[Traced]:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = setup_telemetry(
        service,
        TelemetryConfig(capture_message_content=capture),
        span_exporter=spans,
        metric_readers=(reader,),
        prometheus=prometheus,
        environ={},  # hermetic: no OTEL_* from the environment running the tests
    )
    try:
        yield Traced(telemetry, spans, reader)
    finally:
        telemetry.shutdown()


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


def doc(doc_id: str, text: str) -> emb.Document:
    return emb.Document(id=doc_id, text=text)


def ask(text: str = "hello there") -> rt.ChatRequest:
    return rt.ChatRequest(messages=[c.user(text)], generation=rt.GenerationConfig(max_tokens=50))


def ask_stream(text: str = "hello there") -> rt.StreamChatRequest:
    return rt.StreamChatRequest(messages=[c.user(text)], generation=rt.GenerationConfig(max_tokens=50))


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def assert_sent_as_parent(headers: Any, span: ReadableSpan) -> None:
    """The request carried `span` as its W3C parent, sampled."""
    lowered = {k.lower(): v for k, v in headers.items()}
    version, sent_trace, sent_parent, flags = lowered["traceparent"].split("-")
    assert (version, sent_trace, sent_parent) == (
        "00",
        f"{span.context.trace_id:032x}",
        f"{span.context.span_id:016x}",
    )
    assert int(flags, 16) & 1  # sampled


# ---------------------------------------------------------------------------------- one trace


async def test_one_trace_runs_client_embedding_router_provider(tmp_path: Path, fake: FakeProvider) -> None:
    fake.set_default(Behaviour(usage=USAGE))
    config = router_config(
        [
            openai_provider(
                "vec", fake.base_url, [embedding_model("vec-8", 8, price=EMBED_PRICE)], transport="native"
            )
        ]
    )
    with (
        traced("sekha-router") as router_t,
        traced("sekha-embedding") as emb_t,
        traced("test-client") as test_t,
    ):
        async with running_router(config, RouterDeps(telemetry=router_t.telemetry)) as (router_app, _):
            emb_config = embedding_config(tmp_path, f"127.0.0.1:{router_app.port}")
            async with running_embedding(emb_config, EmbeddingDeps(telemetry=emb_t.telemetry)) as (
                emb_app,
                plain,
            ):
                await plain.upsert_documents(
                    emb.UpsertDocumentsRequest(
                        base="kb", documents=[doc("a", "alpha text"), doc("b", "beta")]
                    )
                )
                for t in (router_t, emb_t):
                    t.finished_spans()
                    t.spans.clear()
                requests_before = len(fake.requests)
                connection = c.ConnectionConfig(f"127.0.0.1:{emb_app.port}")
                async with c.EmbeddingClient(
                    connection, interceptors=client_interceptors(test_t.telemetry.tracer)
                ) as client:
                    with test_t.telemetry.tracer.start_as_current_span("test-root"):
                        result = await client.search_documents(
                            emb.SearchDocumentsRequest(base="kb", query="alpha", top_k=2)
                        )
    assert result.hits
    test_spans, emb_spans, router_spans = (
        test_t.finished_spans(),
        emb_t.finished_spans(),
        router_t.finished_spans(),
    )

    root = only(test_spans, "test-root")
    trace_id = root.context.trace_id
    search_client = only(test_spans, f"{EMBEDDING}/SearchDocuments")
    search_server = only(emb_spans, f"{EMBEDDING}/SearchDocuments")
    embed_client = only(emb_spans, f"{ROUTER}/Embed")
    embed_server = only(router_spans, f"{ROUTER}/Embed")
    provider = only(router_spans, "embeddings vec-8")
    route = only(router_spans, "sekha.router.route")
    chain = [root, search_client, search_server, embed_client, embed_server, provider]
    assert {s.context.trace_id for s in [*chain, route]} == {trace_id}
    for parent, child in itertools.pairwise(chain):
        assert parent_of(child) == parent.context.span_id, (parent.name, child.name)
    assert parent_of(route) == embed_server.context.span_id
    assert [s.kind for s in chain[1:]] == [
        SpanKind.CLIENT,
        SpanKind.SERVER,
        SpanKind.CLIENT,
        SpanKind.SERVER,
        SpanKind.CLIENT,
    ]
    # the embedding service's own work nests under its server span
    chroma_query = by_name(emb_spans, "chromadb query")[0]
    assert parent_of(chroma_query) == search_server.context.span_id
    assert chroma_query.attributes["db.system.name"] == "chromadb"
    assert parent_of(only(emb_spans, "sekha.embedding.fusion")) == search_server.context.span_id

    assert (
        dict(embed_server.attributes).items()
        >= {
            "rpc.system": "grpc",
            "rpc.service": ROUTER,
            "rpc.method": "Embed",
            "rpc.grpc.status_code": 0,
        }.items()
    )
    assert {
        k: provider.attributes.get(k)
        for k in (
            "gen_ai.operation.name",
            "gen_ai.provider.name",
            "gen_ai.request.model",
            "gen_ai.usage.input_tokens",
            "server.address",
            "error.type",
        )
    } == {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.provider.name": "openai",  # the registry's value for an OpenAI-compatible API
        "gen_ai.request.model": "vec-8",
        "gen_ai.usage.input_tokens": USAGE[0],
        "server.address": "127.0.0.1",
        "error.type": None,
    }
    assert route.attributes["sekha.route.chosen.provider"] == "vec"
    assert route.attributes["sekha.route.candidates"] == 1

    # the provider saw the provider span as the parent of its request
    upstream = [r for r in fake.requests[requests_before:] if r.path == "/v1/embeddings"]
    assert len(upstream) == 1
    assert provider.context.trace_id == trace_id
    assert_sent_as_parent(upstream[0].headers, provider)


@pytest.mark.parametrize("transport", ["native", "litellm"])
@pytest.mark.parametrize(
    ("operation", "model", "path"),
    [("chat", "alpha", "/v1/chat/completions"), ("embeddings", "vec-8", "/v1/embeddings")],
)
async def test_every_transport_sends_the_attempt_span_as_the_providers_parent(
    fake: FakeProvider, transport: str, operation: str, model: str, path: str
) -> None:
    fake.set_default(Behaviour(usage=USAGE))
    models = [chat_model("alpha"), embedding_model("vec-8", 8)]
    config = router_config([openai_provider("p", fake.base_url, models, transport=transport)])
    with traced("sekha-router") as router_t:
        async with running_router(config, RouterDeps(telemetry=router_t.telemetry)) as (_, router):
            if operation == "chat":
                await router.chat(ask())
            else:
                await router.embed(rt.EmbedRequest(inputs=["some text"]))
        attempt = only(router_t.finished_spans(), f"{operation} {model}")
    (upstream,) = [r for r in fake.requests if r.path == path]
    assert_sent_as_parent(upstream.headers, attempt)


@pytest.mark.parametrize(
    ("provider_type", "name"),
    [
        ("openai_compatible", "openai"),  # an OpenAI-API server: the convention says openai
        ("openai", "openai"),
        ("deepseek", "deepseek"),  # the registry's own values
        ("ollama", "ollama"),  # not in the registry: its own name, documented in observability.py
    ],
)
async def test_gen_ai_provider_name_is_the_registrys_value(
    fake: FakeProvider, provider_type: str, name: str
) -> None:
    config = router_config(
        [openai_provider("p", fake.base_url, [chat_model("alpha")], provider_type=provider_type)]
    )
    with traced("sekha-router") as router_t:
        async with running_router(config, RouterDeps(telemetry=router_t.telemetry)) as (_, router):
            await router.chat(ask())
        attempt = only(router_t.finished_spans(), "chat alpha")
    assert attempt.attributes["gen_ai.provider.name"] == name


# ---------------------------------------------------------------------------------- secrets


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """The services' logging exactly as `__main__` sets it up, at DEBUG, into a list of lines."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    stream = io.StringIO()
    configure_logging(resolve_log_level("INFO", {"SEKHA_LOG_LEVEL": "debug"}), stream=stream)
    lines: list[str] = []
    try:
        yield lines
    finally:
        lines.extend(stream.getvalue().splitlines())
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def span_text(spans: list[ReadableSpan]) -> str:
    """Everything a span exporter would send, as text."""
    return "\n".join(span.to_json() for span in spans)


@pytest.mark.parametrize("capture", [False, True], ids=["capture-off", "capture-on"])
async def test_prompts_only_with_capture_and_keys_never(fake: FakeProvider, capture: bool) -> None:
    providers = [
        openai_provider(
            "flaky",
            fake.base_url,
            [chat_model("alpha")],
            priority=10,
            transport="native",
            api_key=SENTINEL_KEY,
        ),
        openai_provider(
            "steady",
            fake.base_url,
            [chat_model("beta"), embedding_model("vec-8", 8)],
            priority=20,
            transport="native",
            api_key=SENTINEL_KEY,
        ),
    ]
    fake.script("alpha", Behaviour(status=503), Behaviour(status=400))
    with traced("sekha-router", capture=capture) as router_t, captured_logs() as logs:
        async with running_router(router_config(providers), RouterDeps(telemetry=router_t.telemetry)) as (
            _,
            router,
        ):
            await router.chat(ask(SENTINEL_PROMPT))  # alpha fails, beta answers
            with pytest.raises(c.InvalidArgumentError):
                await router.chat(ask(SENTINEL_PROMPT))  # alpha rejects it as malformed
            streamed = [m async for m in router.stream_chat(ask_stream(SENTINEL_PROMPT))]
            await router.embed(rt.EmbedRequest(inputs=[SENTINEL_PROMPT]))
            with pytest.raises(c.InvalidArgumentError):
                await router.chat(rt.ChatRequest(messages=[c.user(SENTINEL_PROMPT * 10_000)]))
        spans = router_t.finished_spans()
    assert streamed[-1].HasField("summary")
    # the test can fail: the key did go upstream, and the prompt went through the services
    assert all(r.headers.get("Authorization") == f"Bearer {SENTINEL_KEY}" for r in fake.requests)
    assert any(SENTINEL_PROMPT in json.dumps(r.json) for r in fake.requests)
    assert logs, "nothing was logged at all: the capture is broken"
    exported = span_text(spans)
    assert SENTINEL_KEY not in exported
    assert not [line for line in logs if SENTINEL_KEY in line or SENTINEL_PROMPT in line]
    chats = [s for s in spans if s.name in ("chat alpha", "chat beta")]
    assert {s.attributes.get("error.type") for s in chats} >= {"http_503", "bad_request", None}
    if capture:
        chat = next(s for s in chats if s.attributes.get("error.type") is None)
        messages = json.loads(chat.attributes["gen_ai.input.messages"])
        assert messages == [{"role": "user", "parts": [{"type": "text", "content": SENTINEL_PROMPT}]}]
        assert SENTINEL_PROMPT in chat.attributes["gen_ai.output.messages"]  # the fake echoes it
    else:
        assert SENTINEL_PROMPT not in exported


@pytest.mark.parametrize("capture", [False, True], ids=["capture-off", "capture-on"])
async def test_tool_definitions_are_counted_and_described_only_with_capture(
    fake: FakeProvider, capture: bool
) -> None:
    secret_tool = "SENTINEL-TOOL-DESCRIPTION-515"
    secret_args = '{"city": "SENTINEL-ARGS-909"}'
    tools = [c.tool("get_weather", {"type": "object"}, secret_tool), c.tool("get_time")]
    model = chat_model("alpha", capabilities=["tools"])
    fake.script(
        "alpha",
        Behaviour(tool_calls=[FakeToolCall("get_weather", secret_args, "call_1")], usage=(5, 5)),
        Behaviour(text="done"),
    )
    request = rt.ChatRequest(
        messages=[c.user("weather?")], tools=tools, generation=rt.GenerationConfig(max_tokens=20, seed=9)
    )
    with traced("sekha-router", capture=capture) as router_t:
        config = router_config([openai_provider("p", fake.base_url, [model], transport="native")])
        async with running_router(config, RouterDeps(telemetry=router_t.telemetry)) as (_, router):
            first = await router.chat(request)
            c.append_tool_results(request.messages, first, {"call_1": "SENTINEL-RESULT-33"})
            await router.chat(request)
        spans = router_t.finished_spans()
    calling, answering = by_name(spans, "chat alpha")
    for span in (calling, answering):
        assert span.attributes["sekha.request.tool_count"] == 2
        assert span.attributes["gen_ai.request.seed"] == 9
    exported = span_text(spans)
    if not capture:
        for secret in (secret_tool, "SENTINEL-ARGS-909", "SENTINEL-RESULT-33", "get_weather"):
            assert secret not in exported
        assert "gen_ai.tool.definitions" not in calling.attributes
        return
    definitions = json.loads(calling.attributes["gen_ai.tool.definitions"])
    assert [(t["name"], t.get("description")) for t in definitions] == [
        ("get_weather", secret_tool),
        ("get_time", None),
    ]
    (output,) = json.loads(calling.attributes["gen_ai.output.messages"])
    assert output["parts"] == [
        {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": secret_args}
    ]
    inputs = json.loads(answering.attributes["gen_ai.input.messages"])
    assert inputs[1]["parts"] == [
        {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": secret_args}
    ]
    assert inputs[2] == {
        "role": "tool",
        "parts": [{"type": "tool_call_response", "id": "call_1", "response": "SENTINEL-RESULT-33"}],
    }


async def test_cache_and_reasoning_tokens_reach_the_token_metric_and_the_span(fake: FakeProvider) -> None:
    fake.script(
        "alpha", Behaviour(usage=(1000, 300), cached_tokens=600, cache_write_tokens=0, reasoning_tokens=200)
    )
    with traced("sekha-router") as router_t:
        config = router_config(
            [openai_provider("p", fake.base_url, [chat_model("alpha")], transport="native")]
        )
        async with running_router(config, RouterDeps(telemetry=router_t.telemetry)) as (_, router):
            await router.chat(ask())
        spans = router_t.finished_spans()
        points = router_t.points("gen_ai.client.token.usage")
    by_type = {p.attributes["gen_ai.token.type"]: p.sum for p in points}
    assert by_type == {"input": 1000, "output": 300, "cache_read_input": 600, "reasoning_output": 200}
    span = only(spans, "chat alpha")
    assert span.attributes["gen_ai.usage.cache_read.input_tokens"] == 600
    assert span.attributes["sekha.usage.reasoning_tokens"] == 200


# ---------------------------------------------------------------------------------- Prometheus


async def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] from a Prometheus text endpoint."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(
        v for found, v in samples.get(name, []) if all(found.get(k) == want for k, want in labels.items())
    )


def exported_names() -> list[str]:
    return [
        line.strip() for line in (ROOT / "deploy" / "metrics.txt").read_text().splitlines() if line.strip()
    ]


async def test_prometheus_exports_every_dashboard_metric_with_real_values(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.set_default(Behaviour(usage=USAGE))
    fake.set_default(Behaviour(status=503), model="alpha")
    providers = [
        openai_provider(
            "flaky",
            fake.base_url,
            [chat_model("alpha", price=CHAT_PRICE)],
            priority=10,
            transport="native",
            circuit_breaker={"failure_threshold": 1, "reset_timeout_s": 300},
        ),
        openai_provider(
            "steady",
            fake.base_url,
            [chat_model("beta", price=CHAT_PRICE), embedding_model("vec-8", 8, price=EMBED_PRICE)],
            priority=20,
            transport="native",
        ),
    ]
    config = router_config(providers, server={"metrics_port": 0})
    chats, streams, embeds = 2, 3, 1
    with (
        traced("sekha-router", prometheus=True) as router_t,
        traced("sekha-embedding", prometheus=True) as emb_t,
    ):
        async with running_router(config, RouterDeps(telemetry=router_t.telemetry)) as (router_app, router):
            emb_config = embedding_config(
                tmp_path, f"127.0.0.1:{router_app.port}", server={"metrics_port": 0}
            )
            async with running_embedding(emb_config, EmbeddingDeps(telemetry=emb_t.telemetry)) as (
                emb_app,
                client,
            ):
                for _ in range(chats):
                    await router.chat(ask())  # the first one fails over from alpha and opens its breaker
                for _ in range(streams):
                    [m async for m in router.stream_chat(ask_stream())]
                for _ in range(embeds):
                    await router.embed(rt.EmbedRequest(inputs=["some text"]))
                with pytest.raises(c.InvalidArgumentError):
                    await router.chat(rt.ChatRequest())
                await client.upsert_documents(
                    emb.UpsertDocumentsRequest(
                        base="kb", documents=[doc("a", "one"), doc("b", "two"), doc("c", "3")]
                    )
                )
                await client.search_documents(emb.SearchDocumentsRequest(base="kb", query="one"))
                await client.search_documents(emb.SearchDocumentsRequest(base="kb", query="two"))
                assert router_app.metrics_port and emb_app.metrics_port
                router_samples = await scrape(router_app.metrics_port)
                emb_samples = await scrape(emb_app.metrics_port)
        router_spans = router_t.finished_spans()

    # breaker transitions and fallbacks are span events too
    failed_attempt = next(s for s in router_spans if s.name == "chat alpha")
    assert [(e.name, dict(e.attributes or {})) for e in failed_attempt.events] == [
        ("sekha.breaker.transition", {"provider": "flaky", "from_state": "closed", "to_state": "open"})
    ]
    fallback_rpc = next(
        s
        for s in router_spans
        if s.context.trace_id == failed_attempt.context.trace_id and s.kind is SpanKind.SERVER
    )
    assert [e.name for e in fallback_rpc.events] == ["sekha.router.fallback"]

    samples = {
        name: router_samples.get(name, []) + emb_samples.get(name, [])
        for name in {*router_samples, *emb_samples}
    }
    suffixes = ("", "_count", "_sum", "_bucket")
    missing = [n for n in exported_names() if not any(n + suffix in samples for suffix in suffixes)]
    assert not missing, f"not exported: {missing}"

    # embeds: the Embed RPC, plus the upsert (1 call) and the two searches through the router
    provider_embeds = embeds + 1 + 2
    provider_chats = chats + streams
    token_sum = "gen_ai_client_token_usage_sum"
    assert total(samples, token_sum, gen_ai_token_type="input") == USAGE[0] * (
        provider_chats + provider_embeds
    )
    assert total(samples, token_sum, gen_ai_token_type="output") == USAGE[1] * provider_chats
    assert (
        total(
            samples,
            "gen_ai_client_token_usage_count",
            gen_ai_operation_name="chat",
            gen_ai_token_type="input",
        )
        == provider_chats
    )
    chat_cost = (USAGE[0] * CHAT_PRICE[0] + USAGE[1] * CHAT_PRICE[1]) / 1e6
    embed_cost = USAGE[0] * EMBED_PRICE / 1e6
    assert total(samples, "sekha_router_cost_usd_total", provider="steady", model="beta") == pytest.approx(
        chat_cost * provider_chats
    )
    assert total(samples, "sekha_router_cost_usd_total", model="vec-8") == pytest.approx(
        embed_cost * provider_embeds
    )
    assert total(samples, "gen_ai_client_operation_duration_seconds_count", error_type="http_503") == 1

    requests = "sekha_rpc_requests_total"
    assert total(samples, requests, service=ROUTER, rpc="Chat", code="OK") == chats
    assert total(samples, requests, service=ROUTER, rpc="StreamChat", code="OK") == streams
    assert total(samples, requests, service=ROUTER, rpc="Embed", code="OK") == embeds + 3
    assert total(samples, requests, service=ROUTER, rpc="Chat", code="INVALID_ARGUMENT") == 1
    assert total(samples, requests, service=EMBEDDING, rpc="SearchDocuments", code="OK") == 2
    assert not [
        labels for labels, _ in samples[requests] if labels["rpc"] == "Check"
    ]  # health is not counted
    assert total(samples, "sekha_rpc_duration_seconds_count", service=ROUTER, rpc="Chat") == chats + 1
    assert total(samples, "sekha_rpc_in_flight") == 0

    assert total(samples, "sekha_router_breaker_state", provider="flaky") == 2  # open
    assert total(samples, "sekha_router_breaker_state", provider="steady") == 0  # closed
    assert total(samples, "sekha_router_breaker_transitions_total", provider="flaky", to_state="open") == 1
    assert (
        total(
            samples,
            "sekha_router_fallbacks_total",
            task="chat_smart",
            from_provider="flaky",
            to_provider="steady",
        )
        == 1
    )
    assert total(samples, "sekha_router_time_to_first_token_seconds_count", provider="steady") == streams
    assert total(samples, "sekha_router_overhead_seconds_count", rpc="StreamChat") == streams
    assert total(samples, "sekha_router_overhead_seconds_count", rpc="Embed") == embeds + 3

    collection = next(
        labels["collection"] for labels, _ in samples["sekha_embedding_documents_ingested_total"]
    )
    assert collection.startswith("kb_")
    assert total(samples, "sekha_embedding_documents_ingested_total", base="kb") == 3
    assert total(samples, "sekha_embedding_search_duration_seconds_count", base="kb", fusion="rrf") == 2


# ---------------------------------------------------------------------------------- cancellation


async def test_cancelled_traced_stream_ends_cancelled_and_leaves_nothing_in_flight(
    fake: FakeProvider,
) -> None:
    fake.set_default(Behaviour(chunks=[f"w{i} " for i in range(200)], chunk_delay_s=0.05))
    config = router_config([openai_provider("p", fake.base_url, [chat_model("alpha")], transport="native")])
    with traced("sekha-router") as router_t, traced("test-client") as test_t:
        async with running_router(config, RouterDeps(telemetry=router_t.telemetry)) as (app, _):
            connection = c.ConnectionConfig(f"127.0.0.1:{app.port}")
            channel = c.open_channel(connection, interceptors=client_interceptors(test_t.telemetry.tracer))
            try:
                call = rt_grpc.RouterServiceStub(channel).StreamChat(ask_stream(), timeout=30)
                messages = call.__aiter__()
                first = await messages.__anext__()
                assert first.delta.text == "w0 "
                call.cancel()
                code = await asyncio.wait_for(call.code(), 10)  # a hang guard, not a timing assertion
                assert code == grpc.StatusCode.CANCELLED
                await fake.wait_for_disconnect(10)
                in_flight: list[Any] = []
                for _ in range(500):
                    in_flight = [
                        p
                        for p in router_t.points("sekha.rpc.in_flight")
                        if p.attributes["rpc"] == "StreamChat"
                    ]
                    if in_flight and in_flight[0].value == 0:
                        break
                    await asyncio.sleep(0.01)
                assert [p.value for p in in_flight] == [0]
                # The provider billed what it streamed before the caller left: the metrics say so.
                billed = {
                    p.attributes["gen_ai.token.type"]: p
                    for p in router_t.points("gen_ai.client.token.usage")
                    if p.attributes.get("error.type") == "cancelled"
                }
                assert billed["input"].sum > 0 and billed["output"].sum >= 2  # "w0 " at least
                (cost,) = router_t.points("sekha.router.cost")
                expected = (billed["input"].sum * 1.0 + billed["output"].sum * 2.0) / 1e6
                assert cost.value == pytest.approx(expected)
            finally:
                await channel.close()
        spans = router_t.finished_spans()
        client_spans = test_t.finished_spans()
    server = only(spans, f"{ROUTER}/StreamChat")
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    attempt = only(spans, "chat alpha")
    assert attempt.attributes["error.type"] == "cancelled"
    assert attempt.attributes["gen_ai.usage.output_tokens"] == billed["output"].sum
    client_span = only(client_spans, f"{ROUTER}/StreamChat")
    assert client_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert parent_of(server) == client_span.context.span_id
    requests = [p for p in router_t.points("sekha.rpc.requests") if p.attributes["rpc"] == "StreamChat"]
    assert [(p.attributes["code"], p.value) for p in requests] == [("CANCELLED", 1)]


async def test_cancelled_traced_unary_call_raises_cancelled_and_cancels_the_rpc(fake: FakeProvider) -> None:
    # What opentelemetry-instrumentation-grpc's aio client gets wrong: the caller must see
    # CancelledError, and the RPC must really be cancelled (the router drops its upstream call).
    fake.set_default(Behaviour(latency_s=30))
    config = router_config([openai_provider("p", fake.base_url, [chat_model("alpha")], transport="native")])
    with traced("sekha-router") as router_t, traced("test-client") as test_t:
        async with running_router(config, RouterDeps(telemetry=router_t.telemetry)) as (app, _):
            connection = c.ConnectionConfig(f"127.0.0.1:{app.port}")
            async with c.RouterClient(
                connection, interceptors=client_interceptors(test_t.telemetry.tracer)
            ) as client:
                task = asyncio.create_task(client.chat(ask()))
                await fake.wait_for(lambda r: r.path == "/v1/chat/completions", 10)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                record = await fake.wait_for_disconnect(10)
                assert not record.completed
        spans, client_spans = router_t.finished_spans(), test_t.finished_spans()
    cancelled = grpc.StatusCode.CANCELLED.value[0]
    assert only(client_spans, f"{ROUTER}/Chat").attributes["rpc.grpc.status_code"] == cancelled
    assert only(spans, f"{ROUTER}/Chat").attributes["rpc.grpc.status_code"] == cancelled
    assert only(spans, "chat alpha").attributes["error.type"] == "cancelled"
