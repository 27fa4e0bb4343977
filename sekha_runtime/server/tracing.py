"""Server spans and RPC metrics for every RPC of a service (health and reflection excluded).

`ServerTelemetry` wraps each handler when the service registers it, outermost: outside API-key
auth and the error guard (`sekha_runtime.server.errors.GuardedRegistry`; not an interceptor,
which grpc.aio would run as extra coroutines on every call). So by the time an RPC ends the
domain error or the auth refusal has become a status: an abort shows as `grpc.aio.AbortError`
with `context.code()` set, a cancellation as CancelledError (CANCELLED, or DEADLINE_EXCEEDED when
the deadline passed). That final code goes on the span (`rpc.grpc.status_code`) and on the
metrics (`code` label).

Per RPC it:

* extracts the caller's W3C `traceparent` from the metadata and starts a SERVER span named
  `sekha.router.v1.RouterService/Chat` with rpc.system / rpc.service / rpc.method; with tracing
  off it still makes the caller's context current, so it reaches the provider unchanged;
* counts the RPC in `sekha.rpc.in_flight` while it runs, then in `sekha.rpc.requests` and
  `sekha.rpc.duration` with (service, rpc, code). The first two are plain integers here, read by
  observable instruments when metrics are collected: an SDK measurement costs ~10 us, and an RPC
  would otherwise make three more of them;
* exposes an `RpcScope` to code running inside the RPC (`current_rpc()`), where the router adds
  the time spent waiting for providers, and hands it to `on_finish`, which computes overhead.

Nothing from the request, the metadata or an exception's text is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind

from sekha.tracing import end_rpc_span, extract_from_metadata, rpc_attributes, split_method
from sekha_runtime.server.errors import HEALTH_PREFIX, REFLECTION_PREFIX, rewrap
from sekha_runtime.telemetry import Telemetry

__all__ = ["RpcScope", "ServerTelemetry", "current_rpc"]

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


class RpcScope:
    """Per-RPC facts that code deeper in the call adds to (the router: upstream wait time)."""

    __slots__ = ("method", "upstream_s")

    def __init__(self, method: str) -> None:
        self.method = method
        self.upstream_s = 0.0


# The RPC a piece of code runs in. A ContextVar is per task, and grpc.aio serves each RPC in its
# own task, so concurrent RPCs never see each other's scope.
_CURRENT_RPC: ContextVar[RpcScope | None] = ContextVar("sekha_rpc_scope", default=None)


def current_rpc() -> RpcScope | None:
    """The scope of the RPC being served by the calling task, if any."""
    return _CURRENT_RPC.get()


# `StatusCode.name` is an enum property, looked up per call otherwise.
_CODE_NAMES: dict[grpc.StatusCode, str] = {code: code.name for code in grpc.StatusCode}

# Called with the status code's name ("OK", "UNAVAILABLE", ...), so hooks need not import grpc.
OnFinish = Callable[[RpcScope, str, float], None]


@dataclass(frozen=True, slots=True, eq=False)
class _Method:
    """Everything per method that would otherwise be rebuilt on every call."""

    rpc: str
    span_name: str
    span_attributes: dict[str, str]
    attributes: dict[str, str]  # service, rpc
    by_code: dict[grpc.StatusCode, dict[str, str]]  # service, rpc, code

    def with_code(self, code: grpc.StatusCode) -> dict[str, str]:
        attributes = self.by_code.get(code)
        if attributes is None:
            attributes = {**self.attributes, "code": code.name}
            self.by_code[code] = attributes
        return attributes


def _cancel_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class ServerTelemetry:
    """Server spans, context propagation and RPC metrics, around the error guard's handlers."""

    def __init__(
        self,
        telemetry: Telemetry,
        on_finish: OnFinish | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._tracer = telemetry.tracer
        self._tracing = telemetry.tracing_enabled
        self._duration = telemetry.instruments.rpc_duration
        self._on_finish = on_finish
        self._clock = clock
        self._methods: dict[str, _Method] = {}
        # Mutated on the event loop only; read (copied) by the collection callbacks.
        self._in_flight: dict[_Method, int] = {}
        self._finished: dict[tuple[_Method, grpc.StatusCode], int] = {}
        telemetry.meter.create_observable_up_down_counter(
            "sekha.rpc.in_flight",
            callbacks=[self._observe_in_flight],
            unit="{request}",
            description="RPCs being served",
        )
        telemetry.meter.create_observable_counter(
            "sekha.rpc.requests",
            callbacks=[self._observe_requests],
            unit="{request}",
            description="Finished RPCs by service, rpc and code",
        )

    def _observe_in_flight(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(count, method.attributes) for method, count in list(self._in_flight.items())]

    def _observe_requests(self, options: CallbackOptions) -> list[Observation]:
        finished = list(self._finished.items())
        return [Observation(count, method.with_code(code)) for (method, code), count in finished]

    def _describe(self, full_method: str) -> _Method:
        known = self._methods.get(full_method)
        if known is None:
            service, rpc = split_method(full_method)
            known = _Method(
                rpc=rpc,
                span_name=f"{service}/{rpc}",
                span_attributes=rpc_attributes(service, rpc),
                attributes={"service": service, "rpc": rpc},
                by_code={},
            )
            self._methods[full_method] = known
        return known

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler` of `method` with a span and metrics per call (health and reflection as they are)."""
        if method.startswith(HEALTH_PREFIX) or method.startswith(REFLECTION_PREFIX):
            return handler
        info = self._describe(method)
        return rewrap(
            handler,
            lambda behavior: self._wrap_unary(behavior, info),
            lambda behavior: self._wrap_stream(behavior, info),
            handler.request_deserializer,
        )

    # -- per call -----------------------------------------------------------------------------

    def _begin(self, info: _Method, context: grpc.aio.ServicerContext) -> tuple[Any, ...]:
        started = self._clock()
        self._in_flight[info] = self._in_flight.get(info, 0) + 1
        scope = RpcScope(info.rpc)
        scope_token = _CURRENT_RPC.set(scope)
        parent = extract_from_metadata(context.invocation_metadata())
        span: trace.Span | None = None
        active: otel_context.Context | None
        if self._tracing:
            span = self._tracer.start_span(
                info.span_name, context=parent, kind=SpanKind.SERVER, attributes=info.span_attributes
            )
            active = trace.set_span_in_context(span, parent)
        else:
            active = parent
        context_token = otel_context.attach(active) if active is not None else None
        return started, scope, scope_token, span, context_token

    def _end(
        self,
        info: _Method,
        code: grpc.StatusCode,
        started: float,
        scope: RpcScope,
        scope_token: Any,
        span: trace.Span | None,
        context_token: Any,
    ) -> None:
        duration = self._clock() - started
        if span is not None:
            end_rpc_span(span, code, server_side=True)
        if context_token is not None:
            otel_context.detach(context_token)
        with contextlib.suppress(ValueError, RuntimeError):  # reset elsewhere (generator finalised late)
            _CURRENT_RPC.reset(scope_token)
        self._in_flight[info] -= 1
        key = (info, code)
        self._finished[key] = self._finished.get(key, 0) + 1
        self._duration.record(duration, info.with_code(code))
        if self._on_finish is not None:
            self._on_finish(scope, _CODE_NAMES[code], duration)

    def _wrap_unary(self, behavior: Behavior, info: _Method) -> Behavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            state = self._begin(info, context)
            code = grpc.StatusCode.OK
            try:
                response = await behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except asyncio.CancelledError:
                code = _cancel_code(context)
                raise
            except BaseException:
                # AbortError: the error guard set the status; anything else escaped it.
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._end(info, code, *state)

        return wrapped

    def _wrap_stream(self, behavior: Behavior, info: _Method) -> Behavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            state = self._begin(info, context)
            code = grpc.StatusCode.OK
            try:
                async for response in behavior(request, context):
                    yield response
                code = context.code() or grpc.StatusCode.OK
            except (asyncio.CancelledError, GeneratorExit):
                code = _cancel_code(context)
                raise
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._end(info, code, *state)

        return wrapped
