"""The LiteLLM path: providers whose wire format the router does not speak itself.

LiteLLM translates OpenAI-style requests to Anthropic, Gemini, Ollama's native API and
many more. The router gives it one job per call and nothing else: its retries are off
(``num_retries=0``), the timeout is the router's budget, cost lookups come from the bundled
price map (``LITELLM_LOCAL_MODEL_COST_MAP``; there is no network at import), and it must
never log request bodies.

Cancellation: LiteLLM's default HTTP transport is aiohttp under an httpx facade. A task
cancelled while awaiting the upstream answer aborts the aiohttp request, which closes its
connection. A stream is an async iterator over an aiohttp response that is only closed when
the iterator is closed, so :meth:`LiteLLMProvider.stream_chat` always calls the stream's
``aclose()`` (``CustomStreamWrapper.aclose`` -> provider stream ``aclose`` ->
``AiohttpResponseStream`` -> ``ClientResponse.close``) when it ends early for any reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import aiohttp

from router_service.domain import ChatRequest, FinishReason, ReasoningDelta, Usage
from router_service.providers.base import (
    ProviderChatResult,
    ProviderEmbedResult,
    ProviderSpec,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallAssembler,
    check_stream_end,
    finish_reason_from,
    generation_params,
    reasoning_from_openai,
    to_openai_messages,
    tool_calls_from_openai,
    usage_from_openai,
)
from router_service.providers.errors import (
    KIND_BAD_RESPONSE,
    ProviderError,
    ProviderFailure,
    classify_http,
    classify_litellm_error,
    classify_transport_error,
    decode_error_body,
)
from router_service.providers.openai_compat import DEFAULT_BASE_URLS, DEFAULT_OLLAMA_BASE_URL

_logger = logging.getLogger(__name__)

_ANTHROPIC_VERSION = "2023-06-01"
_NO_KEY = "no-key"

# Where a cheap "list models" call lives for LiteLLM-only provider types; other types have no
# probe (see LiteLLMProvider.probe).
_PROBE_URLS: Mapping[str, str] = {
    "anthropic": "https://api.anthropic.com/v1/models",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/models",
    "mistral": "https://api.mistral.ai/v1/models",
    "groq": "https://api.groq.com/openai/v1/models",
    "together_ai": "https://api.together.xyz/v1/models",
    "fireworks_ai": "https://api.fireworks.ai/inference/v1/models",
    **{kind: f"{url}/models" for kind, url in DEFAULT_BASE_URLS.items()},
}


def import_litellm() -> ModuleType:
    """Import LiteLLM offline and quiet; idempotent (the module system caches the import)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # The router fetches image URLs only through its own SSRF-safe fetcher (limits.inline_image_urls);
    # LiteLLM must never download one for a provider that wants bytes (read once, at import).
    os.environ.setdefault("MAX_IMAGE_URL_DOWNLOAD_SIZE_MB", "0")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    # Keeps messages and responses out of LiteLLM's logging objects and callbacks.
    litellm.turn_off_message_logging = True
    litellm.redact_messages_in_exceptions = True
    litellm.log_raw_request_response = False
    litellm.set_verbose = False
    # litellm's OpenAI embedding path reads max_retries=0 as "unset" and retries twice
    # (``max_retries or DEFAULT_MAX_RETRIES``); the router must stay the only retry loop.
    litellm.DEFAULT_MAX_RETRIES = 0  # type: ignore[misc]  # Final in litellm, read at call time
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "openai", "httpx", "httpcore"):
        # Their debug logs print request bodies (the OpenAI SDK logs full request options):
        # nothing below WARNING from them, even when the process logs at DEBUG.
        lite_logger = logging.getLogger(name)
        if lite_logger.level < logging.WARNING:
            lite_logger.setLevel(logging.WARNING)
    return litellm


def _usage_of(response: Any) -> Usage | None:
    """Provider-reported usage; LiteLLM's placeholder of all zeros means "none reported"."""
    usage = getattr(response, "usage", None)
    if usage is None and isinstance(response, Mapping):
        usage = response.get("usage")
    result = usage_from_openai(usage)
    if result is None or (result.input_tokens == 0 and result.output_tokens == 0):
        return None
    return result


def _response_model(response: Any, default: str, litellm_model: str) -> str:
    """The model the provider says answered, without LiteLLM's ``provider/`` prefix."""
    reported = getattr(response, "model", None)
    if not reported or not isinstance(reported, str):
        return default
    prefix = litellm_model.split("/", 1)[0] + "/"
    return reported.removeprefix(prefix) if "/" in litellm_model else reported


def _provider_sent_no_chunks(stream: Any) -> bool:
    chunks = getattr(stream, "chunks", None)
    return isinstance(chunks, list) and not chunks


