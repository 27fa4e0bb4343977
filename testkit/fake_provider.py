"""A scriptable fake LLM provider: a real aiohttp server on loopback.

It speaks enough of three wire protocols for the router's provider clients (LiteLLM's real
HTTP path and the lean OpenAI-compatible path) to run unchanged against it:

* OpenAI: ``POST /v1/chat/completions`` (JSON, and SSE with a final usage chunk when
  ``stream_options.include_usage`` is set), ``POST /v1/embeddings``, ``GET /v1/models``.
* Ollama: ``POST /api/chat`` and ``POST /api/generate`` (NDJSON streams or JSON, with
  ``prompt_eval_count`` / ``eval_count``), ``POST /api/embed``, ``POST /api/embeddings``,
  ``GET /api/tags``, ``POST /api/show``.
* Anthropic: ``POST /v1/messages`` (JSON, and SSE with Anthropic's event sequence:
  ``message_start`` carrying the input tokens, ``content_block_*``, ``message_delta`` carrying
  the stop reason and output tokens, ``message_stop``), errors in Anthropic's own shape, and
  ``GET /v1/models`` in Anthropic's list format when the request carries ``anthropic-version``.
  Like the real API it refuses a request without ``x-api-key``, ``anthropic-version`` or
  ``max_tokens``, or with a ``system`` role inside ``messages``, so a client that does not
  translate to Anthropic's format fails here too. (LiteLLM posts to ``{api_base}/v1/messages``.)

Beyond text it can be scripted (:class:`Behaviour`) to answer with tool calls (several in one
turn, their arguments streamed in the fragments given), reasoning text (OpenAI-compatible
``reasoning_content``, Anthropic ``thinking`` blocks) and cache / reasoning token counts
(OpenAI ``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``,
Anthropic ``cache_read_input_tokens`` / ``cache_creation_input_tokens``), in each protocol's own
shape; Ollama's ``/api/chat`` returns tool calls with arguments as a JSON object, as Ollama does.
Streams can also start with role-only / metadata-only chunks, or end without a finish reason.
Every request's JSON is recorded as received, so tests assert the exact upstream body.

By default it answers deterministically: the reply is ``"echo: <last user text>"``, usage
is word counts, embeddings are hash-seeded unit vectors whose dimension comes from the model
name (``*-384`` -> 384) or a configured map (default 8). Tests script it per request with
:class:`Behaviour` (status codes, Retry-After, latency, broken streams, resets) and read
back every request it saw, including whether the client hung up before the answer ended.

Use it in a test's event loop (``async with FakeProvider() as fake``), in a background
thread (``with FakeProvider() as fake``; needed when the client under test makes blocking
calls), or as a process for benchmarks::

    python -m testkit.fake_provider --port 8001 --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import math
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

_JSON = "application/json"
_DIMENSION_SUFFIX = re.compile(r"-(\d+)$")
_DEFAULT_DIMENSION = 8


@dataclass(frozen=True, slots=True)
class FakeToolCall:
    """A tool call the fake answers with.

    ``arguments`` is the JSON text sent verbatim (for Anthropic and Ollama, which carry
    arguments as an object, it is parsed first). ``chunks`` are the argument fragments a
    stream sends, in order (they must concatenate to ``arguments``); default: three pieces.
    ``id`` defaults to ``call_<n>`` (``toolu_<n>`` on the Anthropic endpoint).
    """

    name: str
    arguments: str = "{}"
    id: str = ""
    chunks: list[str] | None = None

    def fragments(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        step = max(1, -(-len(self.arguments) // 3))
        return [self.arguments[i : i + step] for i in range(0, len(self.arguments), step)] or [""]


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the fake answers one request.

    Attributes:
        status: HTTP status; anything but 200 sends ``error_body`` (or a generic OpenAI error).
        retry_after: value of the Retry-After header, sent as given (seconds or HTTP-date).
        latency_s: delay before the status line is sent.
        first_token_delay_s: streams only: delay between the headers and the first chunk.
        chunk_delay_s: streams only: delay between chunks.
        chunks: the reply's text pieces; default: the reply split into words.
        die_after_chunks: streams only: abort the connection after this many chunks (no
            finish chunk, no usage, no ``[DONE]``).
        reset: abort the connection without sending anything.
        include_usage: whether usage is reported at all.
        usage: (input_tokens, output_tokens); default: word counts.
        error_body: JSON body of an error answer.
        text: the reply; default ``"echo: <last user text>"``.
        raw_body: sent verbatim with status 200 instead of a valid answer (malformed replies).
        finish_reason: the reported finish reason (OpenAI's names; the Anthropic endpoint
            translates ``stop`` / ``length`` / ``tool_calls`` to ``end_turn`` / ``max_tokens`` /
            ``tool_use`` and sends any other value as given).
        stream_error_after_chunks: streams: after this many chunks send an error and end the
            stream cleanly. Anthropic: an ``event: error`` (its type from ``error_body``, default
            ``overloaded_error``), as Anthropic does when it is overloaded mid-answer; OpenAI:
            a ``data:`` event holding ``error_body`` (default a 502 error object with a numeric
            ``code``), as OpenRouter reports an upstream failure mid-stream.
        tool_calls: answer with these tool calls (the text then defaults to none, and a
            ``stop`` finish reason becomes ``tool_calls``). In a stream every argument fragment
            is one chunk, and so is each call's first piece (its id and name).
        reasoning: reasoning text, before the answer (OpenAI-compatible ``reasoning_content``,
            an Anthropic ``thinking`` block); ``reasoning_chunks`` are its streamed pieces.
        cached_tokens / cache_write_tokens / reasoning_tokens: usage details. ``usage`` stays
            OpenAI's totals (input includes cached and cache-write tokens); the Anthropic
            endpoint reports ``input_tokens`` without them, as Anthropic does.
        preamble_chunks: streams only: this many role-only / empty-delta chunks (OpenAI) or
            ``ping`` events (Anthropic) before any content; they do not count as chunks.
        omit_finish: streams only: no finish reason at all (OpenAI still sends ``[DONE]``,
            Anthropic ``message_stop``).
        latency_per_input_s: embeddings only (OpenAI, Ollama): a further delay per input text, so a
            bigger batch takes longer, as on a model running on a CPU.
    """

    status: int = 200
    retry_after: str | None = None
    latency_s: float = 0.0
    first_token_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    chunks: list[str] | None = None
    die_after_chunks: int | None = None
    reset: bool = False
    include_usage: bool = True
    usage: tuple[int, int] | None = None
    error_body: dict[str, Any] | None = None
    text: str | None = None
    raw_body: str | None = None
    finish_reason: str = "stop"
    stream_error_after_chunks: int | None = None
    tool_calls: list[FakeToolCall] | None = None
    reasoning: str | None = None
    reasoning_chunks: list[str] | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    preamble_chunks: int = 0
    omit_finish: bool = False

    @property
    def effective_finish_reason(self) -> str:
        if self.tool_calls and self.finish_reason == "stop":
            return "tool_calls"
        return self.finish_reason

    latency_per_input_s: float = 0.0


