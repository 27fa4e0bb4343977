"""The one load generator for every target: a closed-loop driver in its own process.

``concurrency`` workers each issue requests back to back (a new one as soon as the previous
answer is complete) until ``requests`` were issued in total or ``max_duration_s`` passed.
gRPC targets (router, echo server) are driven over one ``grpc.aio`` channel with the generated
``RouterService`` stubs (or ``channels`` channels, each its own TCP connection, calls spread over
them in turn: a router with several worker processes on one port only spreads connections);
HTTP targets (LiteLLM proxy, the fake provider itself) with one pooled keep-alive ``aiohttp``
session, speaking the OpenAI API, with any extra headers the target needs (Portkey names its
upstream in headers). Both send the same conversation, the same embedding input, and both
check each answer is complete (a stream counts only when it ended properly: a gRPC summary
message, an SSE ``[DONE]``).

Latency is measured from just before the call to the complete answer; for streams the time to
the first text chunk is kept too, and the text chunks are counted (CPU per chunk). Failed calls
are counted and classified, not timed.

The process reads one JSON job per line on stdin and answers one JSON result per line on
stdout, so the orchestrator can read the target's ``/proc`` counters between a warm-up job and
the measured job while channels and connections stay open::

    {"op": "run", "kind": "grpc", "address": "127.0.0.1:50051", "workload": "chat", ...}
    {"op": "reset"}     # close every channel and session
    {"op": "exit"}
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import grpc

from bench.stats import summarize_ms
from sekha.router.v1 import router_service_pb2 as pb
from sekha.router.v1 import router_service_pb2_grpc as pb_grpc

SYSTEM_TEXT = "You are terse."
USER_TEXT = "Say something short about the sea, please."
EMBED_TEXT = "a short text to embed"
MAX_TOKENS = 64
CALL_TIMEOUT_S = 60.0
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Job:
    """One closed-loop run against one target."""

    kind: str  # "grpc" or "http"
    address: str  # host:port (grpc) or the OpenAI base URL ending in /v1 (http)
    workload: str  # "chat", "stream" or "embed"
    concurrency: int
    requests: int
    max_duration_s: float = 60.0
    chat_model: str = ""
    embed_model: str = ""
    api_key: str | None = None
    headers: dict[str, str] | None = None  # extra HTTP headers (http targets only)
    texts: tuple[str, ...] = (EMBED_TEXT,)  # embed inputs, one per request, cycled
    call_timeout_s: float = CALL_TIMEOUT_S
    channels: int = 1  # gRPC connections the calls are spread over (grpc targets only)


@dataclass
class JobResult:
    workload: str
    concurrency: int
    issued: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    throughput_rps: float = 0.0
    latency_ms: dict[str, float | int] = field(default_factory=dict)
    ttft_ms: dict[str, float | int] = field(default_factory=dict)
    chunks: int = 0  # text chunks received by complete streams
    client_cpu_s: float = 0.0


class IncompleteAnswer(Exception):
    """The answer ended without its terminal marker, or had the wrong shape."""


# A call returns None, or for a stream (time to the first text chunk, number of text chunks).
Call = Callable[[int], Awaitable[tuple[float, int] | None]]


class GrpcTarget:
    """Calls over one channel (or several, each its own connection) with the generated stubs."""

    def __init__(self, address: str, channels: int = 1) -> None:
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ]
        if channels > 1:
            # Channels with the same arguments share one connection through the global
            # subchannel pool; a local pool per channel gives each its own TCP connection.
            options.append(("grpc.use_local_subchannel_pool", 1))
        self.channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(channels)]
        self.stubs = [pb_grpc.RouterServiceStub(channel) for channel in self.channels]

    def call(self, job: Job) -> Call:
        messages = [
            pb.ChatMessage(role=pb.ROLE_SYSTEM, parts=[pb.ContentPart(text=SYSTEM_TEXT)]),
            pb.ChatMessage(role=pb.ROLE_USER, parts=[pb.ContentPart(text=USER_TEXT)]),
        ]
        generation = pb.GenerationConfig(max_tokens=MAX_TOKENS)
        routing = pb.RoutingPreferences(preferred_model=job.chat_model) if job.chat_model else None
        embed_routing = pb.RoutingPreferences(preferred_model=job.embed_model) if job.embed_model else None
        timeout = job.call_timeout_s
        stubs = self.stubs
        count = len(stubs)

        if job.workload == "chat":
            request = pb.ChatRequest(messages=messages, generation=generation, routing=routing)

            async def chat(index: int) -> tuple[float, int] | None:
                reply = await stubs[index % count].Chat(request, timeout=timeout)
                if not reply.text:
                    raise IncompleteAnswer("empty chat text")
                return None

            return chat
        if job.workload == "stream":
            stream_request = pb.StreamChatRequest(messages=messages, generation=generation, routing=routing)

            async def stream(index: int) -> tuple[float, int] | None:
                started = time.perf_counter()
                first: float | None = None
                chunks = 0
                finished = False
                async for message in stubs[index % count].StreamChat(stream_request, timeout=timeout):
                    kind = message.WhichOneof("event")
                    if kind == "delta":
                        if message.delta.text:
                            chunks += 1
                            if first is None:
                                first = time.perf_counter() - started
                    elif kind == "summary":
                        finished = True
                if not finished or first is None:
                    raise IncompleteAnswer("stream without text or summary")
                return first, chunks

            return stream
        if job.workload == "embed":
            embed_requests = [pb.EmbedRequest(inputs=[text], routing=embed_routing) for text in job.texts]

            async def embed(index: int) -> tuple[float, int] | None:
                stub = stubs[index % count]
                reply = await stub.Embed(embed_requests[index % len(embed_requests)], timeout=timeout)
                if len(reply.embeddings) != 1 or not reply.embeddings[0].values:
                    raise IncompleteAnswer("wrong number of vectors")
                return None

            return embed
        raise ValueError(f"unknown workload {job.workload!r}")

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class HttpTarget:
    """OpenAI API calls over one pooled keep-alive session."""

    def __init__(self, base_url: str, api_key: str | None, headers: dict[str, str] | None = None) -> None:
        # Unlimited pool: the closed loop itself bounds connections to the concurrency.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        self.base_url = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def call(self, job: Job) -> Call:
        session, headers = self.session, self.headers
        timeout = aiohttp.ClientTimeout(total=job.call_timeout_s)
        messages = [{"role": "system", "content": SYSTEM_TEXT}, {"role": "user", "content": USER_TEXT}]
        chat_url = f"{self.base_url}/chat/completions"

        if job.workload == "chat":
            body = json.dumps(
                {"model": job.chat_model, "messages": messages, "max_tokens": MAX_TOKENS}
            ).encode()

            async def chat(index: int) -> tuple[float, int] | None:
                async with session.post(chat_url, data=body, headers=headers, timeout=timeout) as response:
                    raw = await response.read()
                    if response.status != 200:
                        raise IncompleteAnswer(f"http_{response.status}")
                data = json.loads(raw)
                if not data["choices"][0]["message"]["content"]:
                    raise IncompleteAnswer("empty chat text")
                return None

            return chat
        if job.workload == "stream":
            body = json.dumps(
                {
                    "model": job.chat_model,
                    "messages": messages,
                    "max_tokens": MAX_TOKENS,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
            ).encode()

            async def stream(index: int) -> tuple[float, int] | None:
                started = time.perf_counter()
                first: float | None = None
                chunks = 0
                done = False
                async with session.post(chat_url, data=body, headers=headers, timeout=timeout) as response:
                    if response.status != 200:
                        await response.read()
                        raise IncompleteAnswer(f"http_{response.status}")
                    async for line in response.content:
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            done = True
                            continue
                        choices = json.loads(payload).get("choices") or []
                        if choices and (choices[0].get("delta") or {}).get("content"):
                            chunks += 1
                            if first is None:
                                first = time.perf_counter() - started
                if not done or first is None:
                    raise IncompleteAnswer("stream without text or [DONE]")
                return first, chunks

            return stream
        if job.workload == "embed":
            url = f"{self.base_url}/embeddings"
            bodies = [json.dumps({"model": job.embed_model, "input": [text]}).encode() for text in job.texts]

            async def embed(index: int) -> tuple[float, int] | None:
                payload = bodies[index % len(bodies)]
                async with session.post(url, data=payload, headers=headers, timeout=timeout) as response:
                    raw = await response.read()
                    if response.status != 200:
                        raise IncompleteAnswer(f"http_{response.status}")
                data = json.loads(raw)
                if len(data["data"]) != 1 or not data["data"][0]["embedding"]:
                    raise IncompleteAnswer("wrong number of vectors")
                return None

            return embed
        raise ValueError(f"unknown workload {job.workload!r}")

    async def close(self) -> None:
        await self.session.close()


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"grpc_{exc.code().name}"
    if isinstance(exc, IncompleteAnswer):
        return f"incomplete:{exc.args[0] if exc.args else ''}"
    return type(exc).__name__


async def run_job(call: Call, job: Job) -> JobResult:
    """Closed loop: ``concurrency`` workers, ``requests`` in total or until ``max_duration_s``."""
    result = JobResult(workload=job.workload, concurrency=job.concurrency)
    latencies: list[float] = []
    first_tokens: list[float] = []
    chunks = 0
    errors: collections.Counter[str] = collections.Counter()
    issued = 0
    clock = time.perf_counter
    started = clock()
    stop_at = started + job.max_duration_s

    async def worker() -> None:
        nonlocal issued, chunks
        while issued < job.requests and clock() < stop_at:
            index = issued
            issued += 1
            begin = clock()
            try:
                streamed = await call(index)
            except Exception as exc:
                errors[_error_kind(exc)] += 1
                continue
            latencies.append(clock() - begin)
            if streamed is not None:
                first_tokens.append(streamed[0])
                chunks += streamed[1]

    cpu_before = time.process_time()
    await asyncio.gather(*(worker() for _ in range(job.concurrency)))
    elapsed = clock() - started
    result.client_cpu_s = round(time.process_time() - cpu_before, 4)
    result.issued = issued
    result.ok = len(latencies)
    result.errors = sum(errors.values())
    result.error_kinds = dict(errors)
    result.elapsed_s = round(elapsed, 4)
    result.throughput_rps = round(len(latencies) / elapsed, 2) if elapsed > 0 else 0.0
    result.latency_ms = summarize_ms(latencies)
    result.chunks = chunks
    if job.workload == "stream":
        result.ttft_ms = summarize_ms(first_tokens)
    return result


class LoadGenerator:
    """Keeps channels and sessions open across jobs for the same target."""

    def __init__(self) -> None:
        self._targets: dict[tuple[Any, ...], GrpcTarget | HttpTarget] = {}

    def _target(self, job: Job) -> GrpcTarget | HttpTarget:
        key = (job.kind, job.address, job.api_key, tuple(sorted((job.headers or {}).items())), job.channels)
        target = self._targets.get(key)
        if target is None:
            target = (
                GrpcTarget(job.address, job.channels)
                if job.kind == "grpc"
                else HttpTarget(job.address, job.api_key, job.headers)
            )
            self._targets[key] = target
        return target

    async def run(self, job: Job) -> JobResult:
        return await run_job(self._target(job).call(job), job)

    async def reset(self) -> None:
        targets, self._targets = self._targets, {}
        for target in targets.values():
            await target.close()


def job_from_json(data: dict[str, Any]) -> Job:
    fields = {k: v for k, v in data.items() if k != "op"}
    if "texts" in fields:
        fields["texts"] = tuple(fields["texts"])
    return Job(**fields)


async def serve_stdio() -> None:
    generator = LoadGenerator()
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            op = command.get("op")
            if op == "exit":
                break
            if op == "reset":
                await generator.reset()
                answer: dict[str, Any] = {"ok": True}
            elif op == "run":
                answer = asdict(await generator.run(job_from_json(command)))
            else:
                answer = {"error": f"unknown op {op!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        await generator.reset()


def main() -> None:
    try:
        import uvloop

        uvloop.run(serve_stdio())
    except ImportError:
        asyncio.run(serve_stdio())


if __name__ == "__main__":
    main()
