"""A fake VectorSource: the Router's Embed RPC replaced at the edge of the Embedding domain.

Vectors are deterministic hashed bags of words: every word gets a fixed pseudo-random vector
per model (a different seed per model), a text is the normalized sum of its words, so texts
sharing words are close. Tests can pin exact vectors, make every call fail (router down), or
hold calls after a number of successful ones (to stop a backfill mid-way).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from embedding_service.vectors import EmbeddedBatch
from sekha_runtime.errors import NotFoundError, UnavailableError

DEFAULT_MODELS: dict[str, int] = {
    "fake/mini-384": 384,
    "fake/base-768": 768,
    "fake/large-1536": 1536,
}

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class EmbedCall:
    """One successful embed call: the model asked for, the model key answered, the texts."""

    requested: str | None
    model: str
    texts: tuple[str, ...]


class FakeVectorSource:
    """Deterministic embeddings for several fake models of configurable dimensions."""

    def __init__(
        self,
        models: Mapping[str, int] | None = None,
        default_model: str | None = None,
        pinned: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    ) -> None:
        self.models = dict(models or DEFAULT_MODELS)
        self.default_model = default_model or next(iter(self.models))
        # model key -> text -> exact vector to return (for hand-built geometry in tests).
        self.pinned = {model: dict(texts) for model, texts in (pinned or {}).items()}
        self.calls: list[EmbedCall] = []
        # Router down: every call fails (or only calls for the model keys in `fail_models`).
        self.fail = False
        self.fail_models: set[str] = set()
        # When set, calls (for `block_model`, or any) after this many successful ones wait for `release`.
        self.block_after_calls: int | None = None
        self.block_model: str | None = None
        # When set and true for (model key, texts), the call waits for `release`.
        self.hold: Callable[[str, Sequence[str]], bool] | None = None
        self.release = asyncio.Event()
        self.held = asyncio.Event()  # set when a call starts waiting
        self.blocked = 0
        self._word_vectors: dict[tuple[str, str, int], np.ndarray] = {}

    def resolve(self, model: str | None) -> str:
        """The model key a request names (`model` or `provider/model`), like the router does."""
        if model is None:
            return self.default_model
        if model in self.models:
            return model
        for key in self.models:
            if key.split("/", 1)[-1] == model:
                return key
        raise NotFoundError("model", model)

    def texts_embedded(self, model: str | None = None) -> list[str]:
        """Every text embedded so far, optionally only by one model key."""
        return [text for call in self.calls if model is None or call.model == model for text in call.texts]

    async def embed(self, texts: Sequence[str], model: str | None) -> EmbeddedBatch:
        await asyncio.sleep(0)  # a network hop: let other tasks run
        if self.fail:
            raise UnavailableError("embedding source unavailable", reason="EMBEDDING_UNAVAILABLE")
        key = self.resolve(model)
        if key in self.fail_models:
            raise UnavailableError("embedding source unavailable", reason="EMBEDDING_UNAVAILABLE")
        if self._must_wait(key, texts):
            self.blocked += 1
            self.held.set()
            await self.release.wait()
            if self.fail or key in self.fail_models:  # the router went down while the call waited
                raise UnavailableError("embedding source unavailable", reason="EMBEDDING_UNAVAILABLE")
        dimension = self.models[key]
        vectors = [self.vector(text, key) for text in texts]
        self.calls.append(EmbedCall(model, key, tuple(texts)))
        return EmbeddedBatch(vectors=vectors, dimension=dimension, model=key)

    def _must_wait(self, key: str, texts: Sequence[str]) -> bool:
        if self.release.is_set():
            return False
        if self.hold is not None and self.hold(key, texts):
            return True
        if self.block_after_calls is not None and (self.block_model is None or self.block_model == key):
            done = sum(1 for call in self.calls if self.block_model is None or call.model == self.block_model)
            return done >= self.block_after_calls
        return False

    def vector(self, text: str, model: str) -> list[float]:
        """The vector `model` gives `text`."""
        pinned = self.pinned.get(model, {}).get(text)
        if pinned is not None:
            return [float(x) for x in pinned]
        dimension = self.models[model]
        total = np.zeros(dimension)
        words = _WORD.findall(text.lower()) or [text]
        for word in words:
            total += self._word_vector(model, word, dimension)
        norm = float(np.linalg.norm(total))
        return (total / norm if norm else total).tolist()

    def _word_vector(self, model: str, word: str, dimension: int) -> np.ndarray:
        cached = self._word_vectors.get((model, word, dimension))
        if cached is None:
            seed = int.from_bytes(hashlib.blake2b(f"{model}|{word}".encode(), digest_size=8).digest(), "big")
            cached = np.random.default_rng(seed).standard_normal(dimension)
            self._word_vectors[(model, word, dimension)] = cached
        return cached
