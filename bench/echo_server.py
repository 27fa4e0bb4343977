"""A bare grpc.aio server with the Router's message shapes: the ceiling of Python gRPC on this machine.

It implements ``Chat`` (unary), ``StreamChat`` (server streaming) and ``Embed`` of
``sekha.router.v1.RouterService`` with no interceptor, no routing and no upstream call: each
answer is built from the request alone. The load generator drives it with the same stubs,
requests and concurrency as the router, so "router throughput / echo throughput" is the share
of what gRPC in Python can do here that the router achieves. Like the router it runs on uvloop
and answers ``grpc.health.v1``.

    python -m bench.echo_server --port 50099
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from sekha.router.v1 import router_service_pb2 as pb
from sekha.router.v1 import router_service_pb2_grpc as pb_grpc

_PIECES = re.compile(r"\s*\S+")
_VECTOR_DIMENSION = 384


def _last_user_text(messages: object) -> str:
    text = ""
    for message in messages:  # type: ignore[attr-defined]
        if message.role in (pb.ROLE_USER, pb.ROLE_UNSPECIFIED):
            text = "".join(part.text for part in message.parts)
    return text


class EchoServicer(pb_grpc.RouterServiceServicer):
    """Answers from the request alone: what the fake provider would say, without the trip."""

    def __init__(self) -> None:
        # One fixed unit vector: the cost measured is gRPC's, not computing vectors.
        self._vector = [1.0 / _VECTOR_DIMENSION**0.5] * _VECTOR_DIMENSION

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        text = "echo: " + _last_user_text(request.messages)
        return pb.ChatResponse(
            request_id=request.request_id,
            text=text,
            finish_reason=pb.FINISH_REASON_STOP,
            usage=pb.Usage(input_tokens=8, output_tokens=len(text.split())),
        )

    async def StreamChat(
        self, request: pb.StreamChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamChatResponse]:
        text = "echo: " + _last_user_text(request.messages)
        pieces = _PIECES.findall(text)
        for piece in pieces:
            yield pb.StreamChatResponse(delta=pb.ChatDelta(text=piece))
        yield pb.StreamChatResponse(
            summary=pb.ChatSummary(
                request_id=request.request_id,
                finish_reason=pb.FINISH_REASON_STOP,
                usage=pb.Usage(input_tokens=8, output_tokens=len(pieces)),
            )
        )

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        return pb.EmbedResponse(
            request_id=request.request_id,
            embeddings=[pb.Embedding(values=self._vector) for _ in request.inputs],
            dimension=_VECTOR_DIMENSION,
            usage=pb.Usage(input_tokens=len(request.inputs)),
        )


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_RouterServiceServicer_to_server(EchoServicer(), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"echo server listening on {host}:{bound}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Bare grpc.aio echo server (benchmark ceiling).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
