"""W3C trace context over gRPC metadata and HTTP headers, and tracing client interceptors.

Only the OpenTelemetry *API* is used here, so a plain client user pays nothing unless they hand
in a tracer from an SDK. Why our own interceptors rather than `opentelemetry-instrumentation-grpc`:
its aio client interceptor swallows `CancelledError` on unary calls (a cancelled caller would see
a normal return), it reads the global tracer provider (which can be set once per process, so two
services in one test process could not have their own), and it records exception text on spans
(error messages may carry details we keep out of telemetry). What we need is small: one CLIENT
span per call, `traceparent` in the metadata, the status code at the end.

    channel = open_channel(config, interceptors=client_interceptors(tracer))
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACEPARENT",
    "MetadataGetter",
    "TracingStreamClientInterceptor",
    "TracingUnaryClientInterceptor",
    "client_interceptors",
    "extract_from_metadata",
    "inject_headers",
    "rpc_attributes",
    "split_method",
]

TRACEPARENT = "traceparent"
RPC_SYSTEM = "grpc"
# Status codes that mean the *server* failed (OpenTelemetry gRPC conventions); the caller's own
# mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) leave a span's status unset.
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_PROPAGATOR = TraceContextTextMapPropagator()  # stateless: one shared instance is safe


class MetadataGetter(Getter[Sequence[tuple[str, Any]]]):
    """Reads W3C headers from gRPC metadata (a sequence of (key, value) pairs, keys lower-case)."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        values = [value for k, value in carrier if k == key and isinstance(value, str)]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_METADATA_GETTER = MetadataGetter()


def extract_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> Context | None:
    """The remote parent carried by `traceparent` in the metadata, or None when there is none."""
    if not metadata:
        return None
    pairs = tuple(metadata)
    if not any(key == TRACEPARENT for key, _ in pairs):
        return None  # the common untraced case costs one scan, no parsing
    return _PROPAGATOR.extract(pairs, getter=_METADATA_GETTER)


def inject_headers(headers: MutableMapping[str, str], context: Context | None = None) -> None:
    """Add `traceparent` (and `tracestate`) for the current (or given) span to `headers`."""
    _PROPAGATOR.inject(headers, context=context)


def split_method(full_method: str) -> tuple[str, str]:
    """`/sekha.router.v1.RouterService/Chat` -> (`sekha.router.v1.RouterService`, `Chat`)."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def rpc_attributes(service: str, method: str) -> dict[str, str]:
    return {"rpc.system": RPC_SYSTEM, "rpc.service": service, "rpc.method": method}


def end_rpc_span(span: trace.Span, code: grpc.StatusCode, server_side: bool) -> None:
    """Set the gRPC status on a span and end it (no exception text: it may hold secrets)."""
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_attribute("error.type", code.name)
            # A client span fails on any non-OK code; a server span only on its own failures.
            if not server_side or code in SERVER_ERROR_CODES:
                span.set_status(Status(StatusCode.ERROR))
    span.end()


class _ClientTracing:
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._names: dict[bytes | str, tuple[str, dict[str, str]]] = {}

    def _describe(self, method: bytes | str) -> tuple[str, dict[str, str]]:
        known = self._names.get(method)
        if known is None:
            text = method.decode() if isinstance(method, bytes) else method
            service, name = split_method(text)
            known = (f"{service}/{name}", rpc_attributes(service, name))
            self._names[method] = known
        return known

    def _start(self, details: grpc.aio.ClientCallDetails) -> tuple[trace.Span, grpc.aio.ClientCallDetails]:
        name, attributes = self._describe(details.method)
        span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        carrier: dict[str, str] = {}
        # With tracing off the span is invalid: pass the caller's context (a remote parent) on as is.
        valid = span.get_span_context().is_valid
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span) if valid else None)
        if not carrier:
            return span, details
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        for key, value in carrier.items():
            metadata.add(key, value)
        new_details = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        return span, new_details

    async def _call(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> tuple[trace.Span, Any]:
        """Start the CLIENT span and the call; a call that cannot start ends the span at once."""
        span, details = self._start(client_call_details)
        try:
            return span, await continuation(details, request)
        except BaseException:
            end_rpc_span(span, grpc.StatusCode.UNKNOWN, server_side=False)
            raise


class TracingUnaryClientInterceptor(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):
    """A CLIENT span per unary call; the context goes out as `traceparent` metadata.

    The interceptor waits for the call's status so the span ends before the caller resumes;
    when the caller is cancelled meanwhile, the RPC is cancelled too and CancelledError goes on.
    """

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        span, call = await self._call(continuation, client_call_details, request)
        try:
            code = await call.code()
        except asyncio.CancelledError:
            call.cancel()
            end_rpc_span(span, grpc.StatusCode.CANCELLED, server_side=False)
            raise
        end_rpc_span(span, code, server_side=False)
        return call


class TracingStreamClientInterceptor(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):
    """A CLIENT span per server-streaming call, ended when the call is done (any way it ends)."""

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        span, call = await self._call(continuation, client_call_details, request)
        call.add_done_callback(lambda done: _end_when_known(span, done))
        return call


def _end_when_known(span: trace.Span, call: Any) -> None:
    # Done callbacks are synchronous but the status is read with a coroutine; it is ready now.
    async def finish() -> None:
        try:
            code = await call.code()
        except BaseException:  # the span must end whatever happened
            code = grpc.StatusCode.CANCELLED
        end_rpc_span(span, code, server_side=False)

    try:
        asyncio.get_running_loop().create_task(finish())
    except RuntimeError:  # no loop any more (interpreter shutting down)
        span.end()


def client_interceptors(tracer: trace.Tracer | None = None) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for `grpc.aio` channels (`sekha.client.open_channel(..., interceptors=...)`).

    `tracer` None takes the global tracer provider's tracer (what an application set up).
    """
    tracer = tracer or trace.get_tracer("sekha.client")
    return [TracingUnaryClientInterceptor(tracer), TracingStreamClientInterceptor(tracer)]
