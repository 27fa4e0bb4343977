"""What the embedding service's registry backend costs per call: SQLite (one process) vs Redis (replicas).

One process: the service facade on embedded Chroma, vectors from the test fake (no router, no
network but Redis's loopback), one service per backend on its own Chroma directory. Each round
runs `--calls` sequential single-document upserts and then as many searches against every
service, the services in shuffled order; the wall time of each call is recorded. The medians
show what the shared registry adds to a call (its reads are Redis round trips instead of SQLite
queries on a worker thread); loopback Redis, so a networked Redis adds its round-trip time per
registry read (about six per upserted batch, two per search).

    .venv/bin/python bench/embedding_state_cost.py [--calls 200] [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKENDS = ("sqlite", "redis")


async def measure(
    calls: int, rounds: int, directory: Path, redis_url: str
) -> dict[str, dict[str, list[float]]]:
    from embedding_service.config import EmbeddingConfig
    from embedding_service.domain import DocumentIn
    from embedding_service.service import EmbeddingStoreService
    from testkit.vectors import FakeVectorSource

    services: dict[str, EmbeddingStoreService] = {}
    for backend in BACKENDS:
        state: dict[str, Any] = {"backend": backend}
        if backend == "redis":
            state |= {"redis_url": redis_url, "key_prefix": f"bench-{uuid.uuid4().hex[:8]}"}
        config = EmbeddingConfig.model_validate(
            {
                "chroma": {"mode": "persistent", "path": str(directory / backend / "chroma")},
                "state_path": str(directory / backend / "state.sqlite3"),
                "state": state,
            }
        )
        service = EmbeddingStoreService.open(config, FakeVectorSource())
        await service.check_health()
        await service.upsert("bench", [DocumentIn(f"seed{i}", f"seed document {i}") for i in range(100)])
        services[backend] = service
    samples: dict[str, dict[str, list[float]]] = {b: {"upsert_ms": [], "search_ms": []} for b in BACKENDS}
    try:
        for round_index in range(rounds):
            for backend in random.sample(BACKENDS, len(BACKENDS)):
                service = services[backend]
                for i in range(calls):
                    started = time.perf_counter()
                    await service.upsert(
                        "bench", [DocumentIn(f"r{round_index}-{i}", f"document {i} of the run")]
                    )
                    samples[backend]["upsert_ms"].append((time.perf_counter() - started) * 1000)
                for i in range(calls):
                    started = time.perf_counter()
                    await service.search("bench", f"document {i}", top_k=5)
                    samples[backend]["search_ms"].append((time.perf_counter() - started) * 1000)
    finally:
        for service in services.values():
            await service.aclose()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from testkit.redis_server import RedisServer, _binary

    binary = _binary()
    if binary is None:
        raise SystemExit("redis-server is not installed")
    redis = RedisServer(binary)
    redis.start()
    try:
        with tempfile.TemporaryDirectory(prefix="sekha-embedding-state-") as directory:
            samples = asyncio.run(measure(args.calls, args.rounds, Path(directory), redis.url))
    finally:
        redis.close()
    summary = {
        backend: {
            metric: {
                "median": round(statistics.median(values), 3),
                "p90": round(statistics.quantiles(values, n=10)[-1], 3),
            }
            for metric, values in metrics.items()
        }
        for backend, metrics in samples.items()
    }
    result = {"calls_per_round": args.calls, "rounds": args.rounds, "summary": summary, "samples": samples}
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
