"""The reference ceiling: the least a Python gRPC gateway in front of an OpenAI-style API can do.

A bare ``grpc.aio`` server with the generated ``sekha.router.v1.RouterService`` stubs whose
``Chat``, ``StreamChat`` and ``Embed`` forward to one upstream (the benchmark's fake provider)
over one pooled keep-alive ``aiohttp`` session: protobuf in, JSON out, JSON in, protobuf out,
and nothing else. No routing, pricing, spend, limits, breakers, retries, interceptors,
telemetry or per-request logging; one fixed chat model and one fixed embedding model. Like the
router it runs on uvloop, parses the upstream's SSE line by line with the stdlib ``json``,
answers ``grpc.health.v1`` and logs ``reference serving on port N`` once it listens.

What the router spends above this server per request is what its features cost; what this
server spends is what any Python gRPC gateway pays on this machine (``bench.compare`` reports
the ratios). Where the bare echo server (``bench.echo_server``) is the ceiling of gRPC alone,
this one includes the upstream HTTP trip.

    python -m bench.reference_server --port 0 --upstream http://127.0.0.1:8001/v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from sekha.router.v1 import router_service_pb2 as pb
from sekha.router.v1 import router_service_pb2_grpc as pb_grpc

log = logging.getLogger("bench.reference_server")

_ROLES = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
    pb.ROLE_UNSPECIFIED: "user",
}
_FINISH = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
}
_DEFAULT_MAX_TOKENS = 256
_TIMEOUT = aiohttp.ClientTimeout(total=60.0)
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class UpstreamError(Exception):
    """The upstream answered with an error status or a stream that broke off."""


# Every way an upstream call can fail here; each becomes UNAVAILABLE naming its kind.
_UPSTREAM_FAILURES = (UpstreamError, aiohttp.ClientError, TimeoutError, ValueError, KeyError)


def _messages(messages: Any) -> list[dict[str, str]]:
    return [
        {"role": _ROLES.get(m.role, "user"), "content": "".join(part.text for part in m.parts)}
        for m in messages
    ]


def _usage(data: dict[str, Any] | None) -> pb.Usage | None:
    if not data:
        return None
    return pb.Usage(
        input_tokens=int(data.get("prompt_tokens") or 0),
        output_tokens=int(data.get("completion_tokens") or 0),
    )


class ReferenceServicer(pb_grpc.RouterServiceServicer):
    """Chat, StreamChat and Embed straight to the upstream; other RPCs stay unimplemented."""

    def __init__(self, upstream: str, api_key: str, chat_model: str, embed_model: str) -> None:
        self._chat_url = f"{upstream.rstrip('/')}/chat/completions"
        self._embed_url = f"{upstream.rstrip('/')}/embeddings"
        self._chat_model = chat_model
        self._embed_model = embed_model
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        # The same pool shape as the router's lean provider client: keep-alive, no session timeout.
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, keepalive_timeout=30.0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), trust_env=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _body(self, request: pb.ChatRequest | pb.StreamChatRequest, stream: bool) -> bytes:
        body: dict[str, Any] = {
            "model": self._chat_model,
            "messages": _messages(request.messages),
            "max_tokens": request.generation.max_tokens or _DEFAULT_MAX_TOKENS,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body, separators=(",", ":")).encode()

    async def _post(self, url: str, body: bytes) -> Any:
        assert self._session is not None
        async with self._session.post(url, data=body, headers=self._headers, timeout=_TIMEOUT) as response:
            raw = await response.read()
            if response.status != 200:
                raise UpstreamError(f"upstream answered HTTP {response.status}")
        return json.loads(raw)

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        try:
            data = await self._post(self._chat_url, self._body(request, stream=False))
            choice = data["choices"][0]
            return pb.ChatResponse(
                request_id=request.request_id,
                text=choice["message"]["content"] or "",
                finish_reason=_FINISH.get(choice.get("finish_reason"), pb.FINISH_REASON_UNSPECIFIED),
                usage=_usage(data.get("usage")),
                response_model=data.get("model") or self._chat_model,
            )
        except _UPSTREAM_FAILURES as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream chat failed: {type(exc).__name__}")
            raise  # not reached: abort raises

    async def StreamChat(
        self, request: pb.StreamChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatResponse]:
        assert self._session is not None
        finish = pb.FINISH_REASON_UNSPECIFIED
        usage: pb.Usage | None = None
        model = self._chat_model
        done = False
        try:
            async with self._session.post(
                self._chat_url, data=self._body(request, stream=True), headers=self._headers, timeout=_TIMEOUT
            ) as response:
                if response.status != 200:
                    raise UpstreamError(f"upstream answered HTTP {response.status}")
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        # Read on to the end of the body: a connection released before its
                        # chunked terminator is closed, not pooled.
                        done = True
                        continue
                    chunk = json.loads(payload)
                    if chunk.get("usage"):
                        usage = _usage(chunk["usage"])
                    model = chunk.get("model") or model
                    choices = chunk.get("choices")
                    if not choices:
                        continue
                    reason = choices[0].get("finish_reason")
                    if reason:
                        finish = _FINISH.get(reason, pb.FINISH_REASON_UNSPECIFIED)
                    text = (choices[0].get("delta") or {}).get("content")
                    if text:
                        yield pb.StreamChatResponse(delta=pb.ChatDelta(text=text))
            if not done:
                raise UpstreamError("upstream stream ended before [DONE]")
        except _UPSTREAM_FAILURES as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream stream failed: {type(exc).__name__}")
        yield pb.StreamChatResponse(
            summary=pb.ChatSummary(
                request_id=request.request_id, finish_reason=finish, usage=usage, response_model=model
            )
        )

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        try:
            body = json.dumps({"model": self._embed_model, "input": list(request.inputs)}).encode()
            data = await self._post(self._embed_url, body)
            items = sorted(data["data"], key=lambda item: item.get("index", 0))
            embeddings = [pb.Embedding(values=item["embedding"]) for item in items]
            usage = data.get("usage") or {}
            return pb.EmbedResponse(
                request_id=request.request_id,
                embeddings=embeddings,
                dimension=len(items[0]["embedding"]) if items else 0,
                usage=pb.Usage(input_tokens=int(usage.get("prompt_tokens") or 0)),
            )
        except _UPSTREAM_FAILURES as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream embed failed: {type(exc).__name__}")
            raise  # not reached: abort raises


async def serve(args: argparse.Namespace) -> None:
    servicer = ReferenceServicer(args.upstream, args.api_key, args.chat_model, args.embed_model)
    await servicer.open()
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_RouterServiceServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("reference serving on port %d", port)
    try:
        await server.wait_for_termination()
    finally:
        await servicer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Minimal grpc.aio gateway (the benchmark's reference ceiling)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="OpenAI-style base URL, ending in /v1")
    parser.add_argument("--api-key", default="sk-fake")
    parser.add_argument("--chat-model", default="bench-chat")
    parser.add_argument("--embed-model", default="emb-384")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
