"""Micro-benchmark of the router's own per-request steps, and of what a grpc.aio interceptor costs.

Part 1, the steps of a unary Chat that are the router's and not gRPC's or aiohttp's, each timed
in a loop with `timeit` on the same two-message request (system + user, max_tokens 64) in one
process, no network: the generic request check (`convert.check_request`), protobuf -> domain
(`convert.chat_request_from_pb`), the routing decision with token counting
(`Gateway.decide_chat`), token counting alone (`TokenEstimator.count_messages`), and domain ->
protobuf (`convert.chat_response_to_pb`, on a real result from a chat against the fake). Only
APIs that exist since before issue 19, so `--source <checkout>` times an older tree the same way.

Part 2, why the error guard, telemetry and auth wrap handlers at registration instead of being
interceptors: three grpc.aio servers in this process answer an empty Chat, with no interceptor,
one pass-through interceptor, and two; a client in the same process sends bursts with 8 in
flight to each in shuffled order, and `time.process_time()` around each burst gives CPU per
call (client and server: the client's share is the same for all three, so the differences are
the interceptors').

    .venv/bin/python -m bench.hot_path [--rounds 7] [--output PATH] [--source CHECKOUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NUMBER = 5000


def _median_us(statement: Any, rounds: int) -> float:
    return round(statistics.median(timeit.repeat(statement, number=NUMBER, repeat=rounds)) / NUMBER * 1e6, 2)


async def router_steps(rounds: int) -> dict[str, float]:
    from bench import targets
    from router_service.config import RouterConfig
    from router_service.rpc import convert
    from router_service.server import build_server
    from sekha import client as c
    from sekha.router.v1 import router_service_pb2 as pb
    from testkit.fake_provider import FakeProvider

    request = pb.ChatRequest(
        messages=[c.system("You are terse."), c.user("Say something short about the sea.")],
        generation=pb.GenerationConfig(max_tokens=64),
    )
    async with FakeProvider(record=False) as fake:
        config = RouterConfig.model_validate(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "providers": [targets.fake_provider_entry(fake.base_url)],
            }
        )
        app = await build_server(config)
        try:
            gateway = app.gateway
            domain_request = convert.chat_request_from_pb(request)
            result = await gateway.chat(domain_request)
            steps = {
                "check_request": lambda: convert.check_request(request),
                "chat_request_from_pb": lambda: convert.chat_request_from_pb(request),
                "decide_chat": lambda: gateway.decide_chat(domain_request),
                "count_messages": lambda: gateway.estimator.count_messages(domain_request.messages),
                "chat_response_to_pb": lambda: convert.chat_response_to_pb(result),
            }
            return {name: _median_us(step, rounds) for name, step in steps.items()}
        finally:
            await app.stop(0.1)


async def interceptor_cost(rounds: int, calls: int = 2000, in_flight: int = 8) -> dict[str, float]:
    import grpc

    from sekha.router.v1 import router_service_pb2 as pb
    from sekha.router.v1 import router_service_pb2_grpc as pb_grpc

    class Empty(pb_grpc.RouterServiceServicer):
        async def Chat(self, request: Any, context: Any) -> Any:
            return pb.ChatResponse()

    class PassThrough(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            return await continuation(details)

    servers, stubs, channels = [], {}, []
    for name, count in (("no interceptor", 0), ("1 interceptor", 1), ("2 interceptors", 2)):
        server = grpc.aio.server(interceptors=[PassThrough() for _ in range(count)])
        pb_grpc.add_RouterServiceServicer_to_server(Empty(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        servers.append(server)
        channels.append(channel)
        stubs[name] = pb_grpc.RouterServiceStub(channel)

    async def burst(stub: Any, total: int) -> None:
        request = pb.ChatRequest()

        async def worker() -> None:
            for _ in range(total // in_flight):
                await stub.Chat(request)

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    try:
        for stub in stubs.values():
            await burst(stub, 400)
        samples: dict[str, list[float]] = {name: [] for name in stubs}
        order = list(stubs)
        rng = random.Random(20261203)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                began = time.process_time()
                await burst(stubs[name], calls)
                samples[name].append((time.process_time() - began) / calls * 1e6)
        medians = {name: round(statistics.median(values), 1) for name, values in samples.items()}
        base = medians["no interceptor"]
        return {
            **{f"{k} us/call": v for k, v in medians.items()},
            **{f"{k} added us/call": round(v - base, 1) for k, v in medians.items() if k != "no interceptor"},
        }
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "hot_path.json"))
    parser.add_argument("--source", default=None, help="time the router of another checkout")
    args = parser.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("SEKHA_LOG_LEVEL", "WARNING")
    if args.source:
        sys.path[:0] = [args.source, str(Path(args.source) / "clients" / "python")]
    sys.path.append(str(ROOT))
    from bench.machine import machine_info

    steps = asyncio.run(router_steps(args.rounds))
    report: dict[str, Any] = {
        "benchmark": "router per-request steps (us, median of rounds) and grpc.aio interceptor cost",
        "source": args.source or str(ROOT),
        "machine": machine_info(),
        "router_steps_us": steps,
    }
    if not args.source:
        report["interceptor_cost"] = asyncio.run(interceptor_cost(args.rounds))
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
