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

Reported per mode and load pattern: throughput, latency, and the router process's CPU time per
request (user + system, every thread, from /proc). On a shared machine the CPU time is the
steadier number: other processes change how long a request waits, not how much CPU it burns.

Modes (each run `--rounds` times, interleaved, median reported):

* off      - no telemetry at all (no interceptor, the gateway's NullObserver);
* metrics  - Prometheus metrics on server.metrics_port, no tracing;
* trace100 - metrics + tracing, parentbased_always_on;
* trace10  - metrics + tracing, parentbased_traceidratio 0.1.

    .venv/bin/python bench/tracing_overhead.py [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
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
    "trace100": {"metrics": True, "sampler": ("parentbased_always_on", None)},
    "trace10": {"metrics": True, "sampler": ("parentbased_traceidratio", "0.1")},
}


# ------------------------------------------------------------------------------ dummy collector


def serve_collector() -> None:
    """Run an OTLP/gRPC collector that counts spans and drops them; prints its port, then on
    SIGTERM the number of spans it received."""
    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = {"spans": 0, "metric_exports": 0}
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

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
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
        [sys.executable, "-m", "tests.fakes.fake_provider", "--port", "0"],
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
        "providers": [
            {
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
            },
        ],
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


async def run_load(port: int, pid: int, requests: int, concurrency: int, warmup: int) -> dict[str, float]:
    from sekha import client as c
    from sekha.router.v1 import router_service_pb2 as rt

    request = rt.ChatRequest(
        messages=[c.user("Say something short about the sea.")], generation=rt.GenerationConfig(max_tokens=32)
    )
    async with c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{port}", default_timeout_s=30)) as router:
        for _ in range(100):
            try:
                if await router.health(timeout_s=1) == "SERVING":
                    break
            except c.SekhaError:
                await asyncio.sleep(0.1)
        for _ in range(warmup):
            await router.chat(request)
        latencies: list[float] = []
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                await router.chat(request)
                latencies.append(time.perf_counter() - started)

        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.1)  # work the requests left behind (span export) is theirs too
        cpu = cpu_seconds(pid) - cpu_before
    latencies.sort()
    return {
        "rps": requests / elapsed,
        "router_cpu_us_per_request": cpu / requests * 1e6,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def measure(mode: str, fake_url: str, collector_port: int, workdir: Path, requests: int) -> dict[str, Any]:
    with router_process(fake_url, mode, collector_port, workdir) as (port, pid):
        sequential = asyncio.run(run_load(port, pid, requests, 1, warmup=200))
        concurrent = asyncio.run(run_load(port, pid, requests, 32, warmup=50))
    return {"sequential": sequential, "concurrency_32": concurrent}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per load pattern and mode")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tracing_overhead.json"))
    parser.add_argument("--serve-collector", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_collector:
        serve_collector()
        return

    fake, fake_url = start_fake()
    collector, collector_port = start_collector()
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_index in range(args.rounds):
                for mode in MODES:  # interleaved, so drift on a shared machine hits every mode alike
                    result = measure(mode, fake_url, collector_port, Path(tmp), args.requests)
                    runs[mode].append(result)
                    print(
                        f"round {round_index + 1} {mode:9s} "
                        f"cpu {result['sequential']['router_cpu_us_per_request']:5.0f} us/req  "
                        f"seq {result['sequential']['rps']:7.0f} rps  "
                        f"c32 {result['concurrency_32']['rps']:7.0f} rps",
                        flush=True,
                    )
    finally:
        fake.terminate()
        fake.wait()
        received = stop_collector(collector)

    summary: dict[str, Any] = {}
    for mode, results in runs.items():
        summary[mode] = {
            pattern: {
                key: round(statistics.median(r[pattern][key] for r in results), 3)
                for key in ("rps", "router_cpu_us_per_request", "p50_ms", "p99_ms")
            }
            for pattern in ("sequential", "concurrency_32")
        }
    for mode in MODES:
        for pattern in ("sequential", "concurrency_32"):
            base = summary["off"][pattern]["rps"]
            change = summary[mode][pattern]["rps"] / base - 1
            summary[mode][pattern]["throughput_vs_off_pct"] = round(100 * change, 1)
            base_cpu = summary["off"][pattern]["router_cpu_us_per_request"]
            cpu_change = summary[mode][pattern]["router_cpu_us_per_request"] / base_cpu - 1
            summary[mode][pattern]["router_cpu_vs_off_pct"] = round(100 * cpu_change, 1)
    report = {
        "benchmark": "router Chat throughput vs telemetry mode (fake provider, zero latency)",
        "exporter": "OTLP/gRPC to a dummy collector process (BatchSpanProcessor defaults)",
        "requests_per_pattern": args.requests,
        "rounds": args.rounds,
        "statistic": "median over rounds",
        "spans_received_by_collector": received["spans"],
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "modes": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["modes"], indent=2))


if __name__ == "__main__":
    main()
