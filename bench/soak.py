"""Soak: steady Chat load through an outage of the primary provider, and whether anything leaks.

    python -m bench.soak --rps 200 --seconds 300      # the long form, by hand
    python -m bench.soak --quick                      # under a minute (CI runs test_soak_quick.py)

An open-loop generator sends Chat at a fixed rate for the whole run to a router (built in this
process with `build_server`, on loopback, its spend ledger in SQLite as by default) serving two
providers of the fake provider: `primary`
(priority 10) and `backup` (priority 20). For the middle third of the run the primary answers
every request with HTTP 503, then it is healthy again. The harness reports what callers saw
(errors by status, latency percentiles per phase), how the breaker kept traffic off the dead
provider (calls started and requests arrived while its breaker was open, from the breaker's
transitions against the provider call log and the fake's request log), how long traffic took to
come back after the outage, and resources sampled before and after the run at rest: RSS, open
file descriptors and asyncio tasks. Everything is bounded: the number of requests (rate x time)
and the requests in flight (more are shed and counted, never queued without limit).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from bench.machine import machine_info
from bench.stats import summarize_ms
from router_service.breaker import BreakerState
from router_service.server import RouterDeps, build_providers, build_server
from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider, RecordedRequest
from testkit.harness import chat_model, openai_provider, router_config

RESULTS = Path(__file__).resolve().parent / "results"
HEALTHY = Behaviour(text="ok", usage=(12, 2), latency_s=0.002)
DEAD = Behaviour(status=503)


@dataclasses.dataclass(frozen=True)
class SoakConfig:
    rps: float = 200.0
    seconds: float = 300.0
    outage_start: float = 1 / 3  # fractions of the run
    outage_end: float = 2 / 3
    reset_timeout_s: float = 5.0
    failure_threshold: int = 5
    max_in_flight: int = 1000
    warmup_s: float = 2.0
    settle_s: float = 1.0
    timeout_s: float = 10.0


class _CompactLogFake(FakeProvider):
    """The fake provider, keeping only (arrival time, model) per request so the log costs ~16 bytes."""

    def __init__(self) -> None:
        super().__init__(default=HEALTHY, record=False)
        self.arrivals: dict[str, array[float]] = {}

    def _log(self, request: Any, body: Any) -> RecordedRequest:
        record = super()._log(request, body)
        self.arrivals.setdefault(record.model or "", array("d")).append(record.time)
        return record


class _TimedProvider:
    """A provider client that records when each call started and ended, and whether it failed."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.starts: array[float] = array("d")
        self.ends: array[float] = array("d")
        self.ok = bytearray()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _finish(self, ok: bool) -> None:
        self.ends.append(time.monotonic())
        self.ok.append(1 if ok else 0)

    async def chat(self, *args: Any, **kwargs: Any) -> Any:
        self.starts.append(time.monotonic())
        try:
            reply = await self._inner.chat(*args, **kwargs)
        except BaseException:
            self._finish(False)
            raise
        self._finish(True)
        return reply

    async def stream_chat(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        self.starts.append(time.monotonic())
        ok = False
        try:
            async for event in self._inner.stream_chat(*args, **kwargs):
                yield event
            ok = True
        finally:
            self._finish(ok)


def _socket_inodes_with_port(port: int) -> set[str]:
    """Inodes of this process's TCP sockets with `port` at either end (from /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            ports = {int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)}
            if port in ports:
                inodes.add(fields[9])
    return inodes


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _resources(provider_port: int) -> dict[str, Any]:
    """RSS, fds and tasks; the provider connection pool is counted apart.

    Keep-alive connections to the providers (bounded by the HTTP pool's limit) and the fake
    provider's per-connection handler tasks vary with the peak concurrency a run reached; they are
    reported separately so the other fds and tasks can be compared exactly.
    """
    gc.collect()
    pool_inodes = _socket_inodes_with_port(provider_port)
    pool_fds = other_fds = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed between listdir and readlink (the listdir fd itself)
        if target.startswith("socket:[") and target[8:-1] in pool_inodes:
            pool_fds += 1
        else:
            other_fds += 1
    tasks = asyncio.all_tasks()
    fake_handlers = sum(1 for t in tasks if t.get_coro().__qualname__ == "RequestHandler.start")
    return {
        "rss_mib": _rss_mib(),
        "open_fds": other_fds,
        "provider_pool_fds": pool_fds,
        "asyncio_tasks": len(tasks) - fake_handlers,
        "fake_provider_connection_tasks": fake_handlers,
    }


def _open_windows(transitions: Sequence[tuple[float, BreakerState]], end: float) -> list[tuple[float, float]]:
    """[opened, next transition) for every time the breaker opened."""
    windows = []
    for index, (at, state) in enumerate(transitions):
        if state is BreakerState.OPEN:
            until = transitions[index + 1][0] if index + 1 < len(transitions) else end
            windows.append((at, until))
    return windows


def _inside(times: Sequence[float], windows: Sequence[tuple[float, float]]) -> int:
    return sum(1 for t in times for start, until in windows if start <= t < until)


async def run_soak(config: SoakConfig) -> dict[str, Any]:
    """Run one soak in this event loop and return the report (see the module docstring)."""
    # SQLite, the default backend: the spend ledger lives on disk, as in production. (The memory
    # backend keeps the last 100k ledger rows in RAM by design, which would read as growth here.)
    with tempfile.TemporaryDirectory(prefix="sekha-soak-") as state_dir:
        async with _CompactLogFake() as fake:
            return await _soak(config, fake, str(Path(state_dir) / "state.sqlite3"))


async def _soak(config: SoakConfig, fake: _CompactLogFake, state_path: str) -> dict[str, Any]:
    router_cfg = router_config(
        [
            openai_provider(
                "primary",
                fake.base_url,
                [chat_model("alpha")],
                priority=10,
                transport="native",
                timeout_s=5,
            ),
            openai_provider(
                "backup",
                fake.base_url,
                [chat_model("beta")],
                priority=20,
                transport="native",
                timeout_s=5,
            ),
        ],
        server={"max_concurrent_rpcs": config.max_in_flight + 64},
        state={"backend": "sqlite", "sqlite_path": state_path},
        circuit_breaker={
            "failure_threshold": config.failure_threshold,
            "window_size": 20,
            "minimum_calls": 10,
            "reset_timeout_s": config.reset_timeout_s,
            "half_open_max_probes": 1,
        },
    )
    providers = {pid: _TimedProvider(p) for pid, p in build_providers(router_cfg).items()}
    app = await build_server(router_cfg, RouterDeps(providers=providers))
    transitions: list[tuple[float, BreakerState]] = []
    app.breakers.add_listener(
        lambda provider_id, old, new: (
            transitions.append((time.monotonic(), new)) if provider_id == "primary" else None
        )
    )
    client = c.RouterClient(c.ConnectionConfig(f"127.0.0.1:{app.port}", default_timeout_s=config.timeout_s))
    request = rt.ChatRequest(messages=[c.user("soak")], generation=rt.GenerationConfig(max_tokens=16))
    try:
        return await _drive(config, fake, providers, transitions, app, client, request)
    finally:
        await client.close()
        await app.stop(0.5)


async def _drive(
    config: SoakConfig,
    fake: _CompactLogFake,
    providers: dict[str, _TimedProvider],
    transitions: list[tuple[float, BreakerState]],
    app: Any,
    client: c.RouterClient,
    request: rt.ChatRequest,
) -> dict[str, Any]:
    in_flight = 0
    idle = asyncio.Event()
    idle.set()
    latencies: dict[str, array[float]] = {}
    errors: Counter[str] = Counter()
    shed = 0
    phase = "warmup"
    tasks: set[asyncio.Task[None]] = set()

    async def one(label: str) -> None:
        nonlocal in_flight
        started = time.monotonic()
        try:
            await client.chat(request)
        except c.SekhaError as exc:
            errors[f"{label}:{exc.code.name}"] += 1
        else:
            latencies.setdefault(label, array("d")).append(time.monotonic() - started)
        finally:
            in_flight -= 1
            if in_flight == 0:
                idle.set()

    async def load(seconds: float, on_tick: Any = None) -> int:
        nonlocal in_flight, shed
        begin = time.monotonic()
        count = int(seconds * config.rps)
        for i in range(count):
            delay = begin + i / config.rps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if on_tick is not None:
                on_tick(time.monotonic() - begin)
            if in_flight >= config.max_in_flight:
                shed += 1
                continue
            in_flight += 1
            idle.clear()
            task = asyncio.create_task(one(phase))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return count

    async def rest() -> None:
        await idle.wait()
        await asyncio.sleep(config.settle_s)

    await load(config.warmup_s)
    await rest()
    before = _resources(fake.port)
    primary = providers["primary"]
    calls_before = len(primary.starts)
    arrivals_before = len(fake.arrivals.get("alpha", ()))
    errors.clear()

    outage_at = config.seconds * config.outage_start
    restore_at = config.seconds * config.outage_end
    marks: dict[str, float] = {}

    rss_samples: list[tuple[float, float]] = []
    sample_every = config.seconds / 20

    def schedule(elapsed: float) -> None:
        nonlocal phase
        if elapsed >= len(rss_samples) * sample_every:
            rss_samples.append((round(elapsed, 1), _rss_mib()))  # the trend shows a leak, one delta may not
        if phase == "healthy" and elapsed >= outage_at:
            fake.set_default(DEAD, model="alpha")
            marks["outage"] = time.monotonic()
            phase = "outage"
        elif phase == "outage" and elapsed >= restore_at:
            fake.set_default(HEALTHY, model="alpha")
            marks["restore"] = time.monotonic()
            phase = "recovered"

    phase = "healthy"
    run_start = time.monotonic()
    sent = await load(config.seconds, schedule)
    await rest()
    run_end = time.monotonic()
    after = _resources(fake.port)

    starts = primary.starts[calls_before:]
    ends = primary.ends[calls_before:]
    oks = primary.ok[calls_before:]
    windows = _open_windows([t for t in transitions if t[0] >= run_start], run_end)
    arrivals = fake.arrivals.get("alpha", array("d"))[arrivals_before:]
    in_flight_at_open = sum(
        1 for start, end in zip(starts, ends, strict=False) for opened, _ in windows if start < opened <= end
    )
    restore = marks.get("restore", run_end)
    first_primary_ok = next(
        (end for start, end, ok in zip(starts, ends, oks, strict=False) if ok and start >= restore), None
    )
    closed_again = next(
        (at for at, state in transitions if state is BreakerState.CLOSED and at >= restore), None
    )
    all_latencies = [x for label, values in latencies.items() if label != "warmup" for x in values]
    ok_count = len(all_latencies)
    error_count = sum(errors.values())
    return {
        "benchmark": "soak",
        "config": dataclasses.asdict(config),
        "requests": {
            "scheduled": sent,
            "ok": ok_count,
            "errors": error_count,
            "errors_by_phase_and_code": dict(errors),
            "shed_over_max_in_flight": shed,
            "achieved_rps": round((ok_count + error_count) / (run_end - run_start), 1),
        },
        "latency_ms": {
            "all": summarize_ms(all_latencies),
            **{label: summarize_ms(values) for label, values in latencies.items() if label != "warmup"},
        },
        "dead_provider": {
            "outage_s": round(restore - marks.get("outage", restore), 3),
            "primary_calls_during_outage": sum(
                1 for start in starts if marks.get("outage", run_end) <= start < restore
            ),
            "breaker_open_windows_s": [
                [round(a - run_start, 3), round(b - run_start, 3)] for a, b in windows
            ],
            "calls_started_while_open": _inside(starts, windows),
            "requests_arrived_while_open": _inside(arrivals, windows),
            "calls_in_flight_when_it_opened": in_flight_at_open,
        },
        "recovery": {
            "first_primary_success_after_restore_s": None
            if first_primary_ok is None
            else round(first_primary_ok - restore, 3),
            "breaker_closed_after_restore_s": None
            if closed_again is None
            else round(closed_again - restore, 3),
            "final_primary_breaker": str(app.breakers.get("primary").state),
        },
        "resources": {
            "before": before,
            "after": after,
            "delta": {key: round(after[key] - before[key], 1) for key in before},
            "rss_mib_during_run": [list(sample) for sample in rss_samples],
        },
    }


QUICK = SoakConfig(rps=40, seconds=15, reset_timeout_s=1.0, warmup_s=1.0, settle_s=0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rps", type=float, default=SoakConfig.rps)
    parser.add_argument("--seconds", type=float, default=SoakConfig.seconds)
    parser.add_argument("--reset-timeout", type=float, default=SoakConfig.reset_timeout_s)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.rps:g} rps for {QUICK.seconds:g} s")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/soak[-quick].json)")
    args = parser.parse_args(argv)
    if args.quick:
        config = QUICK
    else:
        config = SoakConfig(rps=args.rps, seconds=args.seconds, reset_timeout_s=args.reset_timeout)
    report = asyncio.run(run_soak(config))
    command = "python -m bench.soak " + (
        "--quick" if args.quick else f"--rps {config.rps:g} --seconds {config.seconds:g}"
    )
    report = {"command": command, **report, "machine": machine_info()}
    out = args.out or RESULTS / ("soak-quick.json" if args.quick else "soak.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: report[k] for k in ("requests", "latency_ms", "dead_provider", "recovery", "resources")},
            indent=2,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
