"""The provider client interface and the wire-neutral types it speaks.

A provider client calls one upstream (OpenAI, Anthropic, Ollama, an in-process model...)
and returns domain results; every failure leaves it as a classified
:class:`~router_service.providers.errors.ProviderError`. Clients never retry: the router is
the only retry loop, and it passes each call its whole time budget as ``timeout_s``.

Also here: the conversion of domain chat messages to OpenAI-style messages, shared by the
LiteLLM path (which translates them further for each provider) and the lean OpenAI path.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from router_service.domain import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    ReasoningDelta,
    ResponseFormatType,
    Role,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from router_service.providers.errors import KIND_EMPTY_STREAM, KIND_RESET, ProviderFailure


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What a provider client needs to know about its provider.

    ``type`` is the provider kind (openai, openrouter, deepseek, moonshot,
    openai_compatible, ollama, anthropic, local, or any LiteLLM provider name).
    ``transport`` picks the client: ``auto``, ``native`` (lean OpenAI-compatible path),
    ``litellm`` or ``local``.
    """

    id: str
    type: str
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = 60.0
    transport: str = "auto"

    def __repr__(self) -> str:
        # The key stays out of reprs, which end up in logs and tracebacks.
        key = "set" if self.api_key else "unset"
        return (
            f"ProviderSpec(id={self.id!r}, type={self.type!r}, base_url={self.base_url!r}, "
            f"api_key=<{key}>, timeout_s={self.timeout_s!r}, transport={self.transport!r})"
        )


@dataclass(frozen=True, slots=True)
class ProviderChatResult:
    """A finished chat completion; usage is None when the provider reported none."""

    text: str
    finish_reason: FinishReason
    usage: Usage | None
    response_model: str
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of streamed text (never empty)."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of a stream that ended normally, with the stream's complete tool calls."""

    finish_reason: FinishReason
    usage: Usage | None
    response_model: str
    tool_calls: tuple[ToolCall, ...] = ()


# Text, tool-call pieces and reasoning pieces as they arrive, then one StreamEnd.
StreamEvent = TextDelta | ToolCallDelta | ReasoningDelta | StreamEnd


@dataclass(frozen=True, slots=True)
class ProviderEmbedResult:
    """One vector per input, in input order; usage is None when the provider reported none."""

    vectors: list[list[float]]
    usage: Usage | None


