"""The Router's traces and metrics: a `gateway.Observer` over a `sekha_runtime.telemetry.Telemetry`.

Spans (children of the RPC's SERVER span, which `sekha_runtime.server.tracing` starts):

* `sekha.router.route`: the routing decision (task, candidate count, chosen provider/model,
  why), a zero-work span dated from just before to just after the decision;
* one CLIENT span per provider attempt, named and attributed per the OpenTelemetry GenAI
  conventions (`chat {model}` / `embeddings {model}`, gen_ai.operation.name,
  gen_ai.provider.name, gen_ai.request.model, gen_ai.response.model, gen_ai.usage.*,
  server.address, error.type). It is the current span while the provider is called, so the
  providers' headers hook (`inject_trace_headers`) sends *its* id as the parent;
* breaker transitions and fallbacks as events on whatever span is current.

Metrics: gen_ai.client.token.usage and gen_ai.client.operation.duration per attempt, cost by
provider/model (known prices only), time to first token, fallbacks, breaker state (observable
gauge) and transitions, the state backend's health (observable gauge: 0 while a shared backend
is down and the router serves on local state), and the router's overhead: an RPC's time minus
the time its attempts spent waiting for providers (accumulated in the RPC's `RpcScope`).

Cost: with tracing off no span is built and no attribute dict is made per call; attribute dicts
for metrics are cached per (operation, provider, model, response model, error). Prompts and
completions go on spans only with content capture on; nothing here ever sees a key. Tools are
the same: a request's tool definitions are counted on every span (`sekha.request.tool_count`)
and described (`gen_ai.tool.definitions`) only with capture on; tool calls, tool results and
reasoning appear only inside the captured `gen_ai.input.messages` / `gen_ai.output.messages`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from router_service import domain as d
from router_service.breaker import Breakers, BreakerState
from router_service.config import ProviderConfig, RouterConfig
from router_service.providers.base import ProviderSpec
from router_service.providers.openai_compat import OPENAI_COMPATIBLE_TYPES, resolve_base_url
from sekha.tracing import inject_headers
from sekha_runtime.server.tracing import RpcScope, current_rpc
from sekha_runtime.telemetry import Telemetry

__all__ = ["RouterObserver", "gen_ai_provider_name", "inject_trace_headers"]

# gen_ai.provider.name per provider type: the OpenTelemetry GenAI registry's well-known value
# where one applies. An `openai_compatible` server (vLLM, LM Studio, llama.cpp, ...) speaks the
# OpenAI API and is reported as `openai`, as the convention says for systems reached through the
# OpenAI API (server.address and the model attributes tell which one). Types the registry does not
# list report their own name as a custom value: `ollama`, `openrouter`, `moonshot`, and `local`
# (the router's in-process embedding model); so does any other LiteLLM provider name.
_GEN_AI_PROVIDER_NAMES: Mapping[str, str] = {
    "openai": "openai",
    "openai_compatible": "openai",
    "anthropic": "anthropic",
    "deepseek": "deepseek",
    "cohere": "cohere",
    "groq": "groq",
    "perplexity": "perplexity",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "watsonx": "ibm.watsonx.ai",
}
BREAKER_STATE_VALUES: Mapping[BreakerState, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}
# RPCs that call providers, hence have an overhead worth measuring.
_ROUTED_RPCS = frozenset({"Chat", "StreamChat", "Embed"})
_ATTRIBUTE_CACHE_LIMIT = 4096


def gen_ai_provider_name(provider_type: str) -> str:
    """The `gen_ai.provider.name` of a provider type (`openai`, `anthropic`, `gcp.gemini`, ...)."""
    return _GEN_AI_PROVIDER_NAMES.get(provider_type, provider_type)


def inject_trace_headers(headers: dict[str, str]) -> None:
    """The providers' headers hook (both transports): W3C trace context of the current (attempt) span."""
    inject_headers(headers)


