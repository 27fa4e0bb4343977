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
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from router_service.domain import ChatMessage, ChatRequest, FinishReason, Usage


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


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of streamed text (never empty)."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of a stream that ended normally."""

    finish_reason: FinishReason
    usage: Usage | None
    response_model: str


StreamEvent = TextDelta | StreamEnd


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
        """Stream a chat completion: TextDelta events, then exactly one StreamEnd.

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


def usage_from_openai(usage: object) -> Usage | None:
    """Usage from an OpenAI-style ``usage`` object or dict; None when absent or empty."""
    if usage is None:
        return None
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    else:
        prompt, completion = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
    if prompt is None and completion is None:
        return None
    return Usage(input_tokens=int(prompt or 0), output_tokens=int(completion or 0))


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


def to_openai_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """Domain messages as OpenAI chat messages (image parts as ``image_url`` parts)."""
    return [{"role": m.role.value, "content": _openai_content(m)} for m in request.messages]


def generation_params(request: ChatRequest) -> dict[str, Any]:
    """temperature / top_p / stop, only those the request sets."""
    generation = request.generation
    params: dict[str, Any] = {}
    if generation.temperature is not None:
        params["temperature"] = generation.temperature
    if generation.top_p is not None:
        params["top_p"] = generation.top_p
    if generation.stop_sequences:
        params["stop"] = list(generation.stop_sequences)
    return params
