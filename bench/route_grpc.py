"""`Route` over gRPC: latency of a routing decision as a caller sees it.

Method: the router runs as its own process (`python -m router_service serve`)
with 10 providers x 20 models; this process sends sequential Route requests
(one chat message, max_tokens 256) over one insecure channel with the
generated stub, after a warm-up, and times each call with perf_counter_ns.
Route makes no provider call, so this is the server's decision path (token
count + routing + protobuf + gRPC) plus loopback transport.

    python -m bench.route_grpc [--requests 5000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sekha.router.v1 import router_service_pb2 as rt
from sekha.router.v1 import router_service_pb2_grpc as rt_grpc

RESULTS = Path(__file__).resolve().parent / "results"
PROVIDERS, MODELS = 10, 20
TASKS = ["chat_small", "chat_smart", "chat_large", "embedding"]


def _config(port: int) -> dict:
    providers = []
    for p in range(PROVIDERS):
        models = []
        for m in range(MODELS):
            task = TASKS[m % len(TASKS)]
            model = {
                "id": f"model-{p}-{m}",
                "tasks": [task],
                "context_window": 128000,
                "price": {"input_per_million": 0.1 * (m + 1), "output_per_million": 0.3 * (m + 1)},
            }
            if task == "embedding":
                model["embedding_dimension"] = 768
            models.append(model)
        providers.append(
            {
                "id": f"provider-{p}",
                "type": "openai_compatible",
                "base_url": "http://127.0.0.1:9/v1",
                "priority": 10 + p,
                "models": models,
            }
        )
    return {"server": {"host": "127.0.0.1", "port": port}, "providers": providers}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _drive(target: str, requests: int, warmup: int) -> list[float]:
    request = rt.RouteRequest(
        routing=rt.RoutingPreferences(task=rt.TASK_CHAT_SMART),
        messages=[
            rt.ChatMessage(
                role=rt.ROLE_USER,
                parts=[rt.ContentPart(text="How do I sort a list of tuples by the second item in Python?")],
            )
        ],
        max_tokens=256,
    )
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            try:
                if (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == 1:
                    break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        stub = rt_grpc.RouterServiceStub(channel)
        for _ in range(warmup):
            await stub.Route(request)
        samples = []
        for _ in range(requests):
            start = time.perf_counter_ns()
            await stub.Route(request)
            samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="200 requests")
    args = parser.parse_args(argv)
    requests = 200 if args.quick else args.requests
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "router.yaml"
        config_path.write_text(yaml.safe_dump(_config(port)))
        server = subprocess.Popen(
            [sys.executable, "-m", "router_service", "serve", "--config", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "SEKHA_LOG_LEVEL": "WARNING"},
        )
        try:
            samples = asyncio.run(_drive(f"127.0.0.1:{port}", requests, warmup=min(500, requests)))
        finally:
            server.terminate()
            server.wait(timeout=15)
    ordered = sorted(samples)
    result = {
        "benchmark": "route_grpc",
        "method": __doc__.split("Method: ", 1)[1].split("\n\n", 1)[0].replace("\n", " "),
        "providers": PROVIDERS,
        "models_per_provider": MODELS,
        "requests": requests,
        "median_ms": round(statistics.median(ordered), 4),
        "p90_ms": round(ordered[int(0.9 * len(ordered)) - 1], 4),
        "p99_ms": round(ordered[int(0.99 * len(ordered)) - 1], 4),
        "mean_ms": round(statistics.fmean(ordered), 4),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "nproc": os.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    if not args.quick:
        (RESULTS / "route_grpc.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