def _provider_finish_reason(stream: Any, reported: FinishReason) -> FinishReason:
    """The finish reason the provider itself sent; UNSPECIFIED when it sent none.

    LiteLLM ends every stream with a finish reason, making one up ("stop") when the provider
    sent none; the wrapper keeps what the provider really said, and only that tells a complete
    answer from a stream that just stopped.
    """
    if not hasattr(stream, "received_finish_reason"):
        return reported  # cannot tell: trust what LiteLLM reports
    sent = getattr(stream, "received_finish_reason", None) or getattr(
        stream, "intermittent_finish_reason", None
    )
    return finish_reason_from(sent) if sent else FinishReason.UNSPECIFIED


def _provider_sent_usage(stream: Any) -> bool:
    """Whether the provider itself put usage in any stream chunk.

    LiteLLM strips usage from the chunks it hands out and, at the end, yields one it
    rebuilt from all chunks - also when the provider sent none. The chunks it kept
    (``CustomStreamWrapper.chunks``) still show whether any carried provider usage.
    """
    chunks = getattr(stream, "chunks", None)
    if not isinstance(chunks, list):
        return True  # cannot tell: trust what LiteLLM reports
    return any(getattr(chunk, "usage", None) is not None for chunk in chunks)


class LiteLLMProvider:
    """A ProviderClient calling ``litellm.acompletion`` / ``litellm.aembedding``."""

    def __init__(
        self, spec: ProviderSpec, headers_hook: Callable[[dict[str, str]], None] | None = None
    ) -> None:
        """`headers_hook` may add headers to each call's own dict (tracing puts `traceparent` there)."""
        self.spec = spec
        self._headers_hook = headers_hook
        self._litellm = import_litellm()
        self._api_base = self._resolve_api_base(spec)
        self._http_session: aiohttp.ClientSession | None = None
        self._http_session_loop: asyncio.AbstractEventLoop | None = None
        self._known_ollama_models: set[str] = set()

    def _chat_model(self, litellm_model: str) -> str:
        """The LiteLLM model string for a chat call.

        LiteLLM's ``ollama/`` provider uses ``/api/generate`` with its own prompt template
        (system roles and image parts degrade); ``ollama_chat/`` uses ``/api/chat`` and
        passes the messages through, so chat always goes there.
        """
        if litellm_model.startswith("ollama/"):
            litellm_model = "ollama_chat/" + litellm_model.removeprefix("ollama/")
        self._register_ollama_model(litellm_model)
        return litellm_model

    def _register_ollama_model(self, litellm_model: str) -> None:
        """Make an ``ollama_chat/<model>`` known to LiteLLM before its first call.

        For an Ollama model missing from its model map, LiteLLM's success logging fetches the
        model's details with a *blocking* ``POST /api/show`` on the event loop thread - a hung
        Ollama would freeze the whole router. A mapped model skips that. The stub has no
        prices (the router prices calls itself) and only the ``ollama_chat/`` key, which the
        registry's ``ollama/<model>`` lookups never read.
        """
        if litellm_model in self._known_ollama_models or not litellm_model.startswith("ollama_chat/"):
            return
        self._litellm.model_cost.setdefault(
            litellm_model, {"litellm_provider": "ollama_chat", "mode": "chat"}
        )
        self._known_ollama_models.add(litellm_model)

    @staticmethod
    def _resolve_api_base(spec: ProviderSpec) -> str | None:
        if spec.type == "ollama":
            # Always explicit: LiteLLM would otherwise read OLLAMA_API_BASE or guess localhost.
            root = (spec.base_url or DEFAULT_OLLAMA_BASE_URL).rstrip("/")
            return root.removesuffix("/v1")
        if spec.type == "anthropic" and spec.base_url:
            # LiteLLM appends /v1/messages to the API root, so a base URL written the OpenAI way
            # (".../v1") would be called at /v1/v1/messages while the probe, which accepts both
            # forms, reports the provider healthy. Both now use the root.
            return spec.base_url.rstrip("/").removesuffix("/v1")
        return spec.base_url.rstrip("/") if spec.base_url else None

    def _common_kwargs(self, litellm_model: str, timeout_s: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"timeout": timeout_s, "num_retries": 0, "max_retries": 0}
        if self._api_base is not None:
            kwargs["api_base"] = self._api_base
        if self.spec.api_key is not None:
            kwargs["api_key"] = self.spec.api_key
        elif self._api_base is not None and litellm_model.startswith("openai/"):
            # A keyless OpenAI-compatible server. Without a key LiteLLM would fall back to the
            # environment's OPENAI_API_KEY and send it to this foreign host (or refuse to call).
            kwargs["api_key"] = _NO_KEY
        traced = self._hook_headers({})
        if traced:
            kwargs["extra_headers"] = traced
        return kwargs

    def _hook_headers(self, headers: dict[str, str]) -> dict[str, str]:
        if self._headers_hook is not None:
            self._headers_hook(headers)
        return headers

    def _chat_kwargs(
        self, litellm_model: str, request: ChatRequest, max_tokens: int, timeout_s: float
    ) -> dict[str, Any]:
        chat_model = self._chat_model(litellm_model)
        return {
            "model": chat_model,
            "messages": to_openai_messages(request),
            "max_tokens": max_tokens,
            # A parameter the target provider lacks is dropped, not a failed call.
            "drop_params": True,
            **generation_params(request),
            **self._common_kwargs(chat_model, timeout_s),
        }

    async def chat(
        self, model: str, litellm_model: str, request: ChatRequest, max_tokens: int, timeout_s: float
    ) -> ProviderChatResult:
        """One chat completion; ``timeout_s`` bounds the whole call."""
        kwargs = self._chat_kwargs(litellm_model, request, max_tokens, timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._litellm.acompletion(**kwargs)
        except ProviderError:
            raise
        except Exception as exc:
            raise classify_litellm_error(exc) from None
        try:
            choice = response.choices[0]
            message = choice.message
            text = message.content or ""
            if not isinstance(text, str):
                raise TypeError("content is not a string")
            return ProviderChatResult(
                text=text,
                finish_reason=finish_reason_from(choice.finish_reason),
                usage=_usage_of(response),
                response_model=_response_model(response, model, kwargs["model"]),
                tool_calls=tool_calls_from_openai(getattr(message, "tool_calls", None)),
                reasoning=reasoning_from_openai(message),
            )
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise ProviderFailure(KIND_BAD_RESPONSE, cause_type=type(exc).__name__) from None

    async def stream_chat(
        self, model: str, litellm_model: str, request: ChatRequest, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream a chat completion as text, tool-call and reasoning events and one final StreamEnd.

        ``timeout_s`` bounds (a) the call up to the first event (connect, request, headers,
        first chunk) and then (b) each wait for the next event. The stream's total
        duration is unbounded. Ending early (cancellation, generator close, error) closes the
        LiteLLM stream and with it the upstream connection.
        """
        kwargs = self._chat_kwargs(litellm_model, request, max_tokens, timeout_s)
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                stream = await self._litellm.acompletion(**kwargs)
        except ProviderError:
            raise
        except Exception as exc:
            raise classify_litellm_error(exc) from None

        finish_reason = FinishReason.UNSPECIFIED
        usage: Usage | None = None
        response_model = model
        produced_text = False
        tool_calls = ToolCallAssembler()
        iterator = stream.__aiter__()
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise classify_litellm_error(exc) from None
                chunk_usage = _usage_of(chunk)
                if chunk_usage is not None:
                    usage = chunk_usage
                response_model = _response_model(chunk, response_model, kwargs["model"])
                choices = getattr(chunk, "choices", None)
                if not choices:
                    continue
                choice = choices[0]
                if choice.finish_reason:
                    finish_reason = finish_reason_from(choice.finish_reason)
                delta = getattr(choice, "delta", None)
                if delta is None:
                    continue
                events: list[StreamEvent] = []
                reasoning = reasoning_from_openai(delta)
                if reasoning:
                    events.append(ReasoningDelta(reasoning))
                text = getattr(delta, "content", None)
                if text:
                    produced_text = True
                    events.append(TextDelta(text))
                raw_calls = getattr(delta, "tool_calls", None)
                if raw_calls:
                    events.extend(tool_calls.feed(raw_calls))
                for event in events:
                    yield event
                if events:
                    deadline = loop.time() + timeout_s
        finally:
            # Runs on normal end too (then it is a cheap no-op on a finished response).
            await self._close_stream(stream)
        if usage is not None and not _provider_sent_usage(stream):
            usage = None
        if not produced_text and not tool_calls and _provider_sent_no_chunks(stream):
            # When the answer was no stream it could parse, LiteLLM ends the stream quietly
            # with a made-up "stop"; its record of provider chunks is empty then.
            raise ProviderFailure(KIND_BAD_RESPONSE, cause_type="EmptyStream")
        check_stream_end(_provider_finish_reason(stream, finish_reason), produced_text, tool_calls)
        yield StreamEnd(finish_reason, usage, response_model, tool_calls.calls())

    @staticmethod
    async def _close_stream(stream: Any) -> None:
        close = getattr(stream, "aclose", None)
        if close is None:
            return
        try:
            await close()
        except Exception as exc:  # a failed close must not mask the stream's own outcome
            _logger.debug("closing a LiteLLM stream failed: %s", type(exc).__name__)

    async def embed(
        self, model: str, litellm_model: str, inputs: Sequence[str], timeout_s: float
    ) -> ProviderEmbedResult:
        """One vector per input; ``timeout_s`` bounds the whole call."""
        if self.spec.type == "ollama" or litellm_model.startswith(("ollama/", "ollama_chat/")):
            return await self._ollama_embed(model, inputs, timeout_s)
        kwargs = {
            "model": litellm_model,
            "input": list(inputs),
            **self._common_kwargs(litellm_model, timeout_s),
        }
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._litellm.aembedding(**kwargs)
        except ProviderError:
            raise
        except Exception as exc:
            raise classify_litellm_error(exc) from None
        try:
            items = list(response.data)
            items.sort(key=lambda item: _field(item, "index") or 0)
            vectors = [[float(x) for x in _field(item, "embedding")] for item in items]
            if len(vectors) != len(inputs):
                raise ValueError("vector count differs from input count")
            usage = getattr(response, "usage", None)
            prompt_tokens = getattr(usage, "prompt_tokens", None) if usage is not None else None
            return ProviderEmbedResult(
                vectors=vectors,
                usage=Usage(input_tokens=int(prompt_tokens)) if prompt_tokens is not None else None,
            )
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            raise ProviderFailure(KIND_BAD_RESPONSE, cause_type=type(exc).__name__) from None

    async def _ollama_embed(self, model: str, inputs: Sequence[str], timeout_s: float) -> ProviderEmbedResult:
        """``POST /api/embed`` directly.

        LiteLLM's Ollama embedding call sends no key, takes no timeout and parses error
        answers as if they were vectors, so this one endpoint is spoken natively.
        """
        headers = {"Authorization": f"Bearer {self.spec.api_key}"} if self.spec.api_key else {}
        self._hook_headers(headers)
        data = await self._http_json(
            "POST", f"{self._api_base}/api/embed", headers, {"model": model, "input": list(inputs)}, timeout_s
        )
        try:
            vectors = [[float(x) for x in vector] for vector in data["embeddings"]]
            if len(vectors) != len(inputs):
                raise ValueError("vector count differs from input count")
            tokens = data.get("prompt_eval_count")
            usage = Usage(input_tokens=int(tokens)) if tokens else None
            return ProviderEmbedResult(vectors=vectors, usage=usage)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ProviderFailure(KIND_BAD_RESPONSE, cause_type=type(exc).__name__) from None

    async def _http_json(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any] | None,
        timeout_s: float,
    ) -> Any:
        """A plain HTTP call (probes, Ollama embeddings) on this client's own session."""
        loop = asyncio.get_running_loop()
        session = self._http_session
        if session is None or session.closed or self._http_session_loop is not loop:
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), trust_env=False)
            self._http_session, self._http_session_loop = session, loop
        try:
            async with session.request(
                method, url, headers=headers, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                try:
                    raw = await resp.read()
                except BaseException:
                    resp.close()
                    raise
                status, response_headers = resp.status, resp.headers
        except Exception as exc:
            raise classify_transport_error(exc) from None
        if status >= 300:
            raise classify_http(status, response_headers, decode_error_body(raw))
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ProviderFailure(KIND_BAD_RESPONSE, status=status, cause_type="JSONDecodeError") from None

    # ------------------------------------------------------------------ health

    def _probe_request(self) -> tuple[str, dict[str, str]] | None:
        """URL and headers of a cheap authenticated "list models" call, if one is known."""
        spec, key = self.spec, self.spec.api_key
        if spec.type == "ollama":
            return f"{self._api_base}/api/tags", ({"Authorization": f"Bearer {key}"} if key else {})
        if spec.type == "anthropic":
            root = (spec.base_url or "https://api.anthropic.com").rstrip("/").removesuffix("/v1")
            headers = {"anthropic-version": _ANTHROPIC_VERSION}
            if key:
                headers["x-api-key"] = key
            return f"{root}/v1/models", headers
        if spec.type == "gemini" and not spec.base_url:
            return _PROBE_URLS["gemini"], ({"x-goog-api-key": key} if key else {})
        url = f"{spec.base_url.rstrip('/')}/models" if spec.base_url else _PROBE_URLS.get(spec.type)
        if url is None:
            return None
        return url, ({"Authorization": f"Bearer {key}"} if key else {})

    async def probe(self, timeout_s: float) -> None:
        """List the provider's models; a no-op for provider types with no known endpoint."""
        target = self._probe_request()
        if target is None:
            return
        url, headers = target
        await self._http_json("GET", url, headers, None, timeout_s)

    async def aclose(self) -> None:
        session, self._http_session = self._http_session, None
        if session is not None and not session.closed:
            await session.close()


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name)
