"""The HTTP door's aiohttp application: OpenAI's routes over the Router's Gateway.

    POST /v1/chat/completions   JSON, or SSE with `"stream": true` (usage with stream_options)
    POST /v1/embeddings         float or base64
    GET  /v1/models[/{id}]      configured models and the task aliases (`sekha/chat_smart`, ...)
    GET  /healthz, /readyz      liveness; readiness (503 once the server drains)

Every request goes to the same Gateway object the gRPC servicer uses (read per request, so a
config reload swaps both doors at once), with the same auth keys, limits, rate limits, budgets and
spend. A streamed answer holds its headers until the first event: a request that fails before any
output gets a real HTTP error status, and one that breaks after output ends with an SSE `error`
event and no `[DONE]`, so no client mistakes it for a complete answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from router_service import domain as d
from router_service.catalog import Catalog
from router_service.gateway import Deadline, Gateway
from router_service.http import convert
from router_service.http.errors import HttpError, http_error
from router_service.http.schema import (
    ChatCompletionRequest,
    EmbeddingRequest,
    ValidationError,
    error_path,
    unsupported_fields,
)
from sekha.keys import presented_key
from sekha.tracing import extract_from_metadata
from sekha_runtime.errors import FieldViolation, InvalidArgumentError, OverloadedError, UnauthenticatedError
from sekha_runtime.server.auth import KeyRing
from sekha_runtime.telemetry import Telemetry

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# The API key id of the request's caller (None when auth is off), set by the middleware.
_CALLER = web.RequestKey("caller", str)


class ServingCore(Protocol):
    """Where the current gateway and catalog live (the gRPC servicer; a reload swaps both)."""

    gateway: Gateway
    catalog: Catalog


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error_response(error: HttpError) -> web.Response:
    return _json(error.body(), error.status, error.headers)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: Python's NaN and Infinity literals are refused, since no provider
    accepts them back."""
    return json.loads(text, parse_constant=_reject_constant)


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


