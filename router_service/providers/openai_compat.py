"""The lean path: a direct client of OpenAI-compatible HTTP APIs.

OpenAI, OpenRouter, DeepSeek, Moonshot, any ``openai_compatible`` server, and Ollama (via
its ``/v1`` endpoint) all speak the same wire protocol, so for them the router skips LiteLLM
(about 4 ms of CPU per call) and talks HTTP itself: one pooled keep-alive
``aiohttp.ClientSession`` per provider, stdlib ``json``, and an incremental SSE parser.

Connection hygiene: a response that is abandoned half-read (cancellation, timeout, a
consumer closing the stream) is ``close()``d, never ``release()``d, so a connection with
unread bytes never goes back to the pool and the upstream sees the hang-up at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
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
    KIND_RESET,
    ProviderError,
    ProviderFailure,
    classify_http,
    classify_transport_error,
    decode_error_body,
)

OPENAI_COMPATIBLE_TYPES = frozenset(
    {"openai", "openrouter", "deepseek", "moonshot", "openai_compatible", "ollama"}
)

DEFAULT_BASE_URLS: Mapping[str, str] = {
    "openai": "https://api.openai.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "moonshot": "https://api.moonshot.ai/v1",
}
DEFAULT_OLLAMA_BASE_URL = "http://localhost:11434"

_CONNECTION_LIMIT = 256
_KEEPALIVE_S = 30.0
# aiohttp caps a line at twice its read buffer (512 KiB); one SSE event can be larger.
_MAX_SSE_LINE = 16 * 1024 * 1024
_DATA_PREFIX = b"data:"
_DONE = b"[DONE]"


def resolve_base_url(spec: ProviderSpec) -> str:
    """The ``.../v1`` root for a provider: its configured URL or the type's default.

    Ollama's base URL is the server root (``http://host:11434``) as Ollama users write it;
    its OpenAI-compatible API lives under ``/v1``.
    """
    if spec.type == "ollama":
        root = (spec.base_url or DEFAULT_OLLAMA_BASE_URL).rstrip("/")
        return root if root.endswith("/v1") else f"{root}/v1"
    if spec.base_url:
        return spec.base_url.rstrip("/")
    default = DEFAULT_BASE_URLS.get(spec.type)
    if default is None:
        raise ValueError(f"provider {spec.id!r} of type {spec.type!r} needs a base_url")
    return default


def _encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _embedded_error(payload: dict[str, Any]) -> ProviderError:
    """Classify an error object sent with status 200 (in a JSON answer or an SSE event)."""
    error = payload.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code <= 599 else 502
    return classify_http(status, None, payload)


def default_session_factory() -> aiohttp.ClientSession:
    """A keep-alive pooled session; must be called inside the running event loop."""
    connector = aiohttp.TCPConnector(
        limit=_CONNECTION_LIMIT, limit_per_host=0, keepalive_timeout=_KEEPALIVE_S, ttl_dns_cache=300
    )
    # No session-wide timeout: every call sets its own from the router's budget.
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=True,
        timeout=aiohttp.ClientTimeout(total=None),
        raise_for_status=False,
        trust_env=False,
    )


class _StreamState:
    """What a stream has told us besides the events: finish reason, usage, model, tool calls."""

    __slots__ = (
        "done",
        "finish_reason",
        "produced_text",
        "response_model",
        "saw_data",
        "tool_calls",
        "usage",
    )

    def __init__(self, model: str) -> None:
        self.finish_reason = FinishReason.UNSPECIFIED
        self.usage: Usage | None = None
        self.response_model = model
        self.done = False
        self.saw_data = False
        self.produced_text = False
        self.tool_calls = ToolCallAssembler()


class _SSELines:
    """The lines of a streamed body, including those that arrived together with a broken connection.

    aiohttp's StreamReader raises the stored connection error as soon as one is set, before it
    returns bytes it has already buffered: when a provider sends its last chunks back to back and
    then resets, those chunks (generated, and billed by the provider) would never reach the
    caller. After such an error the complete lines still in the buffer are handed out first, then
    the error is raised. An incomplete last line is dropped: it was never fully sent.
    """

    __slots__ = ("_content", "_error", "_salvaged")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._salvaged: collections.deque[bytes] | None = None
        self._error: BaseException | None = None

    async def readline(self) -> bytes:
        if self._salvaged is None:
            try:
                return await self._content.readline(max_line_length=_MAX_SSE_LINE)
            except Exception as exc:
                if self._content.exception() is None:
                    raise  # not a broken connection (a line too long): nothing to salvage
                self._error = exc
                self._salvaged = collections.deque(_complete_lines(_buffered(self._content)))
        if self._salvaged:
            return self._salvaged.popleft()
        assert self._error is not None
        raise self._error


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """What the reader holds unread. Every public read raises once an error is stored, so this
    uses aiohttp's own unchecked read (pinned by the lean-path stream tests, which fail if it goes)."""
    read_buffered = getattr(content, "_read_nowait", None)
    if read_buffered is None or not getattr(content, "_buffer", None):
        return b""
    return bytes(read_buffered(-1))