def _server_address(provider: ProviderConfig) -> tuple[str | None, int | None]:
    url = provider.base_url
    if provider.type in OPENAI_COMPATIBLE_TYPES:
        try:
            spec = ProviderSpec(id=provider.id, type=provider.type, base_url=provider.base_url)
            url = resolve_base_url(spec)
        except ValueError:
            url = None
    if not url:
        return None, None
    parts = urlsplit(url)
    return parts.hostname, parts.port


def _reason_kind(reason: str) -> str:
    """The routing reason without its numbers: low cardinality, still says why."""
    if "not eligible" in reason:
        return "preferred_model_not_eligible"
    if "preferred model" in reason:
        return "preferred_model"
    return "priority"


def _parent_unsampled() -> bool:
    """Whether the current span is one the sampler dropped (the RPC's, for most requests at 10%).

    Its children would be dropped too (parent-based samplers follow the parent, ratio samplers
    decide on the same trace id), so they are not built at all; the context still propagates,
    with its not-sampled flag, to the provider.
    """
    context = trace.get_current_span().get_span_context()
    return context.is_valid and not context.trace_flags.sampled


def _tool_call_parts(calls: Any) -> list[dict[str, Any]]:
    return [
        {"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments} for call in calls
    ]


def _tool_definitions(tools: Any) -> str:
    definitions = []
    for tool in tools:
        definition: dict[str, Any] = {"type": "function", "name": tool.name}
        if tool.description:
            definition["description"] = tool.description
        if tool.parameters is not None:
            definition["parameters"] = tool.parameters
        definitions.append(definition)
    return json.dumps(definitions, ensure_ascii=False)


def _request_attributes(request: Any) -> dict[str, Any]:
    """Sampling fields per the GenAI conventions, and the count of tools (never their content)."""
    attributes: dict[str, Any] = {}
    generation = getattr(request, "generation", None)
    if generation is not None:
        for name, value in (
            ("gen_ai.request.seed", generation.seed),
            ("gen_ai.request.presence_penalty", generation.presence_penalty),
            ("gen_ai.request.frequency_penalty", generation.frequency_penalty),
        ):
            if value is not None:
                attributes[name] = value
    tools = getattr(request, "tools", ())
    if tools:
        attributes["sekha.request.tool_count"] = len(tools)
    return attributes


def _input_messages(request: Any) -> str:
    messages = []
    for message in getattr(request, "messages", ()):
        if message.role is d.Role.TOOL:
            response = {"type": "tool_call_response", "id": message.tool_call_id, "response": message.text}
            messages.append({"role": "tool", "parts": [response]})
            continue
        parts: list[dict[str, Any]] = []
        for part in message.parts:
            if part.text is not None:
                parts.append({"type": "text", "content": part.text})
            elif part.image is not None:
                image = part.image
                if image.url:
                    parts.append({"type": "uri", "modality": "image", "uri": image.url})
                else:  # the bytes stay out of telemetry even with capture on
                    parts.append({"type": "blob", "modality": "image", "mime_type": image.mime_type})
        parts.extend(_tool_call_parts(message.tool_calls))
        messages.append({"role": message.role.value, "parts": parts})
    return json.dumps(messages, ensure_ascii=False)


def _output_messages(text: str, tool_calls: Any = (), reasoning: str = "") -> str:
    parts: list[dict[str, Any]] = []
    if reasoning:
        parts.append({"type": "reasoning", "content": reasoning})
    if text or not tool_calls:
        parts.append({"type": "text", "content": text})
    parts.extend(_tool_call_parts(tool_calls))
    return json.dumps([{"role": "assistant", "parts": parts}], ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class _Model:
    """Per (operation, provider, model): what every attempt on it shares."""

    operation: str
    span_name: str
    span_attributes: dict[str, Any]
    metric_attributes: dict[str, Any]
    cost_attributes: dict[str, str]


class _AttemptScope:
    """One provider attempt in flight: its span, the context token, and its clock readings."""

    __slots__ = ("model", "returned", "span", "started", "token")

    def __init__(self, model: _Model, started: float, span: trace.Span | None, token: Any) -> None:
        self.model = model
        self.started = started
        self.returned: float | None = None
        self.span = span
        self.token = token


class RouterObserver:
    """Implements `router_service.gateway.Observer`; also the RPC `on_finish` hook and a breaker listener."""

    def __init__(self, telemetry: Telemetry, clock: Callable[[], float] = time.perf_counter) -> None:
        """One per server; `bind` points it at the configuration and breakers in use."""
        self._tracer = telemetry.tracer
        self._tracing = telemetry.tracing_enabled
        self._capture = telemetry.capture_message_content
        instruments = telemetry.instruments
        self._token_usage = instruments.token_usage
        self._operation_duration = instruments.operation_duration
        self._cost = instruments.cost
        self._ttft = instruments.time_to_first_token
        self._fallbacks = instruments.fallbacks
        self._transitions = instruments.breaker_transitions
        self._overhead = instruments.overhead
        self._clock = clock
        self._providers: dict[str, ProviderConfig] = {}
        self._addresses: dict[str, tuple[str | None, int | None]] = {}
        self._breakers: Breakers | None = None
        self._state: Any = None  # events.StateBackendHealth
        self._models: dict[tuple[str, str, str], _Model] = {}
        self._attributes: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._overhead_attributes = {rpc: {"rpc": rpc} for rpc in _ROUTED_RPCS}
        telemetry.meter.create_observable_gauge(
            "sekha.router.breaker.state",
            callbacks=[self._observe_breakers],
            unit="{state}",
            description="Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
        )
        telemetry.meter.create_observable_gauge(
            "sekha.router.state_backend.healthy",
            callbacks=[self._observe_state],
            unit="",
            description="1 while the state backend answers; 0 while a shared one (Redis) is down and "
            "budgets, rate limits and breakers are served on this replica's local state",
        )

    def bind(self, config: RouterConfig, breakers: Breakers) -> None:
        """Observe this configuration's providers and breakers (at start and after each reload)."""
        self._providers = {p.id: p for p in config.providers}
        self._addresses = {p.id: _server_address(p) for p in config.providers}
        self._models = {}
        self._attributes = {}
        self._breakers = breakers
        breakers.add_listener(self.breaker_transition)

    def watch_state(self, state: Any) -> None:
        """Report the health of this state backend (an `events.StateBackendHealth`)."""
        self._state = state

    def _observe_state(self, options: CallbackOptions) -> Iterable[Observation]:
        state = self._state
        if state is None:
            return []
        return [Observation(1 if state.healthy else 0, {"backend": state.backend})]

    # -- per-model constants ----------------------------------------------------------------

    def _model(self, operation: str, entry: Any) -> _Model:
        key = (operation, entry.provider_id, entry.model)
        known = self._models.get(key)
        if known is None:
            provider = self._providers.get(entry.provider_id)
            provider_type = provider.type if provider is not None else entry.provider_type
            common: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": gen_ai_provider_name(provider_type),
                "gen_ai.request.model": entry.model,
            }
            host, port = self._addresses.get(entry.provider_id, (None, None))
            if host:
                common["server.address"] = host
            span_attributes = {**common, "sekha.provider.id": entry.provider_id}
            if port:
                span_attributes["server.port"] = port
            known = _Model(
                operation=operation,
                span_name=f"{operation} {entry.model}",
                span_attributes=span_attributes,
                metric_attributes=common,
                cost_attributes={"provider": entry.provider_id, "model": entry.model},
            )
            self._models[key] = known
        return known

    def _with(self, model: _Model, *extra: tuple[str, str]) -> dict[str, Any]:
        """Metric attributes of `model` plus `extra` pairs, built once per combination."""
        key = (id(model), *extra)
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = dict(model.metric_attributes)
            attributes.update(extra)
            if len(self._attributes) < _ATTRIBUTE_CACHE_LIMIT:  # a provider may report any model name
                self._attributes[key] = attributes
        return attributes

    # -- routing -----------------------------------------------------------------------------

    def route_started(self) -> int | None:
        return time.time_ns() if self._tracing and not _parent_unsampled() else None

    def routed(self, decision: d.RoutingDecision, started: Any) -> None:
        if started is None:
            return
        span = self._tracer.start_span("sekha.router.route", start_time=started)
        if span.is_recording():
            chosen = decision.chosen
            span.set_attributes(
                {
                    "sekha.route.task": decision.task.value,
                    "sekha.route.candidates": len(decision.candidates),
                    "sekha.route.rejected": len(decision.rejected),
                    "sekha.route.chosen.provider": chosen.provider_id,
                    "sekha.route.chosen.model": chosen.model,
                    "sekha.route.reason": _reason_kind(decision.reason),
                }
            )
        span.end()

    def fallback(self, task: d.Task, from_provider: str, to_provider: str) -> None:
        attributes = {"task": task.value, "from_provider": from_provider, "to_provider": to_provider}
        self._fallbacks.add(1, attributes)
        if self._tracing:
            trace.get_current_span().add_event("sekha.router.fallback", attributes)

    # -- attempts ----------------------------------------------------------------------------

    def attempt_started(self, operation: str, entry: Any, request: Any) -> _AttemptScope:
        model = self._model(operation, entry)
        span: trace.Span | None = None
        token = None
        if self._tracing and not _parent_unsampled():
            span = self._tracer.start_span(model.span_name, kind=SpanKind.CLIENT)
            if span.is_recording():
                span.set_attributes(model.span_attributes)
                if operation == "chat":
                    span.set_attributes(_request_attributes(request))
                    if self._capture:
                        span.set_attribute("gen_ai.input.messages", _input_messages(request))
                        if getattr(request, "tools", ()):
                            span.set_attribute("gen_ai.tool.definitions", _tool_definitions(request.tools))
            token = otel_context.attach(trace.set_span_in_context(span))
        return _AttemptScope(model, self._clock(), span, token)

    def upstream_time(self, seconds: float, scope: Any = None) -> None:
        if isinstance(scope, _AttemptScope) and scope.returned is None:
            scope.returned = self._clock()

    def first_token(self, entry: Any, seconds: float, scope: Any = None) -> None:
        if not isinstance(scope, _AttemptScope):
            return
        elapsed = self._clock() - scope.started
        self._ttft.record(elapsed, scope.model.cost_attributes)
        if scope.span is not None and scope.span.is_recording():
            scope.span.set_attribute("sekha.time_to_first_token_s", elapsed)

    def _waited(self, scope: _AttemptScope) -> float:
        """The attempt's time with the provider, added to the RPC's upstream total."""
        waited = (scope.returned or self._clock()) - scope.started
        rpc = current_rpc()
        if rpc is not None:
            rpc.upstream_s += waited
        return waited

    def _close(self, scope: _AttemptScope) -> None:
        if scope.span is not None:
            scope.span.end()
        if scope.token is not None:
            otel_context.detach(scope.token)
            scope.token = None

    def _record_usage(
        self, model: _Model, extra: tuple[tuple[str, str], ...], usage: d.Usage | None, cost: d.Cost | None
    ) -> None:
        if usage is not None:
            self._token_usage.record(
                usage.input_tokens, self._with(model, *extra, ("gen_ai.token.type", "input"))
            )
            if model.operation == "chat":
                self._token_usage.record(
                    usage.output_tokens, self._with(model, *extra, ("gen_ai.token.type", "output"))
                )
                # Parts of the totals above, each under its own token type (sum input and
                # output only): only when the provider reported them, so most calls add nothing.
                for token_type, count in (
                    ("cache_read_input", usage.cached_input_tokens),
                    ("cache_creation_input", usage.cache_write_input_tokens),
                    ("reasoning_output", usage.reasoning_tokens),
                ):
                    if count:
                        self._token_usage.record(
                            count, self._with(model, *extra, ("gen_ai.token.type", token_type))
                        )
        if cost is not None and cost.cost_usd is not None:
            self._cost.add(cost.cost_usd, model.cost_attributes)

    @staticmethod
    def _set_usage(span: trace.Span, model: _Model, usage: d.Usage | None) -> None:
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            if model.operation == "chat":
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
                if usage.cached_input_tokens:
                    span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_input_tokens)
                if usage.cache_write_input_tokens:
                    span.set_attribute(
                        "gen_ai.usage.cache_creation.input_tokens", usage.cache_write_input_tokens
                    )
                if usage.reasoning_tokens:
                    span.set_attribute("sekha.usage.reasoning_tokens", usage.reasoning_tokens)

    def attempt_finished(
        self,
        operation: str,
        entry: Any,
        attempt: d.Attempt,
        usage: d.Usage | None,
        cost: d.Cost | None,
        scope: Any = None,
        response_model: str = "",
        output_text: str | None = None,
        output_tool_calls: Any = (),
        output_reasoning: str = "",
    ) -> None:
        if not isinstance(scope, _AttemptScope):
            started = self._clock() - attempt.latency_s
            scope = _AttemptScope(self._model(operation, entry), started, None, None)
        model = scope.model
        waited = self._waited(scope)
        error = "" if attempt.outcome is d.AttemptOutcome.SUCCEEDED else attempt.error_kind or "error"
        extra: list[tuple[str, str]] = []
        if response_model:
            extra.append(("gen_ai.response.model", response_model))
        if error:
            extra.append(("error.type", error))
        self._operation_duration.record(waited, self._with(model, *extra))
        self._record_usage(model, tuple(extra), usage, cost)
        span = scope.span
        if span is not None and span.is_recording():
            if response_model:
                span.set_attribute("gen_ai.response.model", response_model)
            self._set_usage(span, model, usage)
            if error:
                span.set_attribute("error.type", error)
                span.set_status(Status(StatusCode.ERROR))
            if self._capture and output_text is not None and operation == "chat":
                span.set_attribute(
                    "gen_ai.output.messages",
                    _output_messages(output_text, output_tool_calls, output_reasoning),
                )
        self._close(scope)

    def attempt_cancelled(self, scope: Any, usage: d.Usage | None = None, cost: d.Cost | None = None) -> None:
        if not isinstance(scope, _AttemptScope):
            return
        waited = self._waited(scope)
        exc_type = sys.exc_info()[0]
        cancelled = exc_type is None or issubclass(exc_type, asyncio.CancelledError | GeneratorExit)
        error = "cancelled" if cancelled else exc_type.__name__  # type: ignore[union-attr]
        if not cancelled:
            # A bug, not the caller leaving: worth a data point (the caller's cancellation is not).
            self._operation_duration.record(waited, self._with(scope.model, ("error.type", error)))
        # Output streamed before the caller left was billed: its tokens and cost count.
        model = scope.model
        self._record_usage(model, (("error.type", error),), usage, cost)
        span = scope.span
        if span is not None and span.is_recording():
            span.set_attribute("error.type", error)
            self._set_usage(span, model, usage)
            if not cancelled:
                span.set_status(Status(StatusCode.ERROR))
        self._close(scope)

    # -- breakers ----------------------------------------------------------------------------

    def breaker_transition(self, provider_id: str, old: BreakerState, new: BreakerState) -> None:
        """A `BreakerRegistry` listener."""
        attributes = {"provider": provider_id, "from_state": old.value, "to_state": new.value}
        self._transitions.add(1, attributes)
        if self._tracing:
            trace.get_current_span().add_event("sekha.breaker.transition", attributes)

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        # May run on an exporter's thread: `states()` copies the table in one step. A provider
        # without a breaker yet has had no failures, so it is closed.
        states = self._breakers.states() if self._breakers is not None else {}
        return [
            Observation(
                BREAKER_STATE_VALUES[states.get(provider_id, BreakerState.CLOSED)], {"provider": provider_id}
            )
            for provider_id in list(self._providers)
        ]

    # -- RPC end -----------------------------------------------------------------------------

    def rpc_finished(self, scope: RpcScope, code: str, duration_s: float) -> None:
        """`ServerTelemetry` hook: the router's own share of a successful routed RPC."""
        if code == "OK" and scope.method in _ROUTED_RPCS:
            own = max(0.0, duration_s - scope.upstream_s)
            self._overhead.record(own, self._overhead_attributes[scope.method])
