"""Embedding service domain over a real embedded Chroma: ingest rate and search latency.

The service (``EmbeddingStoreService`` with its ``ChromaStore`` and ``SqliteRegistry``) runs
unchanged; only its vector source is replaced by :class:`PrecomputedVectors`, which answers
from random unit vectors generated before the clock starts, so the numbers are the service's
and Chroma's (validation, registry, pipelined batch writes, HNSW indexing, query, fusion),
not a model's.

* ingest: documents are upserted in requests of ``max_documents_per_request`` (1000) into one
  base until each checkpoint size is reached (10k and 100k by default); the rate of each
  segment is reported. A time budget bounds the whole ingest: when it runs out, the sizes
  reached are reported and the rest is marked not reached.
* search: at every checkpoint, sequential ``search`` calls (top 10) with random query vectors,
  after a few warm-up queries; p50/p90/p99.
* cross-dimension: a second base holds the same documents from a 384-d and a 768-d model
  (two collections); a search over both (embedded twice, queried concurrently, fused with
  RRF) is compared with a search restricted to the 384-d collection.

    python -m bench.embedding_store [--quick] [--sizes 10000,100000] [--max-ingest-s 1200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import machine_info
from bench.stats import method_text, summarize_ms
from embedding_service.config import EmbeddingConfig
from embedding_service.domain import DocumentIn
from embedding_service.service import EmbeddingStoreService
from embedding_service.vectors import EmbeddedBatch

RESULTS = Path(__file__).parent / "results"
SMALL_MODEL = "bench/mini-384"
LARGE_MODEL = "bench/base-768"
MODELS = {SMALL_MODEL: 384, LARGE_MODEL: 768}
TOP_K = 10


class PrecomputedVectors:
    """A VectorSource answering from random unit vectors made ahead of time.

    Document ``i`` (text ``d<i> ...``) gets row ``i`` of its model's matrix; query ``j`` (text
    ``q<j>``) row ``j`` of the query matrix. Equal texts always get equal vectors.
    """

    def __init__(self, documents: int, queries: int, models: dict[str, int], seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.models = models
        self._docs: dict[str, np.ndarray] = {}
        self._queries: dict[str, np.ndarray] = {}
        for name, dimension in models.items():
            self._docs[name] = _unit_rows(rng, documents, dimension)
            self._queries[name] = _unit_rows(rng, queries, dimension)

    def resolve(self, model: str | None) -> str:
        if model is None:
            return SMALL_MODEL
        for name in self.models:
            if model in (name, name.split("/", 1)[1]):
                return name
        raise KeyError(model)

    async def embed(self, texts: Sequence[str], model: str | None) -> EmbeddedBatch:
        name = self.resolve(model)
        rows = [int(text[1 : text.index(" ")] if " " in text else text[1:]) for text in texts]
        source = self._queries[name] if texts and texts[0].startswith("q") else self._docs[name]
        return EmbeddedBatch(vectors=source[rows].tolist(), dimension=self.models[name], model=name)


def _unit_rows(rng: np.random.Generator, count: int, dimension: int) -> np.ndarray:
    rows = rng.standard_normal((count, dimension), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _documents(start: int, stop: int) -> list[DocumentIn]:
    return [
        DocumentIn(id=f"doc-{i}", text=f"d{i} benchmark document number {i}", metadata={"n": i % 100})
        for i in range(start, stop)
    ]


async def _ingest(
    service: EmbeddingStoreService,
    base: str,
    start: int,
    stop: int,
    batch: int,
    model: str | None,
    deadline: float,
) -> tuple[int, float]:
    """Upsert documents [start, stop) in requests of ``batch``; returns (documents written, seconds)."""
    began = time.perf_counter()
    written = start
    for first in range(start, stop, batch):
        if time.perf_counter() > deadline:
            break
        last = min(first + batch, stop)
        await service.upsert(base, _documents(first, last), model=model)
        written = last
    return written - start, time.perf_counter() - began


async def _search_latency(
    service: EmbeddingStoreService, base: str, queries: int, warmup: int, dimensions: Sequence[int] = ()
) -> dict[str, Any]:
    for j in range(warmup):
        await service.search(base, f"q{j}", top_k=TOP_K, dimensions=dimensions)
    samples = []
    for j in range(queries):
        began = time.perf_counter()
        result = await service.search(base, f"q{(j + warmup)}", top_k=TOP_K, dimensions=dimensions)
        samples.append(time.perf_counter() - began)
        if not result.hits:
            raise RuntimeError("search returned no hits")
    return summarize_ms(samples)


async def run_store_bench(
    work_dir: Path,
    sizes: Sequence[int],
    queries: int,
    cross_docs: int,
    max_ingest_s: float,
    batch: int = 1000,
) -> dict[str, Any]:
    sizes = sorted(sizes)
    warmup = 5
    prepare_started = time.perf_counter()
    vectors = PrecomputedVectors(max(sizes[-1], cross_docs), queries + warmup, MODELS)
    prepare_s = time.perf_counter() - prepare_started
    config = EmbeddingConfig.model_validate(
        {
            "chroma": {"mode": "persistent", "path": str(work_dir / "chroma")},
            "state_path": str(work_dir / "state.sqlite3"),
        }
    )
    service = EmbeddingStoreService.open(config, vectors)
    report: dict[str, Any] = {
        "vector_dimension": 384,
        "request_size_documents": batch,
        "search_top_k": TOP_K,
        "queries_per_checkpoint": queries,
        "vector_preparation_s": round(prepare_s, 2),
        "hnsw": config.chroma.hnsw.model_dump(),
        "chroma_threads": config.chroma.threads,
        "write_batch_size": config.defaults.write_batch_size,
        "checkpoints": [],
        "max_ingest_s": max_ingest_s,
    }
    try:
        deadline = time.perf_counter() + max_ingest_s
        count = 0
        total_ingest_s = 0.0
        for size in sizes:
            written, seconds = await _ingest(service, "bench", count, size, batch, None, deadline)
            count += written
            total_ingest_s += seconds
            reached = count >= size
            checkpoint: dict[str, Any] = {
                "documents": size,
                "reached": reached,
                "documents_in_collection": count,
                "segment_documents": written,
                "segment_ingest_s": round(seconds, 2),
                "segment_docs_per_s": round(written / seconds, 1) if seconds > 0 else None,
                "cumulative_ingest_s": round(total_ingest_s, 2),
            }
            if count > 0:
                checkpoint["search_latency_ms"] = await _search_latency(service, "bench", queries, warmup)
            report["checkpoints"].append(checkpoint)
            print(
                f"  {count:>7} documents: ingest {checkpoint['segment_docs_per_s']} docs/s, search p50 "
                f"{checkpoint.get('search_latency_ms', {}).get('p50')} ms",
                flush=True,
            )
            if not reached:
                break
        report["ingest_total_s"] = round(total_ingest_s, 2)
        report["ingest_docs_per_s_overall"] = round(count / total_ingest_s, 1) if total_ingest_s else None

        # Cross-dimension: the same documents in a 384-d and a 768-d collection of one base.
        began = time.perf_counter()
        await _ingest(service, "xdim", 0, cross_docs, batch, SMALL_MODEL, float("inf"))
        await _ingest(service, "xdim", 0, cross_docs, batch, LARGE_MODEL, float("inf"))
        xdim_ingest_s = time.perf_counter() - began
        single = await _search_latency(service, "xdim", queries, warmup, dimensions=(384,))
        both = await _search_latency(service, "xdim", queries, warmup)
        report["cross_dimension"] = {
            "documents_per_collection": cross_docs,
            "collections": ["xdim_384", "xdim_768"],
            "ingest_both_s": round(xdim_ingest_s, 2),
            "single_collection_384_ms": single,
            "both_collections_fused_ms": both,
            "p50_ratio_fused_over_single": round(both["p50"] / single["p50"], 2),
            "p99_ratio_fused_over_single": round(both["p99"] / single["p99"], 2),
        }
        print(
            f"  cross-dimension ({cross_docs} docs x 2): single p50 {single['p50']} ms, fused p50 "
            f"{both['p50']} ms",
            flush=True,
        )
    finally:
        await service.aclose()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1k documents, few queries")
    parser.add_argument(
        "--sizes", default=None, help="comma-separated checkpoint sizes (default 10000,100000)"
    )
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--cross-docs", type=int, default=None)
    parser.add_argument("--max-ingest-s", type=float, default=1200.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "embedding_store.json")
    args = parser.parse_args(argv)
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([1000] if args.quick else [10_000, 100_000])
    )
    queries = args.queries or (20 if args.quick else 200)
    cross_docs = args.cross_docs or (500 if args.quick else 10_000)
    work = Path(tempfile.mkdtemp(prefix="sekha-bench-chroma-"))
    try:
        started = time.perf_counter()
        body = asyncio.run(run_store_bench(work, sizes, queries, cross_docs, args.max_ingest_s))
        body["wall_s"] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "section": "embedding_store",
        "method": method_text(__doc__),
        "quick": args.quick,
        **body,
        "machine": machine_info(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
