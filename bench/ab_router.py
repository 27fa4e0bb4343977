"""A/B of two router checkouts: server CPU per request, interleaved, on one machine at one time.

`make bench` compares targets one after another, and on a shared 2-core VM the CPU a request
costs drifts by 10-20% between minutes, which is as large as the change being measured when a
patch is evaluated. Here both routers run side by side with the same generated config (the
gateway section's `router` target: SQLite state, a budget and a rate limit; or
`--state memory`), against the same fake provider, driven by the same load generator in
`--rounds` rounds; each round measures every router once, in shuffled order, for `--requests`
calls at `--concurrency`. CPU is the router process's utime + stime around its burst. The
report gives each side's median CPU per request (per text chunk for streams) and the median of
the per-round B/A ratios, so the drift between rounds cancels out.

    .venv/bin/python -m bench.ab_router --a /path/to/old/checkout [--b .] [--workload chat]
        [--concurrency 8] [--requests 1500] [--rounds 7] [--state sqlite] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import targets
from bench.compare import _job
from bench.machine import machine_info
from bench.procs import LoadGenProcess, cpu_seconds, free_port

ROOT = Path(__file__).resolve().parents[1]


def _config(fake_url: str, state: str, directory: Path, name: str) -> dict[str, Any]:
    config = targets.router_config(free_port(), [targets.fake_provider_entry(fake_url)])
    config["state"] = {"backend": state, "sqlite_path": str(directory / f"{name}.sqlite3")}
    config["budgets"] = {"default_caller": {"daily_usd": 1_000_000}}
    config["rate_limits"] = {"default_caller": {"requests_per_minute": 10_000_000}}
    return config


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sources = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    with tempfile.TemporaryDirectory(prefix="sekha-ab-") as work:
        work_dir = Path(work)
        fake, fake_url = targets.start_fake(work_dir, 0.0)
        loadgen = LoadGenProcess(work_dir)
        routers: dict[str, targets.Target] = {}
        try:
            for side, source in sources.items():
                config = _config(fake_url, args.state, work_dir, side)
                routers[side] = targets.start_router(work_dir, config, name=f"router_{side}", source=source)
            jobs = {side: _job(router, args.workload, args.concurrency) for side, router in routers.items()}
            for job in jobs.values():  # warm-up, not measured
                loadgen.run(**job, requests=max(300, 4 * args.concurrency), max_duration_s=5.0)
            samples: dict[str, list[float]] = {side: [] for side in routers}
            order = list(routers)
            rng = random.Random(20261203)
            for _ in range(args.rounds):
                rng.shuffle(order)
                for side in order:
                    pid = routers[side].process.pid
                    before = cpu_seconds(pid)
                    result = loadgen.run(**jobs[side], requests=args.requests, max_duration_s=60.0)
                    used = cpu_seconds(pid) - before
                    units = (result.get("chunks") or 0) if args.workload == "stream" else result["ok"]
                    if result["errors"] or not units:
                        raise RuntimeError(f"router {side}: {result['errors']} errors, {units} units")
                    samples[side].append(used / units * 1000)
        finally:
            loadgen.close()
            for router in routers.values():
                router.process.stop()
            fake.stop()
    ratios = sorted(b / a for a, b in zip(samples["A"], samples["B"], strict=True))
    unit = "chunk" if args.workload == "stream" else "request"
    return {
        "benchmark": f"router A/B, server CPU ms per {unit}, interleaved rounds",
        "a": str(sources["A"]),
        "b": str(sources["B"]),
        "workload": args.workload,
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "state": args.state,
        f"a_cpu_ms_per_{unit}_median": round(statistics.median(samples["A"]), 4),
        f"b_cpu_ms_per_{unit}_median": round(statistics.median(samples["B"]), 4),
        "b_over_a_median": round(statistics.median(ratios), 3),
        "b_over_a_range": [round(ratios[0], 3), round(ratios[-1], 3)],
        "raw_ms": samples,
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", required=True, help="checkout A (e.g. a git worktree of the old commit)")
    parser.add_argument("--b", default=str(ROOT), help="checkout B (default: this one)")
    parser.add_argument("--workload", choices=("chat", "stream", "embed"), default="chat")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--state", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument("--output", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    report = measure(args)
    text = json.dumps(report, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k not in ("raw_ms", "machine")}, indent=2))


if __name__ == "__main__":
    main()
