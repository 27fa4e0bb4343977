"""Every RPC of both services goes through the error interceptor, and each error row maps as designed.

Fake servicers raise on every method (found from the service descriptors, so a
new RPC is covered without touching this file); real servers and channels.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from sekha import client as c
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.embedding.v1 import embedding_service_pb2_grpc as emb_grpc
from sekha.router.v1 import router_service_pb2 as rt
from sekha.router.v1 import router_service_pb2_grpc as rt_grpc
from sekha_runtime import errors as e
from sekha_runtime.server.errors import GuardedRegistry
from sekha_runtime.server.lifecycle import ServerOptions, start_server

SECRET = "sk-live-SECRET-123 and the user's prompt"
SERVICES = [
    (rt.DESCRIPTOR.services_by_name["RouterService"], rt_grpc, "RouterService"),
    (emb.DESCRIPTOR.services_by_name["EmbeddingService"], emb_grpc, "EmbeddingService"),
]


def _raising_servicer(base: type, descriptor, make_error):  # type: ignore[no-untyped-def]
    methods = {}
    for method in descriptor.methods:
        if method.server_streaming:

            async def stream(self, request, context, _make=make_error):  # type: ignore[no-untyped-def]
                yield rt.StreamChatResponse(delta=rt.ChatDelta(text="partial"))
                raise _make()

            methods[method.name] = stream
        else:

            async def unary(self, request, context, _make=make_error):  # type: ignore[no-untyped-def]
                raise _make()

            methods[method.name] = unary
    return type("Raising", (base,), methods)()


async def _serve(make_error, max_concurrent_rpcs: int = 0):  # type: ignore[no-untyped-def]
    servicers = [
        (_raising_servicer(getattr(module, f"{name}Servicer"), descriptor, make_error), module, name)
        for descriptor, module, name in SERVICES
    ]

    def register(server: GuardedRegistry) -> None:
        for servicer, module, name in servicers:
            getattr(module, f"add_{name}Servicer_to_server")(servicer, server)

    return await start_server(
        ServerOptions(port=0, max_concurrent_rpcs=max_concurrent_rpcs),
        "test.sekha.dev",
        register,
        [d.full_name for d, _, _ in SERVICES],
    )


async def _call_every_rpc(port: int):  # type: ignore[no-untyped-def]
    """(rpc name, AioRpcError) for every RPC of both services."""
    outcomes = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for descriptor, module, _ in SERVICES:
            stub = getattr(module, f"{descriptor.name}Stub")(channel)
            for method in descriptor.methods:
                request = getattr(rt if descriptor.name == "RouterService" else emb, method.input_type.name)()
                call = getattr(stub, method.name)
                try:
                    if method.server_streaming:
                        async for _ in call(request, timeout=10):
                            pass
                    else:
                        await call(request, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    outcomes.append((method.name, exc))
                else:
                    pytest.fail(f"{method.name} did not fail")
    return outcomes


async def test_every_rpc_maps_unexpected_errors_to_internal_without_leaking(
    caplog: pytest.LogCaptureFixture,
) -> None:
    serving = await _serve(lambda: RuntimeError(SECRET))
    try:
        with caplog.at_level(logging.ERROR):
            outcomes = await _call_every_rpc(serving.port)
    finally:
        await serving.stop(0)
    expected = sum(len(d.methods) for d, _, _ in SERVICES)
    assert len(outcomes) == expected
    for name, exc in outcomes:
        assert exc.code() == grpc.StatusCode.INTERNAL, name
        assert exc.details().startswith("internal error (error id ")
        assert "SECRET" not in exc.details() and "prompt" not in exc.details()
        raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
        assert b"SECRET" not in raw
    assert len([r for r in caplog.records if "RuntimeError" in r.getMessage()]) == expected
    assert all("SECRET" not in r.getMessage() for r in caplog.records)


ROWS = [
    (
        lambda: e.InvalidArgumentError(e.FieldViolation("messages[0]", "too long")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "field_violations",
    ),
    (
        lambda: e.NoRouteError("no model serves audio", "routing.task"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "precondition_violations",
    ),
    (
        lambda: e.CostLimitExceededError("too dear", cheapest_usd=0.5),
        grpc.StatusCode.FAILED_PRECONDITION,
        "reason",
    ),
    (
        lambda: e.BudgetExhaustedError("budget used up", "key:abc", "daily"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "quota_violations",
    ),
    (lambda: e.OverloadedError(), grpc.StatusCode.RESOURCE_EXHAUSTED, "retry_after_s"),
    (
        lambda: e.UnavailableError(
            "all failed", retry_after_s=2.0, attempts=[e.AttemptSummary("p", "m", "http_503")]
        ),
        grpc.StatusCode.UNAVAILABLE,
        "retry_after_s",
    ),
    (lambda: e.NotFoundError("collection", "docs_384"), grpc.StatusCode.NOT_FOUND, "resource"),
    (
        lambda: e.DimensionMismatchError("docs_384", 384, 768),
        grpc.StatusCode.FAILED_PRECONDITION,
        "precondition_violations",
    ),
    (lambda: e.UnauthenticatedError("missing API key"), grpc.StatusCode.UNAUTHENTICATED, None),
    (lambda: e.DeadlineExceededError("deadline exceeded"), grpc.StatusCode.DEADLINE_EXCEEDED, None),
    (lambda: e.UnimplementedError("not built"), grpc.StatusCode.UNIMPLEMENTED, None),
    (
        lambda: e.ProviderRejectedError("too long for the model", kind="context_length"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "field_violations",
    ),
]


@pytest.mark.parametrize(("make_error", "code", "detail"), ROWS)
async def test_error_table_rows(make_error, code, detail) -> None:  # type: ignore[no-untyped-def]
    serving = await _serve(make_error)
    try:
        router = c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{serving.port}"))
        with pytest.raises(c.SekhaError) as exc:
            await router.route(rt.RouteRequest())
        await router.close()
    finally:
        await serving.stop(0)
    assert exc.value.code == code
    assert exc.value.message == make_error().message
    if detail is not None:
        assert getattr(exc.value.details, detail)
    if code == grpc.StatusCode.UNAVAILABLE:
        assert exc.value.details.metadata["attempts"] == "p/m:http_503"
        assert exc.value.details.retry_after_s == pytest.approx(2.0)


async def test_stream_error_after_output_still_maps() -> None:
    serving = await _serve(lambda: e.StreamInterruptedError("broke after output"))
    try:
        router = c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{serving.port}"))
        seen = []
        with pytest.raises(c.UnavailableError) as exc:
            async for message in router.stream_chat(rt.StreamChatRequest()):
                seen.append(message.delta.text)
        await router.close()
    finally:
        await serving.stop(0)
    assert seen == ["partial"]
    assert exc.value.details.reason == "STREAM_INTERRUPTED"


async def test_concurrency_limit_answers_fast_with_retry_info_and_health_still_works() -> None:
    release = asyncio.Event()

    class Slow(rt_grpc.RouterServiceServicer):
        async def Route(self, request, context):  # type: ignore[no-untyped-def]
            await release.wait()
            return rt.RouteResponse()

    serving = await start_server(
        ServerOptions(port=0, max_concurrent_rpcs=1),
        "test.sekha.dev",
        lambda server: rt_grpc.add_RouterServiceServicer_to_server(Slow(), server),
        ["sekha.router.v1.RouterService"],
    )
    router = c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{serving.port}"))
    try:
        first = asyncio.create_task(router.route(rt.RouteRequest()))
        while serving.errors.in_flight == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(c.ResourceExhaustedError) as exc:
            await router.route(rt.RouteRequest())
        assert exc.value.details.retry_after_s is not None
        assert await router.health() == "SERVING"
        release.set()
        await first
        assert serving.errors.in_flight == 0
    finally:
        await router.close()
        await serving.stop(0)