class HttpDoor:
    """The application and its per-request plumbing (auth, tracing, metrics, errors)."""

    def __init__(
        self,
        core: ServingCore,
        keys: Callable[[], KeyRing | None],
        serving: Callable[[], bool],
        telemetry: Telemetry | None = None,
        max_body_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._core = core
        self._keys = keys
        self._serving = serving
        self._telemetry = telemetry
        self._tracer = telemetry.tracer if telemetry is not None and telemetry.tracing_enabled else None
        self._duration = telemetry.instruments.http_duration if telemetry is not None else None
        self._attributes: dict[tuple[str, str, int], dict[str, Any]] = {}
        # Span name and attributes per (method, route): made once, so an unsampled request
        # formats and assembles nothing for its span (routes are the app's, a bounded set).
        self._span_starts: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self._middleware])
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/v1/models/{model:.+}", self.model)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        # handler_cancellation: a caller that hangs up cancels its request, and with it the
        # provider call it was paying for.
        # shutdown_timeout: the door closes after the gRPC server's grace period, which in-flight
        # HTTP requests already had; aiohttp's default (60 s) would hold the process past it.
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ middleware

    def _span_start(self, method: str, route: str) -> tuple[str, dict[str, str]]:
        key = (method, route)
        known = self._span_starts.get(key)
        if known is None:
            known = (f"{method} {route}", {"http.request.method": method, "http.route": route})
            if len(self._span_starts) < 256:  # methods come from callers: keep the table bounded
                self._span_starts[key] = known
        return known

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = (
            request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        )
        started = time.perf_counter()
        parent = extract_from_metadata(request.headers.items())
        active: otel_context.Context | None = parent
        span = None
        if self._tracer is not None and route not in _OPEN_PATHS:
            name, span_attributes = self._span_start(request.method, route)
            span = self._tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=span_attributes
            )
            active = trace.set_span_in_context(span, parent)
        token = otel_context.attach(active) if active is not None else None
        status = 500
        try:
            if request.path not in _OPEN_PATHS:
                if not self._serving():
                    # Draining: like the gRPC door, new work is refused (requests already in
                    # flight finish); a load balancer retries it on another replica.
                    raise OverloadedError("the router is shutting down", retry_after_s=1.0)
                request[_CALLER] = self._authenticate(request)  # type: ignore[assignment,misc]
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the caller went away (nginx's convention)
            raise
        except BaseException as exc:
            error = http_error(exc, route)
            status = error.status
            return _error_response(error)
        finally:
            if token is not None:
                otel_context.detach(token)
            if span is not None and span.is_recording():
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            if span is not None:
                span.end()
            if self._duration is not None:
                key = (request.method, route, status)
                attributes = self._attributes.get(key)
                if attributes is None:
                    attributes = {
                        "http.request.method": request.method,
                        "http.route": route,
                        "http.response.status_code": status,
                        "sekha.protocol": "http",
                    }
                    if len(self._attributes) < 256:  # bounded: statuses x routes
                        self._attributes[key] = attributes
                self._duration.record(time.perf_counter() - started, attributes)

    def _authenticate(self, request: web.Request) -> str | None:
        """The API key id when auth is on (None when off); UnauthenticatedError when the key is wrong."""
        keys = self._keys()
        if keys is None:
            return None
        key_id = keys.identify(presented_key(request.headers.items()))
        if key_id is None:
            raise UnauthenticatedError("missing or invalid API key (Authorization: Bearer <key>)")
        return key_id

    # ------------------------------------------------------------------ helpers

    async def _body(
        self, request: web.Request, model: type[ChatCompletionRequest] | type[EmbeddingRequest]
    ) -> Any:
        try:
            raw = await request.json(loads=_strict_json)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgumentError(FieldViolation("body", "the request body is not valid JSON")) from None
        if not isinstance(raw, dict):
            raise InvalidArgumentError(FieldViolation("body", "the request body must be a JSON object"))
        try:
            body = model.model_validate(raw)
        except ValidationError as exc:
            violations = [
                FieldViolation(error_path(err["loc"]) or "body", err["msg"]) for err in exc.errors()[:10]
            ]
            raise InvalidArgumentError(violations) from None
        unsupported = unsupported_fields(body)
        if unsupported:
            raise InvalidArgumentError(
                [FieldViolation(name, "not supported by this gateway yet") for name in unsupported]
            )
        return body

    def _model_tasks(self, name: str) -> frozenset[d.Task] | None:
        entries = self._core.catalog.registry.find(name)
        if not entries:
            return None
        return frozenset(task for entry in entries for task in entry.tasks)

    @staticmethod
    def _headers(request: web.Request) -> dict[str, str]:
        return {name.lower(): value for name, value in request.headers.items()}

    # ------------------------------------------------------------------ routes

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body: ChatCompletionRequest = await self._body(request, ChatCompletionRequest)
        headers = self._headers(request)
        chat = convert.chat_request(body, headers, self._model_tasks)
        deadline = Deadline.after(convert.timeout_from(headers))
        gateway = self._core.gateway
        if not body.stream:
            result = await gateway.chat(chat, deadline, request.get(_CALLER))
            return _json(convert.chat_completion(result), headers=convert.routing_headers(result))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = gateway.stream_chat(chat, deadline, request.get(_CALLER))
        return await self._stream(
            request, events, convert.completion_id(chat.request_id), body.model, include_usage
        )

    async def _stream(
        self,
        request: web.Request,
        events: AsyncIterator[d.StreamOutput | d.ChatResult],
        chunk_id: str,
        model: str,
        include_usage: bool,
    ) -> web.StreamResponse:
        created = int(time.time())
        try:
            # Nothing is sent before the first event: an error here is an ordinary HTTP error.
            first = await anext(events)
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]
            raise
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        await response.prepare(request)
        try:
            pending: list[d.StreamOutput | d.ChatResult] = [first]
            role_sent = False
            async for event in _chain(pending, events):
                if isinstance(event, d.ChatResult):
                    for closing in convert.final_chunks(chunk_id, created, event, include_usage):
                        await response.write(_sse(closing))
                    await response.write(_sse("[DONE]"))
                    break
                delta: dict[str, Any] = convert.stream_delta(event)
                if not role_sent:
                    delta = {"role": "assistant", **delta}
                    role_sent = True
                await response.write(_sse(convert.chunk(chunk_id, created, model, delta)))
        except (ConnectionResetError, asyncio.CancelledError):
            raise  # the caller is gone; closing `events` below stops the provider call
        except BaseException as exc:
            error = http_error(exc, "/v1/chat/completions")
            log.warning("http stream ended by an error after output: %s", error.code)
            with contextlib.suppress(ConnectionResetError):
                await response.write(_sse(error.body()))
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        body: EmbeddingRequest = await self._body(request, EmbeddingRequest)
        headers = self._headers(request)
        embed = convert.embed_request(body, headers, self._model_tasks)
        deadline = Deadline.after(convert.timeout_from(headers))
        result = await self._core.gateway.embed(embed, deadline, request.get(_CALLER))
        return _json(
            convert.embedding_list(result, body.encoding_format), headers=convert.routing_headers(result)
        )

    def _model_entries(self) -> list[tuple[str, str]]:
        entries = sorted(self._core.catalog.registry.entries, key=lambda e: (e.provider_id, e.model))
        return [(entry.model, entry.provider_id) for entry in entries]

    async def models(self, request: web.Request) -> web.Response:
        return _json(convert.model_list(self._model_entries()))

    async def model(self, request: web.Request) -> web.Response:
        wanted = request.match_info["model"]
        for model in convert.model_list(self._model_entries())["data"]:
            if model["id"] == wanted or f"{model['owned_by']}/{model['id']}" == wanted:
                return _json(model)
        return _error_response(
            HttpError(
                404, f"model {wanted[:200]!r} not found", "invalid_request_error", "model_not_found", "model"
            )
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self._serving():
            return _json({"status": "serving"})
        return _json({"status": "not_serving"}, status=503)


async def _chain(
    first: list[d.StreamOutput | d.ChatResult], rest: AsyncIterator[d.StreamOutput | d.ChatResult]
) -> AsyncIterator[d.StreamOutput | d.ChatResult]:
    for event in first:
        yield event
    async for event in rest:
        yield event
