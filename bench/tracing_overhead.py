"""What tracing costs the router: Chat throughput with telemetry off, metrics only, and tracing
at 100% and 10% sampling, exported over OTLP/gRPC to a local collector.

Every piece is its own process, as in production: the fake provider (zero latency), a dummy
OTLP collector (accepts and counts spans, discards them), and the router itself started by
`python -m router_service serve`, so its telemetry is set up exactly as `__main__` does it: from
the `telemetry:` config section and the standard OTEL_* variables. The load generator (this
process) sends Chat RPCs sequentially and with 32 in flight.

Why OTLP to a real (dummy) collector rather than an in-memory exporter: the BatchSpanProcessor's
worker thread encodes every span to protobuf and sends it over gRPC, and that thread competes
with the event loop for the GIL; an in-memory exporter would hide exactly that cost.

Method, chosen because this shared 2-core VM drifts by tens of percent within minutes: one
router process per mode runs for the whole benchmark, and the load alternates between them in
short bursts (`--requests` Chat calls each, sequential then 32 in flight), the order of modes
shuffled every round. Each burst's throughput is divided by the `off` router's burst of the same
round and pattern, so drift that hits a whole round cancels out, and the median of those paired
ratios over `--rounds` rounds is the result. The router process's CPU time per request (user +
system, every thread, from /proc) is reported the same way.

Modes:

* off      - no telemetry at all (no interceptor, the gateway's NullObserver);
* metrics  - Prometheus metrics on server.metrics_port, no tracing;
* trace0   - metrics + tracing on with parentbased_always_off (the price of an unsampled request);
* trace10  - metrics + tracing, parentbased_traceidratio 0.1;
* trace100 - metrics + tracing, parentbased_always_on.

    .venv/bin/python bench/tracing_overhead.py [--requests 1000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES: dict[str, dict[str, Any]] = {
    "off": {"metrics": False, "sampler": None},
    "metrics": {"metrics": True, "sampler": None},
    "trace0": {"metrics": True, "sampler": ("parentbased_always_off", None)},
    "trace10": {"metrics": True, "sampler": ("parentbased_traceidratio", "0.1")},
    "trace100": {"metrics": True, "sampler": ("parentbased_always_on", None)},
}
PATTERNS = {"sequential": 1, "concurrency_32": 32}


# ------------------------------------------------------------------------------ dummy collector


def serve_collector() -> None:
    """Run an OTLP/gRPC collector that counts spans, metric exports and log records and drops
    them; prints its port, then on SIGTERM what it received."""
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = {"spans": 0, "metric_exports": 0, "log_records": 0}
    lock = threading.Lock()

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # the generated API's name
            count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            with lock:
                received["spans"] += count
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # the generated API's name
            with lock:
                received["metric_exports"] += 1
            return metrics_service_pb2.ExportMetricsServiceResponse()

    # A router with telemetry.otlp_endpoint sends its logs there too; a collector without the
    # logs service would answer UNIMPLEMENTED and the exporter would retry.
    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # the generated API's name
            count = sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
            with lock:
                received["log_records"] += count
            return logs_service_pb2.ExportLogsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(port, flush=True)
    stop.wait()
    server.stop(0)
    with lock:
        print(json.dumps(received), flush=True)


# ------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_fake() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit.fake_provider", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip().rsplit(" ", 1)[-1]


def start_collector() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-collector"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def stop_collector(process: subprocess.Popen[str]) -> dict[str, int]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fake_provider(fake_url: str) -> dict[str, Any]:
    """The router config's one provider: the fake, on the lean path, one priced chat model."""
    return {
        "id": "fake",
        "type": "openai_compatible",
        "base_url": f"{fake_url}/v1",
        "transport": "native",
        "models": [
            {
                "id": "bench-model",
                "tasks": ["chat_smart"],
                "context_window": 8192,
                "price": {"input_per_million": 1.0, "output_per_million": 2.0},
            }
        ],
    }


@contextlib.contextmanager
def router_process(fake_url: str, mode: str, collector_port: int, workdir: Path) -> Iterator[tuple[int, int]]:
    settings = MODES[mode]
    port = free_port()
    config = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "grace_period_s": 1,
            "metrics_port": free_port() if settings["metrics"] else None,
        },
        "providers": [fake_provider(fake_url)],
    }
    path = workdir / f"router-{mode}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["SEKHA_LOG_LEVEL"] = "WARNING"
    if settings["sampler"] is not None:
        sampler, argument = settings["sampler"]
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{collector_port}"
        env["OTEL_TRACES_SAMPLER"] = sampler
        if argument is not None:
            env["OTEL_TRACES_SAMPLER_ARG"] = argument
        env["OTEL_METRICS_EXPORTER"] = "none"  # metrics go to Prometheus in every mode that has them
    process = subprocess.Popen(
        [sys.executable, "-m", "router_service", "serve", "--config", str(path)], cwd=ROOT, env=env
    )
    try:
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------ load


