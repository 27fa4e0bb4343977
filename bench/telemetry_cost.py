"""What each telemetry mode costs per Chat, in CPU microseconds, measured where steal time cannot
reach the number.

`tracing_overhead.py` measures throughput between processes, which on this shared 2-core VM
swings by +-10% from one burst to the next. Here everything runs in one process: the fake
provider, one router per mode (off, metrics, trace0, trace10, trace100: the modes of
`tracing_overhead.py`, spans exported over OTLP/gRPC to the same dummy collector process), and
the load generator. Each round sends `--requests` Chat calls with 32 in flight to every router,
in shuffled order, and reads `time.process_time()` (CPU of every thread of this process, the
BatchSpanProcessor's exporter thread included) around each burst. CPU time does not grow when
the host steals the CPU, so the difference between a mode and `off` is the work telemetry adds
to a request: client and fake cost the same in every mode and cancel out.

Reported per mode: median CPU per request over the rounds, its difference to `off` in
microseconds, and that difference as a share of the router process's own CPU per Chat at
concurrency 32 with telemetry off, read from bench/results/tracing_overhead.json (what the
throughput of a CPU-bound router scales with).

    .venv/bin/python bench/telemetry_cost.py [--requests 2000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tracing_overhead import fake_provider, start_collector, stop_collector  # noqa: E402

SAMPLERS: dict[str, Any] = {"trace0": 0.0, "trace10": 0.1, "trace100": 1.0}
MODES = ("off", "metrics", "trace0", "trace10", "trace100")


def telemetry_for(mode: str, collector_port: int) -> Any:
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from sekha_runtime.telemetry import TelemetryConfig, setup_telemetry

    if mode == "off":
        return None
    if mode == "metrics":
        return setup_telemetry("sekha-router", prometheus=True, environ={})
    settings = TelemetryConfig(otlp_endpoint=f"http://127.0.0.1:{collector_port}")
    sampler = ParentBased(TraceIdRatioBased(SAMPLERS[mode]))
    # OTEL_METRICS_EXPORTER=none: metrics go to Prometheus only, as in tracing_overhead.py.
    return setup_telemetry(
        "sekha-router", settings, prometheus=True, sampler=sampler, environ={"OTEL_METRICS_EXPORTER": "none"}
    )


def router_config(fake_url: str) -> Any:
    from router_service.config import RouterConfig

    return RouterConfig.model_validate(
        {
            "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1},
            "providers": [fake_provider(fake_url)],
        }
    )


async def cpu_per_request(client: Any, request: Any, requests: int) -> float:
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await client.chat(request)

    before = time.process_time()
    await asyncio.gather(*(worker() for _ in range(32)))
    await asyncio.sleep(0.05)  # the exporter thread's share of these calls
    return (time.process_time() - before) / requests * 1e6


async def measure(collector_port: int, requests: int, rounds: int) -> dict[str, list[float]]:
    from router_service.server import RouterDeps
    from router_service.server import build_server as build_router
    from sekha import client as c
    from sekha.router.v1 import router_service_pb2 as rt
    from testkit.fake_provider import FakeProvider

    request = rt.ChatRequest(
        messages=[c.user("Say something short about the sea.")], generation=rt.GenerationConfig(max_tokens=32)
    )
    async with FakeProvider() as fake, contextlib.AsyncExitStack() as stack:
        clients = {}
        for mode in MODES:
            telemetry = telemetry_for(mode, collector_port)
            if telemetry is not None:
                stack.callback(telemetry.shutdown)
            app = await build_router(router_config(fake.base_url), RouterDeps(telemetry=telemetry))
            stack.push_async_callback(app.stop, 0.5)
            client = c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{app.port}", default_timeout_s=30))
            stack.push_async_callback(client.close)
            for _ in range(300):  # warm-up
                await client.chat(request)
            clients[mode] = client
        return await interleaved_rounds(clients, request, requests, rounds, seed=20261122)


async def interleaved_rounds(
    clients: dict[str, Any], request: Any, requests: int, rounds: int, seed: int
) -> dict[str, list[float]]:
    """CPU us per request of each named router, `rounds` times, in a shuffled order each round
    (a burst of noise then hits a different router each time instead of always the same one)."""
    results: dict[str, list[float]] = {name: [] for name in clients}
    order = list(clients)
    shuffle = random.Random(seed)
    for round_index in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            results[name].append(await cpu_per_request(clients[name], request, requests))
        line = "  ".join(f"{name} {results[name][-1]:6.0f}" for name in clients)
        print(f"round {round_index + 1:2d} cpu us/request: {line}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    from bench.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="Chat calls per burst")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "telemetry_cost.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("SEKHA_LOG_LEVEL", "WARNING")

    collector, collector_port = start_collector()
    try:
        results = asyncio.run(measure(collector_port, args.requests, args.rounds))
    finally:
        received = stop_collector(collector)

    overhead = json.loads((ROOT / "bench" / "results" / "tracing_overhead.json").read_text())
    router_cpu = overhead["modes"]["off"]["concurrency_32"]["router_cpu_us_per_request"]
    base = statistics.median(results["off"])
    summary = {}
    for mode in MODES:
        median = statistics.median(results[mode])
        paired = sorted(run - off for run, off in zip(results[mode], results["off"], strict=True))
        added = statistics.median(paired)
        summary[mode] = {
            "cpu_us_per_request": round(median, 1),
            "added_us_per_request": round(added, 1),
            "added_us_range": [round(paired[0], 1), round(paired[-1], 1)],
            "share_of_router_cpu_pct": round(100 * added / router_cpu, 1),
        }
    report = {
        "benchmark": "CPU per Chat by telemetry mode, all in one process (process_time), c=32",
        "requests_per_burst": args.requests,
        "rounds": args.rounds,
        "router_cpu_us_per_request_off": router_cpu,
        "router_cpu_source": "bench/results/tracing_overhead.json, off, concurrency_32",
        "spans_received_by_collector": received["spans"],
        "machine": machine_info(),
        "off_cpu_us_per_request": round(base, 1),
        "modes": summary,
        "raw": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