@dataclass(slots=True)
class RecordedRequest:
    """One request the fake received, and how its answer ended.

    ``headers`` keeps the names as the client spelled them; :meth:`header` looks one up
    case-insensitively. ``peer`` is the client's (host, port): equal ports mean a reused
    keep-alive connection.
    ``disconnected`` means the client hung up before the answer ended; ``aborted_by_server``
    marks the fake's own scripted resets.
    """

    path: str
    model: str | None
    json: Any
    headers: dict[str, str]
    time: float
    peer: tuple[str, int] | None = None
    completed: bool = False
    disconnected: bool = False
    aborted_by_server: bool = False

    def header(self, name: str) -> str | None:
        """A request header by case-insensitive name (HTTP clients differ in spelling)."""
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), None)


@dataclass(slots=True)
class _Reply:
    """The fully worked-out answer to one request."""

    text: str
    chunks: list[str]
    input_tokens: int
    output_tokens: int
    tool_calls: list[FakeToolCall]
    reasoning: str
    reasoning_chunks: list[str]

    def call_id(self, index: int, prefix: str = "call") -> str:
        return self.tool_calls[index].id or f"{prefix}_{index}"


def _words(text: str) -> int:
    return len(text.split())


def _split_words(text: str) -> list[str]:
    """Split into word pieces that concatenate back to ``text`` exactly."""
    pieces = re.findall(r"\s*\S+", text)
    trailing = text[len("".join(pieces)) :]
    if trailing:
        pieces.append(trailing)
    return pieces or [text]


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def deterministic_vector(text: str, dimension: int) -> list[float]:
    """A unit vector seeded by the text: equal texts give equal vectors, always."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    values = [rng.random() - 0.5 for _ in range(dimension)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class FakeProvider:
    """A loopback HTTP server impersonating OpenAI-compatible, Ollama and Anthropic providers."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        text: str | None = None,
        default: Behaviour | None = None,
        embed_dimensions: dict[str, int] | None = None,
        models: list[str] | None = None,
        record: bool = True,
        max_records: int = 100_000,
    ) -> None:
        self._host = host
        self._port = port
        self._text = text
        self._defaults: dict[str | None, Behaviour] = {None: default or Behaviour()}
        self._embed_dimensions = dict(embed_dimensions or {})
        self._models = list(models or ["fake-model"])
        self._record = record
        self._records: collections.deque[RecordedRequest] = collections.deque(maxlen=max_records)
        self._scripts: dict[str | None, collections.deque[Behaviour]] = {}
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self.port: int = 0

    # ----------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path): OpenAI clients add ``/v1``, Ollama clients don't."""
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("POST", "/v1/chat/completions", self._openai_chat),
            ("POST", "/v1/embeddings", self._openai_embeddings),
            ("GET", "/v1/models", self._openai_models),
            ("POST", "/api/chat", self._ollama_chat),
            ("POST", "/api/generate", self._ollama_generate),
            ("POST", "/api/embed", self._ollama_embed),
            ("POST", "/api/embeddings", self._ollama_embeddings_legacy),
            ("GET", "/api/tags", self._ollama_tags),
            ("POST", "/api/show", self._ollama_show),
            ("POST", "/v1/messages", self._anthropic_messages),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        # handler_cancellation: a client that hangs up cancels its handler, which is how the
        # fake notices a disconnect during a latency sleep.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.25)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_in_thread(self) -> FakeProvider:
        """Serve from a background thread with its own event loop; returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # surfaced to the starting thread below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-provider", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop_thread(self) -> None:
        if self._thread is None or self._thread_loop is None:
            return
        self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._thread_loop = None

    def __enter__(self) -> FakeProvider:
        return self.start_in_thread()

    def __exit__(self, *exc_info: object) -> None:
        self.stop_thread()

    @classmethod
    def run_forever(
        cls, port: int, latency_ms: float = 0.0, host: str = "127.0.0.1", record: bool = False
    ) -> None:
        """Serve until interrupted (benchmarks run this in their own process)."""

        async def main() -> None:
            fake = cls(host, port, default=Behaviour(latency_s=latency_ms / 1000.0), record=record)
            async with fake:
                print(f"fake provider listening on {fake.base_url}", flush=True)
                await asyncio.Event().wait()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    # ----------------------------------------------------------------- scripting

    def script(self, model: str | None, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests for ``model`` (None: any model), one each."""
        with self._lock:
            self._scripts.setdefault(model, collections.deque()).extend(behaviours)

    def set_default(self, behaviour: Behaviour, model: str | None = None) -> None:
        """The behaviour used once the scripts for a request's model are used up."""
        with self._lock:
            self._defaults[model] = behaviour

    def reset_state(self) -> None:
        """Forget scripts, defaults and recorded requests."""
        with self._lock:
            self._scripts.clear()
            self._defaults = {None: Behaviour()}
            self._records.clear()

    def _next_behaviour(self, model: str | None) -> Behaviour:
        with self._lock:
            for key in (model, None):
                queue = self._scripts.get(key)
                if queue:
                    return queue.popleft()
            return self._defaults.get(model) or self._defaults[None]

    # ----------------------------------------------------------------- request log

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def count(self, path: str | None = None, model: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path) and (model is None or r.model == model)
        )

    async def wait_for_disconnect(self, within_s: float = 5.0) -> RecordedRequest:
        """Wait until some request's client hung up before its answer ended; return it.

        Raises TimeoutError when none did within ``within_s``.
        """
        return await self.wait_for(lambda r: r.disconnected, within_s)

    async def wait_for(
        self, predicate: Callable[[RecordedRequest], bool], within_s: float = 5.0
    ) -> RecordedRequest:
        """Wait for a recorded request matching ``predicate``; polls, since the server may
        run in another thread's loop."""
        async with asyncio.timeout(within_s):
            while True:
                for record in self.requests:
                    if predicate(record):
                        return record
                await asyncio.sleep(0.005)

    def _log(self, request: web.Request, body: Any) -> RecordedRequest:
        model = body.get("model") if isinstance(body, dict) else None
        record = RecordedRequest(
            path=request.path,
            model=model if isinstance(model, str) else None,
            json=body,
            headers=dict(request.headers),
            time=time.monotonic(),
            peer=request.transport.get_extra_info("peername") if request.transport else None,
        )
        if self._record:
            with self._lock:
                self._records.append(record)
        return record

    # ----------------------------------------------------------------- helpers

    def _dimension(self, model: str) -> int:
        if model in self._embed_dimensions:
            return self._embed_dimensions[model]
        match = _DIMENSION_SUFFIX.search(model)
        return int(match.group(1)) if match else _DEFAULT_DIMENSION

    def _reply(self, behaviour: Behaviour, prompt_text: str, last_user_text: str) -> _Reply:
        text = behaviour.text if behaviour.text is not None else self._text
        if text is None:
            text = "" if behaviour.tool_calls else f"echo: {last_user_text}"
        if behaviour.chunks is not None:
            chunks = list(behaviour.chunks)
            text = "".join(chunks)
        else:
            chunks = _split_words(text) if text else []
        reasoning_chunks = list(behaviour.reasoning_chunks or [])
        reasoning = "".join(reasoning_chunks) if reasoning_chunks else behaviour.reasoning or ""
        if reasoning and not reasoning_chunks:
            reasoning_chunks = _split_words(reasoning)
        calls = list(behaviour.tool_calls or [])
        if behaviour.usage is not None:
            input_tokens, output_tokens = behaviour.usage
        else:
            generated = " ".join([reasoning, text, *(c.arguments for c in calls)])
            input_tokens, output_tokens = _words(prompt_text), _words(generated)
        return _Reply(text, chunks, input_tokens, output_tokens, calls, reasoning, reasoning_chunks)

    @staticmethod
    def _openai_usage(behaviour: Behaviour, reply: _Reply) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }
        if behaviour.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": behaviour.cached_tokens}
        if behaviour.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": behaviour.reasoning_tokens}
        return usage

    @staticmethod
    def _openai_error_body(status: int) -> dict[str, Any]:
        kinds = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}
        return {
            "error": {
                "message": f"fake provider error {status}",
                "type": kinds.get(status, "server_error"),
                "code": None,
            }
        }

    async def _serve(
        self,
        request: web.Request,
        answer: Callable[[Behaviour, Any, RecordedRequest], Awaitable[web.StreamResponse]],
        error_body: Callable[[int], dict[str, Any]] | None = None,
    ) -> web.StreamResponse:
        """Log the request, apply the scripted failure modes, then let ``answer`` respond.

        ``error_body`` builds the body of a scripted error status when the behaviour gives
        none (default: OpenAI's shape).
        """
        body: Any = None
        if request.method == "POST":
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
        record = self._log(request, body)
        model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
        behaviour = self._next_behaviour(model)
        try:
            if behaviour.latency_s > 0:
                await asyncio.sleep(behaviour.latency_s)
            if behaviour.reset:
                record.aborted_by_server = True
                return self._abort(request)
            if behaviour.status != 200:
                error = behaviour.error_body or (error_body or self._openai_error_body)(behaviour.status)
                headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else None
                response = web.Response(
                    status=behaviour.status, text=json.dumps(error), content_type=_JSON, headers=headers
                )
                return await self._finish(request, response, record)
            if behaviour.raw_body is not None:
                response = web.Response(text=behaviour.raw_body, content_type=_JSON)
                return await self._finish(request, response, record)
            return await answer(behaviour, body if isinstance(body, dict) else {}, record)
        except (asyncio.CancelledError, ConnectionResetError):
            if not record.aborted_by_server:
                record.disconnected = True
            raise

    @staticmethod
    def _abort(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        # The handler must still return; aiohttp sees the closed transport and writes nothing.
        raise asyncio.CancelledError

    @staticmethod
    async def _finish(
        request: web.Request, response: web.StreamResponse, record: RecordedRequest
    ) -> web.StreamResponse:
        await response.prepare(request)
        await response.write_eof()
        record.completed = True
        return response

    async def _json(self, request: web.Request, payload: Any, record: RecordedRequest) -> web.StreamResponse:
        return await self._finish(request, web.Response(text=json.dumps(payload), content_type=_JSON), record)

    async def _stream(
        self,
        request: web.Request,
        behaviour: Behaviour,
        record: RecordedRequest,
        content_type: str,
        pieces: list[bytes],
        tail: list[bytes],
        head: list[bytes] | None = None,
    ) -> web.StreamResponse:
        """Send ``head``, ``pieces`` (the text chunks) then ``tail``, with the scripted delays and breaks.

        ``head`` (protocol preamble such as Anthropic's ``message_start``) goes out with the
        headers, before ``first_token_delay_s``, and does not count as a chunk.
        """
        response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
        await response.prepare(request)
        for piece in head or ():
            await response.write(piece)
        if behaviour.first_token_delay_s > 0:
            await asyncio.sleep(behaviour.first_token_delay_s)
        sent = 0
        for piece in pieces:
            if behaviour.die_after_chunks is not None and sent >= behaviour.die_after_chunks:
                record.aborted_by_server = True
                return self._abort(request)
            if sent and behaviour.chunk_delay_s > 0:
                await asyncio.sleep(behaviour.chunk_delay_s)
            await response.write(piece)
            sent += 1
        if behaviour.die_after_chunks is not None:
            record.aborted_by_server = True
            return self._abort(request)
        for piece in tail:
            await response.write(piece)
        await response.write_eof()
        record.completed = True
        return response

    # ----------------------------------------------------------------- OpenAI

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            messages = body.get("messages") or []
            prompt = " ".join(_message_text(m) for m in messages if isinstance(m, dict))
            last_user = next(
                (
                    _message_text(m)
                    for m in reversed(messages)
                    if isinstance(m, dict) and m.get("role") == "user"
                ),
                "",
            )
            reply = self._reply(behaviour, prompt, last_user)
            model = body.get("model", "")
            usage = self._openai_usage(behaviour, reply)
            finish_reason = behaviour.effective_finish_reason
            created = int(time.time())
            if not body.get("stream"):
                message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
                if not reply.tool_calls and not reply.text:
                    message["content"] = ""
                if reply.reasoning:
                    message["reasoning_content"] = reply.reasoning
                if reply.tool_calls:
                    message["tool_calls"] = [
                        {
                            "id": reply.call_id(i),
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                        for i, call in enumerate(reply.tool_calls)
                    ]
                payload: dict[str, Any] = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                }
                if behaviour.include_usage:
                    payload["usage"] = usage
                return await self._json(request, payload, record)

            def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
                chunk = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": choices,
                    **extra,
                }
                return b"data: " + json.dumps(chunk).encode() + b"\n\n"

            def delta(content: dict[str, Any]) -> bytes:
                return event([{"index": 0, "delta": content, "finish_reason": None}])

            head = [delta({"role": "assistant"} if i == 0 else {}) for i in range(behaviour.preamble_chunks)]
            deltas: list[dict[str, Any]] = [{"reasoning_content": piece} for piece in reply.reasoning_chunks]
            deltas += [{"content": piece} for piece in reply.chunks]
            for i, call in enumerate(reply.tool_calls):
                deltas.append(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": reply.call_id(i),
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    }
                )
                deltas += [
                    {"tool_calls": [{"index": i, "function": {"arguments": fragment}}]}
                    for fragment in call.fragments()
                ]
            if deltas and not head:
                deltas[0] = {"role": "assistant", **deltas[0]}
            pieces = [delta(content) for content in deltas]
            if behaviour.stream_error_after_chunks is not None:
                error = behaviour.error_body or {"error": {"code": 502, "message": "upstream failed"}}
                pieces = pieces[: behaviour.stream_error_after_chunks]
                error_event = b"data: " + json.dumps(error).encode() + b"\n\n"
                return await self._stream(
                    request, behaviour, record, "text/event-stream", pieces, [error_event], head
                )
            tail = []
            if not behaviour.omit_finish:
                tail.append(event([{"index": 0, "delta": {}, "finish_reason": finish_reason}]))
            wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            if wants_usage and behaviour.include_usage:
                tail.append(event([], usage=usage))
            tail.append(b"data: [DONE]\n\n")
            return await self._stream(request, behaviour, record, "text/event-stream", pieces, tail, head)

        return await self._serve(request, answer)

    async def _openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            inputs = body.get("input", [])
            texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs]
            if behaviour.latency_per_input_s > 0:
                await asyncio.sleep(behaviour.latency_per_input_s * len(texts))
            model = str(body.get("model", ""))
            dimension = self._dimension(model)
            payload: dict[str, Any] = {
                "object": "list",
                "model": model,
                "data": [
                    {"object": "embedding", "index": i, "embedding": deterministic_vector(t, dimension)}
                    for i, t in enumerate(texts)
                ],
            }
            if behaviour.include_usage:
                tokens = behaviour.usage[0] if behaviour.usage else sum(_words(t) for t in texts)
                payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
            return await self._json(request, payload, record)

        return await self._serve(request, answer)

    async def _openai_models(self, request: web.Request) -> web.StreamResponse:
        # OpenAI and Anthropic share this path; only Anthropic clients send anthropic-version.
        if "anthropic-version" in request.headers:
            return await self._anthropic_models(request)

        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            payload = {
                "object": "list",
                "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in self._models],
            }
            return await self._json(request, payload, record)

        return await self._serve(request, answer)

    # ----------------------------------------------------------------- Ollama

    async def _ollama_answer(
        self,
        request: web.Request,
        behaviour: Behaviour,
        body: dict[str, Any],
        record: RecordedRequest,
        prompt: str,
        last_user: str,
        wrap: Callable[[str], dict[str, Any]],
    ) -> web.StreamResponse:
        reply = self._reply(behaviour, prompt, last_user)
        model = body.get("model", "")
        created_at = "2024-01-01T00:00:00Z"
        final: dict[str, Any] = {
            "model": model,
            "created_at": created_at,
            **wrap(""),
            "done": True,
            # Ollama says "stop" also when the model called tools.
            "done_reason": behaviour.finish_reason,
        }
        if behaviour.include_usage:
            final["prompt_eval_count"] = reply.input_tokens
            final["eval_count"] = reply.output_tokens
        # Ollama sends a turn's tool calls whole, arguments as a JSON object, in one message.
        calls = [
            {"function": {"name": call.name, "arguments": json.loads(call.arguments or "{}")}}
            for call in reply.tool_calls
        ]
        if body.get("stream") is False:
            final.update(wrap(reply.text))
            if calls:
                final["message"]["tool_calls"] = calls
            return await self._json(request, final, record)
        pieces = [
            json.dumps({"model": model, "created_at": created_at, **wrap(piece), "done": False}).encode()
            + b"\n"
            for piece in reply.chunks
        ]
        if calls:
            message = {"role": "assistant", "content": "", "tool_calls": calls}
            pieces.append(
                json.dumps(
                    {"model": model, "created_at": created_at, "message": message, "done": False}
                ).encode()
                + b"\n"
            )
        return await self._stream(
            request, behaviour, record, "application/x-ndjson", pieces, [json.dumps(final).encode() + b"\n"]
        )

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
            prompt = " ".join(str(m.get("content", "")) for m in messages)
            last_user = next(
                (str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), ""
            )
            return await self._ollama_answer(
                request,
                behaviour,
                body,
                record,
                prompt,
                last_user,
                lambda text: {"message": {"role": "assistant", "content": text}},
            )

        return await self._serve(request, answer)

    async def _ollama_generate(self, request: web.Request) -> web.StreamResponse:
        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            prompt = str(body.get("prompt", ""))
            return await self._ollama_answer(
                request, behaviour, body, record, prompt, prompt, lambda text: {"response": text}
            )

        return await self._serve(request, answer)

    async def _ollama_embed(self, request: web.Request) -> web.StreamResponse:
        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            inputs = body.get("input", [])
            texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs]
            if behaviour.latency_per_input_s > 0:
                await asyncio.sleep(behaviour.latency_per_input_s * len(texts))
            model = str(body.get("model", ""))
            dimension = self._dimension(model)
            payload: dict[str, Any] = {
                "model": model,
                "embeddings": [deterministic_vector(t, dimension) for t in texts],
            }
            if behaviour.include_usage:
                payload["prompt_eval_count"] = (
                    behaviour.usage[0] if behaviour.usage else sum(_words(t) for t in texts)
                )
            return await self._json(request, payload, record)

        return await self._serve(request, answer)

    async def _ollama_embeddings_legacy(self, request: web.Request) -> web.StreamResponse:
        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            model = str(body.get("model", ""))
            vector = deterministic_vector(str(body.get("prompt", "")), self._dimension(model))
            return await self._json(request, {"embedding": vector}, record)

        return await self._serve(request, answer)

    async def _ollama_tags(self, request: web.Request) -> web.StreamResponse:
        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            payload = {"models": [{"name": m, "model": m, "size": 0} for m in self._models]}
            return await self._json(request, payload, record)

        return await self._serve(request, answer)

    async def _ollama_show(self, request: web.Request) -> web.StreamResponse:
        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            payload = {
                "modelfile": "",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": {"family": "fake", "parameter_size": "1B", "quantization_level": "Q4_0"},
                "model_info": {"fake.context_length": 8192},
                "capabilities": ["completion", "vision"],
            }
            return await self._json(request, payload, record)

        return await self._serve(request, answer)

    # ----------------------------------------------------------------- Anthropic

    @staticmethod
    def _anthropic_error_body(status: int, message: str | None = None) -> dict[str, Any]:
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            529: "overloaded_error",
        }
        return {
            "type": "error",
            "error": {
                "type": kinds.get(status, "api_error"),
                "message": message or f"fake provider error {status}",
            },
        }

    async def _anthropic_refusal(
        self, request: web.Request, record: RecordedRequest, status: int, message: str
    ) -> web.StreamResponse:
        body = json.dumps(self._anthropic_error_body(status, message))
        return await self._finish(request, web.Response(status=status, text=body, content_type=_JSON), record)

    @staticmethod
    def _anthropic_problem(request: web.Request, body: dict[str, Any]) -> tuple[int, str] | None:
        """What the real Messages API would refuse in this request, as (status, message)."""
        if not (request.headers.get("x-api-key") or request.headers.get("authorization")):
            return 401, "x-api-key header is required"
        if not request.headers.get("anthropic-version"):
            return 400, "anthropic-version: header is required"
        if not isinstance(body.get("model"), str):
            return 400, "model: Field required"
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return 400, "max_tokens: Field required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, "messages: at least one message is required"
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("user", "assistant"):
                # System prompts belong in the top-level `system` field.
                return 400, f"messages.{index}.role: Input should be 'user' or 'assistant'"
        return None

    @staticmethod
    def _anthropic_system_text(system: Any) -> str:
        if isinstance(system, str):
            return system
        if isinstance(system, list):
            return _message_text({"content": system})
        return ""

    @staticmethod
    def _anthropic_stop_reason(finish_reason: str) -> str:
        return {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}.get(
            finish_reason, finish_reason
        )

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            problem = self._anthropic_problem(request, body)
            if problem is not None:
                return await self._anthropic_refusal(request, record, *problem)
            messages = [m for m in body["messages"] if isinstance(m, dict)]
            texts = [self._anthropic_system_text(body.get("system"))] + [_message_text(m) for m in messages]
            prompt = " ".join(text for text in texts if text)
            last_user = next((_message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
            reply = self._reply(behaviour, prompt, last_user)
            model = body["model"]
            forced = body.get("tool_choice") or {}
            if not reply.tool_calls and forced.get("type") == "tool":
                # The model obeys a forced tool (LiteLLM forces one for JSON answers): the
                # scripted text becomes the tool's input.
                try:
                    arguments = json.dumps(json.loads(reply.text))
                except ValueError:
                    arguments = "{}"
                reply.tool_calls = [FakeToolCall(name=str(forced.get("name")), arguments=arguments)]
                reply.text, reply.chunks = "", []
            finish = "tool_calls" if reply.tool_calls and behaviour.finish_reason == "stop" else None
            stop_reason = self._anthropic_stop_reason(finish or behaviour.finish_reason)
            usage: dict[str, Any] = {
                "input_tokens": reply.input_tokens - behaviour.cached_tokens - behaviour.cache_write_tokens,
                "output_tokens": reply.output_tokens,
            }
            if behaviour.cached_tokens or behaviour.cache_write_tokens:
                usage["cache_read_input_tokens"] = behaviour.cached_tokens
                usage["cache_creation_input_tokens"] = behaviour.cache_write_tokens
            message: dict[str, Any] = {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
            }
            blocks: list[dict[str, Any]] = []
            if reply.reasoning:
                blocks.append({"type": "thinking", "thinking": reply.reasoning, "signature": "sig-fake"})
            if reply.text or not reply.tool_calls:
                blocks.append({"type": "text", "text": reply.text})
            for i, call in enumerate(reply.tool_calls):
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": reply.call_id(i, "toolu"),
                        "name": call.name,
                        "input": json.loads(call.arguments or "{}"),
                    }
                )
            if not body.get("stream"):
                message["content"] = blocks
                message["stop_reason"] = stop_reason
                if behaviour.include_usage:
                    message["usage"] = usage
                return await self._json(request, message, record)

            def event(name: str, data: dict[str, Any]) -> bytes:
                return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

            if behaviour.include_usage:
                # Like the real API: message_start holds the input tokens and an early output
                # count; message_delta then carries the final (cumulative) output tokens.
                message["usage"] = {**usage, "output_tokens": min(1, reply.output_tokens)}

            def block_start(index: int, block: dict[str, Any]) -> bytes:
                empty = {**block, **{"thinking": "", "text": "", "input": {}}}
                start = {key: empty[key] for key in block if key != "signature"}
                return event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": start},
                )

            def block_delta(index: int, delta: dict[str, Any]) -> bytes:
                return event(
                    "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                )

            def block_stop(index: int) -> bytes:
                return event("content_block_stop", {"type": "content_block_stop", "index": index})

            # One piece per delta; a block's start rides on its first piece (the first block's
            # goes out with the headers, as Anthropic sends it before the first ping) and its
            # stop on its last, so a scripted break cuts between deltas.
            per_block: list[list[bytes]] = []
            for index, block in enumerate(blocks):
                if block["type"] == "thinking":
                    deltas = [
                        block_delta(index, {"type": "thinking_delta", "thinking": t})
                        for t in reply.reasoning_chunks
                    ]
                    deltas.append(block_delta(index, {"type": "signature_delta", "signature": "sig-fake"}))
                elif block["type"] == "text":
                    deltas = [block_delta(index, {"type": "text_delta", "text": t}) for t in reply.chunks]
                else:
                    call = reply.tool_calls[index - (len(blocks) - len(reply.tool_calls))]
                    deltas = [
                        block_delta(index, {"type": "input_json_delta", "partial_json": fragment})
                        for fragment in call.fragments()
                    ]
                per_block.append(deltas)
            head = [event("message_start", {"type": "message_start", "message": message})]
            if blocks:
                head.append(block_start(0, blocks[0]))
            head += [event("ping", {"type": "ping"})] * max(1, behaviour.preamble_chunks)
            pieces: list[bytes] = []
            closing: list[bytes] = []
            for index, deltas in enumerate(per_block):
                prefix = closing + ([block_start(index, blocks[index])] if index else [])
                closing = [block_stop(index)]
                if not deltas:
                    closing = prefix + closing
                    continue
                deltas[0] = b"".join(prefix) + deltas[0]
                pieces += deltas
            if behaviour.stream_error_after_chunks is not None:
                error = behaviour.error_body or self._anthropic_error_body(529, "Overloaded")
                pieces = pieces[: behaviour.stream_error_after_chunks]
                tail = [event("error", error)]
            else:
                delta: dict[str, Any] = {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": None if behaviour.omit_finish else stop_reason,
                        "stop_sequence": None,
                    },
                }
                if behaviour.include_usage:
                    delta["usage"] = {"output_tokens": reply.output_tokens}
                tail = [
                    *closing,
                    event("message_delta", delta),
                    event("message_stop", {"type": "message_stop"}),
                ]
            return await self._stream(request, behaviour, record, "text/event-stream", pieces, tail, head)

        return await self._serve(request, answer, self._anthropic_error_body)

    async def _anthropic_models(self, request: web.Request) -> web.StreamResponse:
        async def answer(
            behaviour: Behaviour, body: dict[str, Any], record: RecordedRequest
        ) -> web.StreamResponse:
            if not (request.headers.get("x-api-key") or request.headers.get("authorization")):
                return await self._anthropic_refusal(request, record, 401, "x-api-key header is required")
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2024-10-22T00:00:00Z"}
                for m in self._models
            ]
            payload = {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
            return await self._json(request, payload, record)

        return await self._serve(request, answer, self._anthropic_error_body)


def image_data_url(data: bytes, mime_type: str) -> str:
    """The data URL a client should send for inline image bytes (tests compare against it)."""
    return f"data:{mime_type};base64,{base64.b64encode(data).decode()}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake LLM provider (for benchmarks).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--record", action="store_true", help="keep a log of requests (costs memory)")
    args = parser.parse_args(argv)
    FakeProvider.run_forever(args.port, args.latency_ms, args.host, record=args.record)


if __name__ == "__main__":
    main()
