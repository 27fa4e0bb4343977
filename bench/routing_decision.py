"""Micro-benchmark of `Router.decide` for 10 providers x 20 models.

The registry is built from a static model-info table (no LiteLLM lookups, no network). Each
provider's 20 models are spread over the tasks the way a real configuration would list them
(3 embedding, 4 chat_small, 4 chat_smart, 4 chat_large, 3 vision, 2 audio), chat_large models
also serve chat_smart, one model per provider has no known price, and priorities differ per
provider with two providers sharing one, so the cost tie-break runs. The input token count
changes on every call (a fixed cycle of request sizes), so nothing is served from a cache.

Each scenario is timed call by call with `time.perf_counter_ns` after a warm-up; the results
(median, p90, p99 in microseconds) are printed and written to bench/results/routing_decision.json.

    .venv/bin/python -m bench.routing_decision [--quick] [--iterations N] [--output PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from router_service.breaker import BreakerRegistry
from router_service.config import RouterConfig
from router_service.domain import Capability, Price, RoutingPreferences, Task
from router_service.model_registry import ModelInfo, Registry, StaticModelInfo
from router_service.pricing import PriceTable
from router_service.routing import Router

PROVIDERS = 10
MODELS_PER_PROVIDER = 20
DEFAULT_ITERATIONS = 20_000
QUICK_ITERATIONS = 2_000
WARMUP = 2_000
RESULT_PATH = Path(__file__).parent / "results" / "routing_decision.json"

# Tasks of the 20 models of one provider, in order.
_MODEL_TASKS: list[list[str]] = (
    [["embedding"]] * 3
    + [["chat_small"]] * 4
    + [["chat_smart"]] * 4
    + [["chat_large", "chat_smart"]] * 4
    + [["vision", "chat_smart"]] * 3
    + [["audio"]] * 2
)


@dataclass(frozen=True)
class Scenario:
    name: str
    task: Task
    prefs: RoutingPreferences
    has_images: bool = False


def build_router() -> tuple[Router, Registry, RouterConfig]:
    providers = []
    table: dict[str, ModelInfo] = {}
    rng = random.Random(7)
    for p in range(PROVIDERS):
        models = []
        for m, tasks in enumerate(_MODEL_TASKS):
            model_id = f"model-{p:02d}-{m:02d}"
            entry: dict[str, object] = {"id": model_id, "tasks": tasks}
            if "embedding" in tasks:
                entry["embedding_dimension"] = 384 * (1 + m % 3)
            models.append(entry)
            capabilities = {Capability.TOOLS}
            if "vision" in tasks:
                capabilities.add(Capability.VISION)
            price = None
            if m != 10:  # one model per provider with no known price
                price = Price(round(rng.uniform(0.05, 10), 3), round(rng.uniform(0.1, 30), 3))
            table[f"openai/{model_id}"] = ModelInfo(
                context_window=rng.choice([8192, 32768, 128000, 200000]),
                capabilities=frozenset(capabilities),
                price=price,
            )
        providers.append(
            {
                "id": f"provider-{p:02d}",
                "type": "openai",
                "priority": 10 + 10 * (p // 2) if p < 2 else 10 + 10 * p,  # providers 0 and 1 tie
                "models": models,
            }
        )
    source = StaticModelInfo(table)
    config = RouterConfig.model_validate({"providers": providers}, context={"model_info": source})
    registry = Registry.from_config(config, source)
    breakers = BreakerRegistry.from_config(config)
    return Router(registry, PriceTable(registry), breakers), registry, config


def scenarios() -> list[Scenario]:
    return [
        Scenario("chat_smart", Task.CHAT_SMART, RoutingPreferences()),
        Scenario("chat_smart_max_cost", Task.CHAT_SMART, RoutingPreferences(max_cost_usd=0.05)),
        # Worst case: a tight ceiling rejects 108 of 110 models, so every priority group is walked.
        Scenario("chat_smart_full_walk", Task.CHAT_SMART, RoutingPreferences(max_cost_usd=0.003)),
        Scenario("chat_smart_preferred", Task.CHAT_SMART, RoutingPreferences(preferred_model="model-05-12")),
        Scenario("vision_with_images", Task.VISION, RoutingPreferences(), has_images=True),
        Scenario("embedding", Task.EMBEDDING, RoutingPreferences()),
    ]


def time_scenario(
    router: Router, registry: Registry, scenario: Scenario, iterations: int
) -> dict[str, float | int]:
    input_sizes = [137, 512, 1024, 2048, 3500, 64, 777, 4096, 256, 1500]
    output_tokens = 512
    decide = router.decide
    task, prefs, images = scenario.task, scenario.prefs, scenario.has_images
    for i in range(WARMUP):
        decide(task, prefs, input_sizes[i % 10], output_tokens, images)
    samples = [0] * iterations
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()  # a collection landing in one sample says nothing about decide()
    try:
        for i in range(iterations):
            tokens = input_sizes[i % 10]
            start = clock()
            decide(task, prefs, tokens, output_tokens, images)
            samples[i] = clock() - start
    finally:
        gc.enable()
    samples.sort()
    decision = decide(task, prefs, 1024, output_tokens, images)

    def pct(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))] / 1000

    return {
        "median_us": round(statistics.median(samples) / 1000, 3),
        "p90_us": round(pct(0.90), 3),
        "p99_us": round(pct(0.99), 3),
        "min_us": round(samples[0] / 1000, 3),
        "models_for_task": len(registry.for_task(task)),
        "candidates_returned": len(decision.candidates),
        "rejected": len(decision.rejected),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ITERATIONS} iterations per scenario")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULT_PATH)
    args = parser.parse_args(argv)
    iterations = args.iterations or (QUICK_ITERATIONS if args.quick else DEFAULT_ITERATIONS)

    router, registry, config = build_router()
    results = {s.name: time_scenario(router, registry, s, iterations) for s in scenarios()}
    report = {
        "benchmark": "routing_decision",
        "method": (
            f"Router.decide() timed per call with time.perf_counter_ns, {WARMUP} warm-up calls, "
            "GC disabled while sampling; static model info (no network); input tokens cycle "
            "through 10 request sizes, 512 output tokens; breakers all closed"
        ),
        "providers": PROVIDERS,
        "models_per_provider": MODELS_PER_PROVIDER,
        "max_candidates": config.routing.max_candidates,
        "iterations": iterations,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "scenarios": results,
        "median_us": results["chat_smart"]["median_us"],
        "p90_us": results["chat_smart"]["p90_us"],
        "p99_us": results["chat_smart"]["p99_us"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    width = max(len(name) for name in results)
    print(f"Router.decide(), {PROVIDERS} providers x {MODELS_PER_PROVIDER} models, {iterations} iterations")
    for name, r in results.items():
        print(
            f"  {name:<{width}}  median {r['median_us']:7.2f} us  p90 {r['p90_us']:7.2f} us  "
            f"p99 {r['p99_us']:7.2f} us  ({r['models_for_task']} models for the task, "
            f"{r['candidates_returned']} candidates)"
        )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
