"""An unsampled request does no attribute work (issue 19): through a real router, over gRPC (Chat,
StreamChat, Embed) and the HTTP door, with tracing on and a sampler that samples nothing.

The only seam is the OpenTelemetry one: the Telemetry's tracer is wrapped so every span it hands
out, after the real SDK tracer decided not to sample it, counts the calls made on it
(`set_attribute(s)`, `add_event`, `set_status`, `update_name`, ...). The router, its interceptor
and observer run unchanged. Besides "no span recorded" and "no setter called", the test checks
that whatever is handed to `start_span` (name, attributes) is the very same object on every
request: built once per method or route, never formatted or assembled per request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanKind

from router_service.server import RouterDeps
from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from sekha_runtime.telemetry import Telemetry, TelemetryConfig, setup_telemetry
from testkit.fake_provider import FakeProvider
from testkit.harness import chat_model, embedding_model, openai_provider, router_config, running_router


class CountingSpan(NonRecordingSpan):
    """The SDK's non-recording span, counting every call that would do work for a recording one."""

    def __init__(self, context: trace.SpanContext, calls: list[str]) -> None:
        super().__init__(context)
        self._calls = calls

    def set_attribute(self, key: str, value: Any) -> None:
        self._calls.append(f"set_attribute {key}")

    def set_attributes(self, attributes: Any) -> None:
        self._calls.append(f"set_attributes {sorted(attributes)}")

    def add_event(self, name: str, attributes: Any = None, timestamp: Any = None) -> None:
        self._calls.append(f"add_event {name}")

    def add_link(self, context: Any, attributes: Any = None) -> None:
        self._calls.append("add_link")

    def update_name(self, name: str) -> None:
        self._calls.append(f"update_name {name}")

    def set_status(self, status: Any, description: str | None = None) -> None:
        self._calls.append("set_status")

    def record_exception(self, exception: BaseException, *args: Any, **kwargs: Any) -> None:
        self._calls.append("record_exception")


class CountingTracer(trace.Tracer):
    """Delegates to the SDK tracer; remembers what each span was started with."""

    def __init__(self, inner: trace.Tracer) -> None:
        self._inner = inner
        self.calls: list[str] = []
        self.started: list[tuple[str, Any]] = []  # (name, attributes) as handed in
        self.recording = 0

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        self.started.append((name, attributes))
        span = self._inner.start_span(name, context, kind, attributes, links, start_time)
        if span.is_recording():
            self.recording += 1
            return span
        return CountingSpan(span.get_span_context(), self.calls)

    @contextmanager  # type: ignore[override]
    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Iterator[trace.Span]:
        span = self.start_span(name, *args, **kwargs)
        with trace.use_span(span, end_on_exit=True):
            yield span


@dataclasses.dataclass
class Unsampled:
    telemetry: Telemetry
    tracer: CountingTracer
    exporter: InMemorySpanExporter


@pytest.fixture
def unsampled() -> Iterator[Unsampled]:
    exporter = InMemorySpanExporter()
    # As deployed (parentbased_traceidratio), at a ratio that samples nothing.
    telemetry = setup_telemetry(
        "sekha-router",
        TelemetryConfig(),
        span_exporter=exporter,
        sampler=ParentBased(TraceIdRatioBased(0.0)),
        prometheus=True,
        environ={},
    )
    assert telemetry.tracing_enabled and telemetry.metrics_enabled
    tracer = CountingTracer(telemetry.tracer)
    try:
        yield Unsampled(dataclasses.replace(telemetry, tracer=tracer), tracer, exporter)
    finally:
        telemetry.shutdown()


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as provider:
        yield provider


async def test_unsampled_requests_build_no_span_attributes_names_or_events(
    fake: FakeProvider, unsampled: Unsampled
) -> None:
    config = router_config(
        [openai_provider("p", fake.base_url, [chat_model("alpha"), embedding_model("vec-8", 8)])],
        server={"http_port": 0},
    )
    ask = rt.ChatRequest(messages=[c.user("hello")], generation=rt.GenerationConfig(max_tokens=20))
    ask_stream = rt.StreamChatRequest(
        messages=[c.user("hello")], generation=rt.GenerationConfig(max_tokens=20)
    )
    rounds: list[list[tuple[str, Any]]] = []
    async with running_router(config, RouterDeps(telemetry=unsampled.telemetry)) as (app, router):
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                before = len(unsampled.tracer.started)
                await router.chat(ask)
                [event async for event in router.stream_chat(ask_stream)]
                await router.embed(rt.EmbedRequest(inputs=["some text"]))
                async with http.post(
                    f"http://127.0.0.1:{app.http_port}/v1/chat/completions",
                    json={"model": "alpha", "messages": [{"role": "user", "content": "hello"}]},
                ) as reply:
                    assert reply.status == 200
                rounds.append(unsampled.tracer.started[before:])
    unsampled.telemetry.force_flush()

    assert unsampled.exporter.get_finished_spans() == ()
    assert unsampled.tracer.recording == 0
    assert unsampled.tracer.calls == []
    # One span per request (the server's); the routing and attempt spans are not even started.
    names = [name for name, _ in rounds[0]]
    assert sorted(names) == sorted(
        [
            "sekha.router.v1.RouterService/Chat",
            "sekha.router.v1.RouterService/StreamChat",
            "sekha.router.v1.RouterService/Embed",
            "POST /v1/chat/completions",
        ]
    )
    # Same name and attribute objects every time: nothing was formatted or assembled per request.
    for later in rounds[1:]:
        assert len(later) == len(rounds[0])
        for (name, attributes), (first_name, first_attributes) in zip(
            sorted(later, key=lambda s: s[0]), sorted(rounds[0], key=lambda s: s[0]), strict=True
        ):
            assert name is first_name
            assert attributes is first_attributes
    # The context still reaches the provider, marked not sampled.
    sent = [r.header("traceparent") for r in fake.requests]
    assert sent and all(value is not None for value in sent)
    assert not any(int(value.rsplit("-", 1)[1], 16) & 1 for value in sent if value)  # sampled bit
