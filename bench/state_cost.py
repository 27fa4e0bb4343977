"""What the router's state backend costs per Chat, in CPU microseconds, all in one process.

The method of `telemetry_cost.py`: the fake provider, one router per backend and the load
generator share one process; each round sends `--requests` Chat calls with 32 in flight to every
router in shuffled order and reads `time.process_time()` (every thread: the SQLite writer thread
included) around each burst. CPU time does not grow when the host steals the CPU, so the
difference between a backend and `memory` is the work that backend adds to a request.

Every router has a daily budget, so each request reserves and settles spend (what a production
config does), and a per-caller rate limit, so each request books the limiter too.

    .venv/bin/python bench/state_cost.py [--requests 2000] [--rounds 7] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.telemetry_cost import interleaved_rounds  # noqa: E402
from bench.tracing_overhead import fake_provider  # noqa: E402

BACKENDS = ("memory", "sqlite")


def router_config(fake_url: str, backend: str, directory: Path) -> Any:
    from router_service.config import RouterConfig

    return RouterConfig.model_validate(
        {
            "server": {"host": "127.0.0.1", "port": 0, "grace_period_s": 1},
            "providers": [fake_provider(fake_url)],
            "state": {"backend": backend, "sqlite_path": str(directory / f"{backend}.sqlite3")},
            "budgets": {"default_caller": {"daily_usd": 1_000_000}},
            "rate_limits": {"default_caller": {"requests_per_minute": 10_000_000}},
        }
    )


async def measure(requests: int, rounds: int, directory: Path) -> dict[str, list[float]]:
    from router_service.server import build_server as build_router
    from sekha import client as c
    from sekha.router.v1 import router_service_pb2 as rt
    from testkit.fake_provider import FakeProvider

    request = rt.ChatRequest(
        messages=[c.user("Say something short about the sea.")], generation=rt.GenerationConfig(max_tokens=32)
    )
    async with FakeProvider(record=False) as fake, contextlib.AsyncExitStack() as stack:
        clients = {}
        for backend in BACKENDS:
            app = await build_router(router_config(fake.base_url, backend, directory))
            stack.push_async_callback(app.stop, 0.5)
            client = c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{app.port}", default_timeout_s=30))
            stack.push_async_callback(client.close)
            for _ in range(300):  # warm-up
                await client.chat(request)
            clients[backend] = client
        return await interleaved_rounds(clients, request, requests, rounds, seed=20261203)


def main(argv: list[str] | None = None) -> None:
    from bench.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="Chat calls per burst")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "state_cost.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("SEKHA_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="sekha-state-cost-") as directory:
        results = asyncio.run(measure(args.requests, args.rounds, Path(directory)))
    summary = {}
    for backend in BACKENDS:
        paired = sorted(run - base for run, base in zip(results[backend], results["memory"], strict=True))
        summary[backend] = {
            "cpu_us_per_request": round(statistics.median(results[backend]), 1),
            "added_us_per_request": round(statistics.median(paired), 1),
            "added_us_range": [round(paired[0], 1), round(paired[-1], 1)],
        }
    report = {
        "benchmark": "CPU per Chat by state backend (budget + rate limit on), all in one process, c=32",
        "requests_per_burst": args.requests,
        "rounds": args.rounds,
        "machine": machine_info(),
        "backends": summary,
        "raw": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