async def wait_serving(router: Any) -> None:
    from sekha import client as c

    for _ in range(200):
        try:
            if await router.health(timeout_s=1) == "SERVING":
                return
        except c.SekhaError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("a router never became SERVING")


async def burst(router: Any, request: Any, pid: int, requests: int, concurrency: int) -> dict[str, float]:
    """`requests` Chat calls with `concurrency` in flight: throughput and router CPU per call."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await router.chat(request)

    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.05)  # work the calls left behind (span export) is theirs too
    return {
        "rps": requests / elapsed,
        "router_cpu_us_per_request": (cpu_seconds(pid) - cpu_before) / requests * 1e6,
    }


async def measure(routers: dict[str, tuple[int, int]], requests: int, rounds: int) -> list[dict[str, Any]]:
    """Per round: every mode's burst per pattern, modes in a fresh random order each time."""
    import random

    from sekha import client as c
    from sekha.router.v1 import router_service_pb2 as rt

    request = rt.ChatRequest(
        messages=[c.user("Say something short about the sea.")], generation=rt.GenerationConfig(max_tokens=32)
    )
    shuffle = random.Random(20261122)
    clients = {
        mode: c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{port}", default_timeout_s=30))
        for mode, (port, _) in routers.items()
    }
    try:
        for router in clients.values():
            await wait_serving(router)
            for _ in range(300):  # warm-up: connections, caches, the first span batch
                await router.chat(request)
        results = []
        for round_index in range(rounds):
            round_result: dict[str, Any] = {pattern: {} for pattern in PATTERNS}
            for pattern, concurrency in PATTERNS.items():
                order = list(clients)
                shuffle.shuffle(order)
                for mode in order:
                    pid = routers[mode][1]
                    round_result[pattern][mode] = await burst(
                        clients[mode], request, pid, requests, concurrency
                    )
            results.append(round_result)
            line = "  ".join(f"{mode} {round_result['concurrency_32'][mode]['rps']:5.0f}" for mode in MODES)
            print(f"round {round_index + 1:2d} c32 rps: {line}", flush=True)
        return results
    finally:
        for router in clients.values():
            await router.close()


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the raw numbers, and of each round's ratio to the same round's `off` burst."""
    summary: dict[str, Any] = {}
    for mode in MODES:
        summary[mode] = {}
        for pattern in PATTERNS:
            runs = [r[pattern][mode] for r in results]
            bases = [r[pattern]["off"] for r in results]
            throughput = sorted(run["rps"] / base["rps"] - 1 for run, base in zip(runs, bases, strict=True))
            cpu = sorted(
                run["router_cpu_us_per_request"] / base["router_cpu_us_per_request"] - 1
                for run, base in zip(runs, bases, strict=True)
            )
            quartile = len(throughput) // 4
            summary[mode][pattern] = {
                "rps": round(statistics.median(run["rps"] for run in runs), 1),
                "router_cpu_us_per_request": round(
                    statistics.median(run["router_cpu_us_per_request"] for run in runs), 1
                ),
                "throughput_vs_off_pct": round(100 * statistics.median(throughput), 1),
                "throughput_vs_off_pct_iqr": [
                    round(100 * throughput[quartile], 1),
                    round(100 * throughput[-1 - quartile], 1),
                ],
                "router_cpu_vs_off_pct": round(100 * statistics.median(cpu), 1),
            }
    return summary


def main(argv: list[str] | None = None) -> None:
    from bench.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="Chat calls per burst")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tracing_overhead.json"))
    parser.add_argument("--serve-collector", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_collector:
        serve_collector()
        return

    fake, fake_url = start_fake()
    collector, collector_port = start_collector()
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as routers_running:
            routers = {
                mode: routers_running.enter_context(router_process(fake_url, mode, collector_port, Path(tmp)))
                for mode in MODES
            }
            results = asyncio.run(measure(routers, args.requests, args.rounds))
    finally:
        fake.terminate()
        fake.wait()
        received = stop_collector(collector)

    report = {
        "benchmark": "router Chat throughput vs telemetry mode (fake provider, zero latency)",
        "exporter": "OTLP/gRPC to a dummy collector process (BatchSpanProcessor defaults)",
        "method": "a router per mode; bursts interleaved, shuffled; median of per-round ratios to off",
        "requests_per_burst": args.requests,
        "rounds": args.rounds,
        "spans_received_by_collector": received["spans"],
        "machine": machine_info(),
        "modes": summarise(results),
        "raw": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["modes"], indent=2))


if __name__ == "__main__":
    main()
