"""Recovery and failure-path measurements of the Router (issue 15 §1-§3), in one process.

    python -m bench.recovery [--only NAME]

Each scenario runs a real router (`build_server`, port 0) against the fake provider on
loopback and prints one JSON line:

* ``lone_provider_back``: a lone provider refuses connections until its breaker opens; then
  it starts listening. Seconds from "listening" to the first answered Chat, polling every
  50 ms with the default breaker settings (before: a fixed 30 s reset timeout; now 2 s doubling).
* ``hung_provider``: one candidate, ``timeout_s: 2``, the provider never answers. Seconds
  until the caller gets its error (before: three attempts, about 6.4 s).
* ``dead_provider_log``: 600 Chats at concurrency 30, the first candidate always 503 (its
  breaker never opens), the second answers. Provider failures vs. log lines written for them.
* ``chat_latency``: 600 sequential Chats that succeed at once; median and p99 client-side
  latency in ms (the attempt loop's cost on the success path).

Timing numbers are from whatever machine runs this; see bench/README for the machine notes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
from typing import Any

from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from testkit.fake_provider import Behaviour, FakeProvider
from testkit.harness import chat_model, openai_provider, router_config, running_router
from testkit.logs import capture_json_logs


def _ask() -> rt.ChatRequest:
    return rt.ChatRequest(messages=[c.user("hello")], generation=rt.GenerationConfig(max_tokens=8))


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def lone_provider_back() -> dict[str, Any]:
    port = _unused_port()
    config = router_config(
        [openai_provider("lonely", f"http://127.0.0.1:{port}", [chat_model("alpha")], transport="native")]
    )
    async with running_router(config) as (_, router):
        failures = 0
        while True:  # until the breaker refuses the provider without calling it
            try:
                await router.chat(_ask())
            except c.UnavailableError as exc:
                failures += 1
                if "breaker open" in exc.message or "breaker_open" in exc.details.metadata.get(
                    "attempts", ""
                ):
                    break
        async with FakeProvider(port=port):
            started = time.perf_counter()
            while True:
                try:
                    await router.chat(_ask())
                    break
                except c.UnavailableError:
                    await asyncio.sleep(0.05)
            back_s = time.perf_counter() - started
    return {"scenario": "lone_provider_back", "failed_requests_before_open": failures, "back_after_s": back_s}


async def hung_provider() -> dict[str, Any]:
    async with FakeProvider(default=Behaviour(latency_s=60.0)) as fake:
        config = router_config(
            [openai_provider("hung", fake.base_url, [chat_model("alpha")], timeout_s=2, transport="native")]
        )
        async with running_router(config) as (_, router):
            started = time.perf_counter()
            try:
                await router.chat(_ask())
            except c.SekhaError as exc:
                error = f"{exc.code.name}: {exc.message}"
            waited = time.perf_counter() - started
            calls = fake.count("/v1/chat/completions")
    return {"scenario": "hung_provider", "caller_waited_s": waited, "provider_calls": calls, "error": error}


async def dead_provider_log(requests: int = 600, concurrency: int = 30) -> dict[str, Any]:
    never_open = {"failure_threshold": 100_000, "window_size": 1000, "minimum_calls": 1000}
    async with FakeProvider() as fake:
        fake.set_default(Behaviour(status=503), model="alpha")
        config = router_config(
            [
                openai_provider(
                    "dead", fake.base_url, [chat_model("alpha")], priority=10, transport="native"
                ),
                openai_provider(
                    "alive", fake.base_url, [chat_model("beta")], priority=20, transport="native"
                ),
            ],
            circuit_breaker=never_open,
        )
        gate = asyncio.Semaphore(concurrency)

        async def one(router: c.RouterClient) -> None:
            async with gate:
                await router.chat(_ask())

        with capture_json_logs() as log:
            started = time.perf_counter()
            async with running_router(config) as (_, router):
                await asyncio.gather(*(one(router) for _ in range(requests)))
            elapsed = time.perf_counter() - started
        lines = [e for e in log.entries() if e.get("event") == "provider_attempt_failed"]
        failures = fake.count("/v1/chat/completions", "alpha")
    return {
        "scenario": "dead_provider_log",
        "seconds": elapsed,
        "provider_failures": failures,
        "log_lines": len(lines),
        "failures_accounted": sum(e.get("suppressed", 1) for e in lines),
    }


async def chat_latency(requests: int = 600) -> dict[str, Any]:
    async with FakeProvider() as fake:
        config = router_config(
            [openai_provider("p", fake.base_url, [chat_model("alpha")], transport="native")]
        )
        async with running_router(config) as (_, router):
            for _ in range(50):  # warm-up: connections, first-call imports
                await router.chat(_ask())
            samples = []
            for _ in range(requests):
                started = time.perf_counter()
                await router.chat(_ask())
                samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "scenario": "chat_latency",
        "requests": requests,
        "median_ms": statistics.median(samples),
        "p99_ms": samples[int(len(samples) * 0.99) - 1],
    }


SCENARIOS = {
    "lone_provider_back": lone_provider_back,
    "hung_provider": hung_provider,
    "dead_provider_log": dead_provider_log,
    "chat_latency": chat_latency,
}


async def main(only: str | None) -> None:
    for name, scenario in SCENARIOS.items():
        if only is None or name == only:
            print(json.dumps(await scenario()), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=sorted(SCENARIOS))
    asyncio.run(main(parser.parse_args().only))