@runtime_checkable
class ProviderClient(Protocol):
    """A client of one provider. Every method raises only ProviderError (or CancelledError)."""

    spec: ProviderSpec

    async def chat(
        self, model: str, litellm_model: str, request: ChatRequest, max_tokens: int, timeout_s: float
    ) -> ProviderChatResult:
        """One chat completion within ``timeout_s`` in total."""
        ...

    def stream_chat(
        self, model: str, litellm_model: str, request: ChatRequest, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream a chat completion: TextDelta, ToolCallDelta and ReasoningDelta events as the
        provider sends them, then exactly one StreamEnd.

        A stream that ends without text, tool call or finish reason raises ProviderFailure
        (``empty_stream``), and one that ends inside a tool call raises it too (``reset``), so a
        StreamEnd never carries a truncated call.

        ``timeout_s`` bounds the time from the call until the first event, and then each
        gap between events; it does not bound the stream's total length. The iterator is an
        async generator: close it (``contextlib.aclosing``) when abandoning it early so the
        upstream connection is closed at once.
        """
        ...

    async def embed(
        self, model: str, litellm_model: str, inputs: Sequence[str], timeout_s: float
    ) -> ProviderEmbedResult:
        """One vector per input within ``timeout_s`` in total."""
        ...

    async def probe(self, timeout_s: float) -> None:
        """A cheap health check (list models); raises ProviderError when unhealthy."""
        ...

    async def aclose(self) -> None:
        """Release connections and workers; the client is unusable afterwards."""
        ...


# --------------------------------------------------------------------------- conversions

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "eos": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "max_tokens": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "safety": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "tool_use": FinishReason.TOOL_CALLS,
}


def finish_reason_from(value: object) -> FinishReason:
    """Map a provider's finish reason string to the domain enum (UNSPECIFIED if unknown)."""
    if not isinstance(value, str):
        return FinishReason.UNSPECIFIED
    return _FINISH_REASONS.get(value.lower(), FinishReason.UNSPECIFIED)


def _field(value: object, name: str) -> Any:
    """``value[name]`` of a dict or ``value.name`` of an SDK object; None when absent."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _count(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def usage_from_openai(usage: object) -> Usage | None:
    """Usage from an OpenAI-style ``usage`` object or dict; None when absent or empty.

    Prompt tokens include the cached ones in OpenAI's convention, which LiteLLM also follows
    for Anthropic (it adds ``cache_read_input_tokens`` and ``cache_creation_input_tokens`` to
    ``prompt_tokens``); the details say how many of them were cache reads and writes, and how
    many completion tokens were reasoning.
    """
    if usage is None:
        return None
    prompt, completion = _field(usage, "prompt_tokens"), _field(usage, "completion_tokens")
    if prompt is None and completion is None:
        return None
    prompt_details = _field(usage, "prompt_tokens_details")
    cached = _count(_field(prompt_details, "cached_tokens")) or _count(
        _field(usage, "cache_read_input_tokens")
    )
    # DeepSeek reports its cache hits at the top level.
    cached = cached or _count(_field(usage, "prompt_cache_hit_tokens"))
    written = _count(_field(usage, "cache_creation_input_tokens")) or _count(
        _field(prompt_details, "cache_creation_tokens")
    )
    reasoning = _count(_field(_field(usage, "completion_tokens_details"), "reasoning_tokens"))
    return Usage(
        input_tokens=int(prompt or 0),
        output_tokens=int(completion or 0),
        cached_input_tokens=cached,
        cache_write_input_tokens=written,
        reasoning_tokens=reasoning,
    )


def _arguments_text(arguments: object) -> str:
    """Arguments as JSON text: verbatim when the provider sent text, serialized when an object."""
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)


def tool_calls_from_openai(raw_calls: object) -> tuple[ToolCall, ...]:
    """The tool calls of an OpenAI-style answer message (dicts or SDK objects)."""
    if not raw_calls:
        return ()
    calls = []
    for raw in raw_calls:  # type: ignore[attr-defined]
        function = _field(raw, "function")
        name = _field(function, "name")
        if not isinstance(name, str) or not name:
            raise TypeError("tool call without a function name")
        calls.append(
            ToolCall(
                id=str(_field(raw, "id") or ""),
                name=name,
                arguments=_arguments_text(_field(function, "arguments")),
            )
        )
    return tuple(calls)


def reasoning_from_openai(message: object) -> str:
    """Reasoning text of an answer message or stream delta: ``reasoning_content`` (DeepSeek,
    LiteLLM, vLLM) or ``reasoning`` (OpenRouter, Ollama's /v1); empty when there is none."""
    for name in ("reasoning_content", "reasoning"):
        value = _field(message, name)
        if isinstance(value, str) and value:
            return value
    return ""


class _PendingCall:
    __slots__ = ("announced", "arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []
        self.announced = False


class ToolCallAssembler:
    """Turns a stream's tool-call deltas into caller events and, at the end, complete calls.

    Fragments are forwarded as they arrive, never buffered: each caller event carries the
    call's index, its id and name once (on the call's first event), and the new argument
    text. Providers differ in how they number calls (OpenAI: ``index``; some omit it and send
    one whole call per chunk), so a delta without an index opens a new call when it brings an
    id not seen yet and continues the last call otherwise.
    """

    def __init__(self) -> None:
        self._calls: list[_PendingCall] = []
        self._by_index: dict[int, int] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def _slot(self, index: object, call_id: str) -> int:
        if isinstance(index, int) and not isinstance(index, bool):
            slot = self._by_index.get(index)
            if slot is None:
                slot = self._by_index[index] = len(self._calls)
                self._calls.append(_PendingCall())
            return slot
        if not self._calls or (call_id and call_id not in {c.id for c in self._calls}):
            self._calls.append(_PendingCall())
        return len(self._calls) - 1

    def feed(self, raw_calls: object) -> list[ToolCallDelta]:
        """Caller events for one chunk's ``tool_calls`` (OpenAI delta shape, dicts or objects)."""
        events = []
        for raw in raw_calls or ():  # type: ignore[attr-defined]
            call_id = str(_field(raw, "id") or "")
            slot = self._slot(_field(raw, "index"), call_id)
            call = self._calls[slot]
            function = _field(raw, "function")
            name = _field(function, "name")
            fragment = _arguments_text(_field(function, "arguments"))
            new_id = call_id if call_id and not call.id else ""
            new_name = name if isinstance(name, str) and name and not call.name else ""
            call.id = call.id or new_id
            call.name = call.name or new_name
            if fragment:
                call.arguments.append(fragment)
            if new_id or new_name or fragment:
                call.announced = True
                events.append(ToolCallDelta(index=slot, id=new_id, name=new_name, arguments=fragment))
        return events

    def calls(self) -> tuple[ToolCall, ...]:
        """The complete calls, in index order; raises ProviderFailure for a call without a name."""
        if any(not call.name for call in self._calls):
            raise ProviderFailure(KIND_RESET, cause_type="ToolCallWithoutName")
        return tuple(ToolCall(call.id, call.name, "".join(call.arguments)) for call in self._calls)


def check_stream_end(finish_reason: FinishReason, produced_text: bool, tool_calls: ToolCallAssembler) -> None:
    """The rules every stream's end obeys, whatever the provider.

    A stream that delivered no text and no tool call and never said why it finished gave no
    answer: the provider failed, even with HTTP 200 (so the router falls back, or reports
    UNAVAILABLE once output reached the caller). A stream that ended inside a tool call without
    a finish reason broke off: its last call may be cut short, and a truncated call must
    never be handed on as complete.
    """
    if finish_reason is not FinishReason.UNSPECIFIED:
        return
    if tool_calls:
        raise ProviderFailure(KIND_RESET, cause_type="TruncatedToolCall")
    if not produced_text:
        raise ProviderFailure(KIND_EMPTY_STREAM, cause_type="EmptyStream")


def _openai_content(message: ChatMessage) -> str | list[dict[str, Any]]:
    """Plain string for text-only messages (every provider accepts it), parts otherwise."""
    if not message.has_images:
        return message.text
    parts: list[dict[str, Any]] = []
    for part in message.parts:
        if part.text is not None:
            parts.append({"type": "text", "text": part.text})
        elif part.image is not None:
            image = part.image
            if image.url:
                url = image.url
            else:
                encoded = base64.b64encode(image.data or b"").decode("ascii")
                url = f"data:{image.mime_type};base64,{encoded}"
            parts.append({"type": "image_url", "image_url": {"url": url, "detail": image.detail or "auto"}})
    return parts


def _openai_message(message: ChatMessage) -> dict[str, Any]:
    if message.role is Role.TOOL:
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.text}
    out: dict[str, Any] = {"role": message.role.value, "content": _openai_content(message)}
    if message.tool_calls:
        # OpenAI wants null content on a turn that only calls tools.
        out["content"] = out["content"] or None
        out["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]
    return out


def to_openai_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Domain messages as OpenAI chat messages (image parts as ``image_url`` parts, tool calls
    on assistant turns, tool results as ``tool`` messages)."""
    return [_openai_message(m) for m in request.messages]


def generation_params(request: ChatRequest) -> dict[str, Any]:
    """The request's sampling, tool, format and reasoning fields in OpenAI's shape, only those set.

    LiteLLM takes the same shape and translates it per provider (Anthropic ``tools`` with
    ``input_schema``, ``tool_choice`` types, ``thinking`` for a reasoning effort, ``metadata.user_id``).
    """
    generation = request.generation
    params: dict[str, Any] = {}
    if generation.temperature is not None:
        params["temperature"] = generation.temperature
    if generation.top_p is not None:
        params["top_p"] = generation.top_p
    if generation.stop_sequences:
        params["stop"] = list(generation.stop_sequences)
    if generation.seed is not None:
        params["seed"] = generation.seed
    if generation.presence_penalty is not None:
        params["presence_penalty"] = generation.presence_penalty
    if generation.frequency_penalty is not None:
        params["frequency_penalty"] = generation.frequency_penalty
    if generation.reasoning_effort is not None:
        params["reasoning_effort"] = generation.reasoning_effort.value
    if request.user:
        params["user"] = request.user
    if request.tools:
        params["tools"] = [_openai_tool(tool) for tool in request.tools]
        choice = request.tool_choice
        if choice is not None:
            params["tool_choice"] = (
                {"type": "function", "function": {"name": choice.tool_name}}
                if choice.tool_name
                else str(choice.mode)
            )
        if request.parallel_tool_calls is not None:
            params["parallel_tool_calls"] = request.parallel_tool_calls
    response_format = request.response_format
    if response_format.type is ResponseFormatType.JSON_OBJECT:
        params["response_format"] = {"type": "json_object"}
    elif response_format.type is ResponseFormatType.JSON_SCHEMA:
        schema: dict[str, Any] = {
            "name": response_format.schema_name or "response",
            "schema": response_format.schema or {},
            "strict": response_format.strict,
        }
        if response_format.description:
            schema["description"] = response_format.description
        params["response_format"] = {"type": "json_schema", "json_schema": schema}
    return params


def _openai_tool(tool: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = (
        tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    )
    if tool.strict:
        function["strict"] = True
    return {"type": "function", "function": function}
