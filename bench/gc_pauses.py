"""Full (generation 2) garbage collections in a loaded router, with and without `gc.freeze()`.

A full collection walks every tracked object and stops the event loop while it does, so its
length is a latency spike for every request in flight. The services call `gc.freeze()` once
built (`sekha_runtime.server.process.serve_service`), which moves everything made at start-up (modules,
config, clients, the gRPC server) out of the collector's reach. This measures what that buys:
one router in process (the lean path, metrics on, the fake provider at zero latency), warmed up,
then `--requests` Chat calls with 32 in flight, once per setting in fresh processes; every
generation-2 pause is timed with `gc.callbacks`.

    .venv/bin/python bench/gc_pauses.py [--requests 8000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def _measure(freeze: bool, requests: int) -> dict[str, Any]:
    from bench.telemetry_cost import cpu_per_request, router_config, telemetry_for
    from router_service.server import RouterDeps, build_server
    from sekha import client as c
    from sekha.router.v1 import router_service_pb2 as rt
    from testkit.fake_provider import FakeProvider

    pauses: list[float] = []
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses.append(time.perf_counter() - started[0])

    request = rt.ChatRequest(
        messages=[c.user("Say something short about the sea.")], generation=rt.GenerationConfig(max_tokens=32)
    )
    async with FakeProvider() as fake:
        telemetry = telemetry_for("metrics", 0)
        app = await build_server(router_config(fake.base_url), RouterDeps(telemetry=telemetry))
        client = c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{app.port}", default_timeout_s=30))
        for _ in range(200):
            await client.chat(request)
        if freeze:
            gc.collect()
            gc.freeze()
        tracked, frozen = len(gc.get_objects()), gc.get_freeze_count()
        gc.callbacks.append(timed)
        cpu = await cpu_per_request(client, request, requests)
        gc.callbacks.remove(timed)
        await client.close()
        await app.stop(0)
        telemetry.shutdown()
    return {
        "freeze": freeze,
        "tracked_objects": tracked,
        "frozen_objects": frozen,
        "gen2_pauses_ms": [round(p * 1000, 2) for p in pauses],
        "cpu_us_per_request": round(cpu, 1),
    }


def main(argv: list[str] | None = None) -> None:
    from bench.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gc_pauses.json"))
    parser.add_argument("--one", choices=("freeze", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(asyncio.run(_measure(args.one == "freeze", args.requests))))
        return

    runs: list[dict[str, Any]] = []
    for _ in range(args.runs):
        for setting in ("plain", "freeze"):  # each in a fresh process: a freeze cannot be undone
            env = {**os.environ, "SEKHA_LOG_LEVEL": "WARNING"}
            out = subprocess.run(
                [sys.executable, __file__, "--one", setting, "--requests", str(args.requests)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            ).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    summary = {}
    for setting in (False, True):
        mine = [r for r in runs if r["freeze"] is setting]
        pauses = [p for r in mine for p in r["gen2_pauses_ms"]]
        summary["freeze" if setting else "plain"] = {
            "tracked_objects": statistics.median(r["tracked_objects"] for r in mine),
            "gen2_collections": len(pauses),
            "gen2_pause_ms_median": statistics.median(pauses) if pauses else None,
            "gen2_pause_ms_max": max(pauses, default=None),
            "cpu_us_per_request_median": statistics.median(r["cpu_us_per_request"] for r in mine),
        }
    report = {
        "benchmark": "generation-2 GC pauses in a loaded router (in process, c=32), gc.freeze() or not",
        "requests_per_run": args.requests,
        "runs": args.runs,
        "machine": machine_info(),
        "summary": summary,
        "raw": runs,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