def _complete_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    return [line + b"\n" for line in lines[:-1]]  # the last piece has no newline: incomplete


class OpenAICompatProvider:
    """A ProviderClient for OpenAI-compatible APIs over one pooled aiohttp session."""

    def __init__(
        self,
        spec: ProviderSpec,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
        headers_hook: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        """`headers_hook` may add headers to each request's own copy (tracing puts `traceparent`
        there); it is called on the calling task, so it sees that task's current span."""
        self.spec = spec
        self._headers_hook = headers_hook
        self._base_url = resolve_base_url(spec)
        self._session_factory = session_factory or default_session_factory
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if spec.api_key:
            self._headers["Authorization"] = f"Bearer {spec.api_key}"
        self._stream_headers = {**self._headers, "Accept": "text/event-stream"}

    @property
    def base_url(self) -> str:
        return self._base_url

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or session.closed or self._session_loop is not loop:
            # A session is bound to the loop it was made in; a new loop needs a new session.
            session = self._session_factory()
            self._session = session
            self._session_loop = loop
        return session

    def _with_hook(self, headers: dict[str, str]) -> dict[str, str]:
        if self._headers_hook is None:
            return headers
        extended = dict(headers)
        self._headers_hook(extended)
        return extended

    # ------------------------------------------------------------------ unary calls

    async def _request_json(
        self, method: str, path: str, body: Mapping[str, Any] | None, timeout_s: float
    ) -> Any:
        """One request with ``timeout_s`` in total; returns the decoded JSON of a 2xx answer."""
        session = self._get_session()
        try:
            async with session.request(
                method,
                self._base_url + path,
                data=_encode(body) if body is not None else None,
                headers=self._with_hook(self._headers),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                try:
                    raw = await response.read()
                except BaseException:
                    response.close()
                    raise
                status = response.status
                headers = response.headers
        except ProviderError:
            raise
        except Exception as exc:
            raise classify_transport_error(exc) from None
        if status >= 300:
            raise classify_http(status, headers, decode_error_body(raw))
        try:
            data = json.loads(raw)
        except ValueError:
            raise ProviderFailure(KIND_BAD_RESPONSE, status=status, cause_type="JSONDecodeError") from None
        if isinstance(data, dict) and "error" in data and not ("choices" in data or "data" in data):
            # Some gateways (OpenRouter) report upstream errors inside a 200 answer.
            raise _embedded_error(data)
        return data

    def _chat_body(self, model: str, request: ChatRequest, max_tokens: int, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": to_openai_messages(request),
            "max_tokens": max_tokens,
            **generation_params(request),
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def chat(
        self, model: str, litellm_model: str, request: ChatRequest, max_tokens: int, timeout_s: float
    ) -> ProviderChatResult:
        """One chat completion; ``timeout_s`` covers connect, send, wait and reading the body."""
        data = await self._request_json(
            "POST", "/chat/completions", self._chat_body(model, request, max_tokens, False), timeout_s
        )
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") or ""
            if not isinstance(text, str):
                raise TypeError("content is not a string")
            return ProviderChatResult(
                text=text,
                finish_reason=finish_reason_from(choice.get("finish_reason")),
                usage=usage_from_openai(data.get("usage")),
                response_model=str(data.get("model") or model),
                tool_calls=tool_calls_from_openai(message.get("tool_calls")),
                reasoning=reasoning_from_openai(message),
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise ProviderFailure(KIND_BAD_RESPONSE, cause_type=type(exc).__name__) from None

    async def embed(
        self, model: str, litellm_model: str, inputs: Sequence[str], timeout_s: float
    ) -> ProviderEmbedResult:
        """One vector per input; ``timeout_s`` covers the whole call."""
        data = await self._request_json(
            "POST", "/embeddings", {"model": model, "input": list(inputs)}, timeout_s
        )
        try:
            items = sorted(data["data"], key=lambda item: item.get("index", 0))
            vectors = [[float(x) for x in item["embedding"]] for item in items]
            if len(vectors) != len(inputs):
                raise ValueError("vector count differs from input count")
            usage_data = data.get("usage") or {}
            prompt_tokens = usage_data.get("prompt_tokens")
            usage = Usage(input_tokens=int(prompt_tokens)) if prompt_tokens is not None else None
            return ProviderEmbedResult(vectors=vectors, usage=usage)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise ProviderFailure(KIND_BAD_RESPONSE, cause_type=type(exc).__name__) from None

    async def probe(self, timeout_s: float) -> None:
        """GET ``/models``: cheap, needs the key, and proves the API answers."""
        await self._request_json("GET", "/models", None, timeout_s)

    # ------------------------------------------------------------------ streaming

    async def stream_chat(
        self, model: str, litellm_model: str, request: ChatRequest, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream a chat completion as text, tool-call and reasoning events and one final StreamEnd.

        ``timeout_s`` bounds (a) connecting, sending the request, receiving the headers and
        the first event together, and then (b) each wait for the next event (or the end).
        Chunks with nothing for the caller (a role, an empty delta, usage) do not reset the
        clock. The stream's total duration is unbounded. Closing the generator or cancelling
        the consuming task closes the upstream connection immediately.
        """
        session = self._get_session()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        body = _encode(self._chat_body(model, request, max_tokens, True))
        try:
            async with asyncio.timeout_at(deadline):
                response = await session.post(
                    self._base_url + "/chat/completions",
                    data=body,
                    headers=self._with_hook(self._stream_headers),
                    timeout=aiohttp.ClientTimeout(total=None, connect=timeout_s),
                )
        except ProviderError:
            raise
        except Exception as exc:
            raise classify_transport_error(exc) from None

        state = _StreamState(model)
        try:
            try:
                if response.status >= 300:
                    async with asyncio.timeout_at(deadline):
                        raw = await response.read()
                    raise classify_http(response.status, response.headers, decode_error_body(raw))
                content = response.content
                lines = _SSELines(content)
                # One timer for the whole stream, re-armed per read and disarmed while the caller
                # holds an event: a fresh asyncio.timeout per chunk was a tenth of a chunk's CPU.
                async with asyncio.timeout_at(deadline) as idle:
                    while True:
                        events = await self._next_events(lines, state)
                        if events is None:
                            break
                        idle.reschedule(None)
                        for event in events:
                            yield event
                        idle.reschedule(loop.time() + timeout_s)
                check_stream_end(state.finish_reason, state.produced_text, state.tool_calls)
                if not content.at_eof():
                    # Drain the chunked terminator so the connection can be reused.
                    async with asyncio.timeout(timeout_s):
                        await content.read()
            except ProviderError:
                raise
            except Exception as exc:
                raise classify_transport_error(exc) from None
        except BaseException:
            # Cancelled, closed early, timed out or broken: never pool a half-read connection.
            response.close()
            raise
        response.release()
        yield StreamEnd(state.finish_reason, state.usage, state.response_model, state.tool_calls.calls())

    @staticmethod
    async def _next_events(lines: _SSELines, state: _StreamState) -> list[StreamEvent] | None:
        """Read SSE lines until a chunk with something for the caller (its events) or the end (None)."""
        while True:
            line = await lines.readline()
            if not line:
                if state.finish_reason is FinishReason.UNSPECIFIED:
                    # A complete body without any SSE event was no stream at all; EOF after
                    # events but before [DONE] or a finish reason means the upstream broke off.
                    kind = KIND_RESET if state.saw_data else KIND_BAD_RESPONSE
                    raise ProviderFailure(kind, cause_type="EOF")
                return None
            if not line.startswith(_DATA_PREFIX):
                continue  # blank separators, ": keep-alive" comments, event:/id: fields
            state.saw_data = True
            payload = line[5:].strip()
            if payload == _DONE:
                state.done = True
                return None
            try:
                chunk = json.loads(payload)
            except ValueError:
                raise ProviderFailure(KIND_BAD_RESPONSE, cause_type="JSONDecodeError") from None
            if not isinstance(chunk, dict):
                raise ProviderFailure(KIND_BAD_RESPONSE, cause_type="SSEChunk")
            if chunk.get("error") is not None:
                raise _embedded_error(chunk)
            usage = chunk.get("usage")
            if usage:
                state.usage = usage_from_openai(usage)
            chunk_model = chunk.get("model")
            if chunk_model:
                state.response_model = chunk_model
            choices = chunk.get("choices")
            if not choices:
                continue
            choice = choices[0]
            reason = choice.get("finish_reason")
            if reason:
                state.finish_reason = finish_reason_from(reason)
            delta = choice.get("delta")
            if not delta:
                continue
            events: list[StreamEvent] = []
            reasoning = reasoning_from_openai(delta)
            if reasoning:
                events.append(ReasoningDelta(reasoning))
            text = delta.get("content")
            if text:
                state.produced_text = True
                events.append(TextDelta(text))
            if delta.get("tool_calls"):
                events.extend(state.tool_calls.feed(delta["tool_calls"]))
            if events:
                return events

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
