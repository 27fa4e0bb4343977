"""CPU cost per provider call: the lean OpenAI-compatible client vs the LiteLLM client.

The fake provider runs in its own process, so ``time.process_time()`` here counts only the
client side: building the request, HTTP, parsing, and (for LiteLLM) its logging and
bookkeeping, including background tasks it leaves on the loop. Calls are sequential, so the
numbers are per-call costs, not throughput.

    .venv/bin/python bench/provider_overhead.py [--calls 200] [--out bench/results/provider_overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router_service.domain import ChatMessage, ChatRequest, ContentPart, Role  # noqa: E402
from router_service.providers import ProviderClient, ProviderSpec, make_provider  # noqa: E402

REQUEST = ChatRequest(
    messages=(
        ChatMessage(Role.SYSTEM, (ContentPart(text="You are terse."),)),
        ChatMessage(Role.USER, (ContentPart(text="Say something short about the sea, please."),)),
    )
)


def start_fake() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit.fake_provider", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    banner = process.stdout.readline()
    return process, banner.strip().rsplit(" ", 1)[-1]


async def measure(call: Callable[[], Awaitable[Any]], calls: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        await call()
    await asyncio.sleep(0.2)  # let warm-up background work (LiteLLM logging) finish
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await call()
    wall = time.perf_counter() - wall_start
    await asyncio.sleep(0.2)  # background work the calls left behind is part of their cost
    cpu = time.process_time() - cpu_start
    return {
        "cpu_ms_per_call": round(cpu / calls * 1000, 3),
        "wall_ms_per_call": round(wall / calls * 1000, 3),
    }


async def bench_client(
    client: ProviderClient, model: str, litellm_model: str, embed_model: str, calls: int, warmup: int
) -> dict[str, dict[str, float]]:
    async def chat() -> None:
        await client.chat(model, litellm_model, REQUEST, 64, 10.0)

    async def stream() -> None:
        async with contextlib.aclosing(client.stream_chat(model, litellm_model, REQUEST, 64, 10.0)) as events:
            async for _ in events:
                pass

    async def embed() -> None:
        prefix = litellm_model.split("/", 1)[0]
        await client.embed(embed_model, f"{prefix}/{embed_model}", ["a short text to embed"], 10.0)

    return {
        "chat": await measure(chat, calls, warmup),
        "stream_chat": await measure(stream, calls, warmup),
        "embed": await measure(embed, calls, warmup),
    }


async def main_async(calls: int, warmup: int) -> dict[str, Any]:
    process, base_url = start_fake()
    try:
        setups = {
            "lean_openai": (ProviderSpec("lean", "openai_compatible", f"{base_url}/v1"), "openai/m"),
            "litellm_openai": (
                ProviderSpec("lite", "openai_compatible", f"{base_url}/v1", transport="litellm"),
                "openai/m",
            ),
            "litellm_ollama": (
                ProviderSpec("lite-ollama", "ollama", base_url, transport="litellm"),
                "ollama/m",
            ),
        }
        results: dict[str, Any] = {}
        for name, (spec, litellm_model) in setups.items():
            client = make_provider(spec)
            try:
                results[name] = await bench_client(client, "m", litellm_model, "emb-384", calls, warmup)
            finally:
                await client.aclose()
    finally:
        process.terminate()
        process.wait(timeout=10)
    lean, lite = results["lean_openai"], results["litellm_openai"]
    return {
        "benchmark": "provider client CPU per call (fake provider in a separate process, sequential calls)",
        "calls_per_measurement": calls,
        "warmup_calls": warmup,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "event_loop": "asyncio (default)",
        "results": results,
        "litellm_minus_lean_cpu_ms": {
            op: round(lite[op]["cpu_ms_per_call"] - lean[op]["cpu_ms_per_call"], 3) for op in lean
        },
        "litellm_over_lean_cpu_ratio": {
            op: round(lite[op]["cpu_ms_per_call"] / lean[op]["cpu_ms_per_call"], 1) for op in lean
        },
        "note": "litellm_ollama embed goes to Ollama's /api/embed natively (LiteLLM's Ollama embedding "
        "call sends no key and takes no timeout), so it measures the lean HTTP code, not LiteLLM.",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "provider_overhead.json")
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    report = asyncio.run(main_async(args.calls, args.warmup))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
