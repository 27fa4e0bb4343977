"""Where vectors come from: the protocol the domain sees instead of the Router's gRPC API.

`VectorSwitch` is the source the service really holds: a config reload replaces the source
behind it (a new router connection) while requests and migrations keep running.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sekha_runtime.errors import DeadlineExceededError, GatewayError, UnavailableError
from sekha_runtime.inuse import InUse

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedBatch:
    """Vectors for a batch of texts, in input order.

    `model` is the `provider_id/model` key the router reports; it is what the service stores as a
    collection's model, so later writes and queries ask the router for exactly the same model.
    """

    vectors: list[list[float]]
    dimension: int
    model: str


@runtime_checkable
class VectorSource(Protocol):
    """Turns texts into vectors. Implementations raise `sekha_runtime.errors` types only."""

    async def embed(self, texts: Sequence[str], model: str | None) -> EmbeddedBatch:
        """Embed `texts` with `model` (`model` or `provider_id/model`); None is the router's choice."""
        ...


async def embed_checked(source: VectorSource, texts: Sequence[str], model: str | None) -> EmbeddedBatch:
    """`source.embed` with its answer checked: one vector per text, all of the reported dimension.

    Errors other than `sekha_runtime.errors` types become UnavailableError; their text is not kept
    because it may hold provider details.
    """
    try:
        batch = await source.embed(texts, model)
    except GatewayError:
        raise
    except Exception as exc:
        _log.warning("vector source failed: %s", type(exc).__name__)
        raise UnavailableError("embedding source unavailable", reason="EMBEDDING_UNAVAILABLE") from None
    if len(batch.vectors) != len(texts) or batch.dimension < 1:
        _log.warning("vector source returned %d vectors for %d texts", len(batch.vectors), len(texts))
        raise UnavailableError("embedding source returned a malformed answer", reason="EMBEDDING_UNAVAILABLE")
    for vector in batch.vectors:
        if len(vector) != batch.dimension:
            raise UnavailableError(
                "embedding source returned vectors of mixed dimensions", reason="EMBEDDING_UNAVAILABLE"
            )
    return batch


# Told how long each call took: (model requested, model that answered or None when the call
# timed out, number of texts, seconds, whether it timed out).
CallObserver = Callable[[str | None, str | None, int, float, bool], None]


class TrackedSource(InUse):
    """A vector source with the number of calls and pinned requests using it right now."""

    def __init__(self, source: VectorSource) -> None:
        super().__init__()
        self.source = source


@dataclass(eq=False)
class _Pin:
    switch: VectorSwitch
    tracked: TrackedSource
    held: bool = True  # False once the request that pinned has returned


# Module level, as contextvars should be; tasks a request starts inherit its pin.
_pin: ContextVar[_Pin | None] = ContextVar("sekha_vector_pin", default=None)


class VectorSwitch:
    """A VectorSource whose underlying source can be replaced while it is in use.

    A request pins the source that is current when it starts (`with switch.pinned():`), so all
    its embeddings come from one source even if a replacement lands half way. Calls outside a
    pinned request (migration backfills) take the current source per call: a backfill moves to the
    new source at its next batch instead of keeping the old one open for hours. `replace()`
    returns the old source's tracker; once its `drained()` returns, nothing uses it any more.
    Every call that answers or times out is timed and reported to `observe` (batch sizing).
    """

    def __init__(
        self,
        source: VectorSource,
        observe: CallObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._current = TrackedSource(source)
        self._observe = observe
        self._clock = clock

    def replace(self, source: VectorSource) -> TrackedSource:
        """Send new requests and calls to `source`; the tracker of the replaced one."""
        old, self._current = self._current, TrackedSource(source)
        return old

    def _pinned_here(self) -> _Pin | None:
        pin = _pin.get()
        # A task that outlives the request that pinned (one it spawned) is not pinned any more.
        return pin if pin is not None and pin.held and pin.switch is self else None

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Within the block (and tasks started from it), embed with the source current at its start."""
        if self._pinned_here() is not None:  # an outer call of the same request pinned already
            yield
            return
        tracked = self._current
        with tracked:  # the request counts as a user until it ends, between its calls too
            pin = _Pin(self, tracked)
            token = _pin.set(pin)
            try:
                yield
            finally:
                pin.held = False
                _pin.reset(token)

    async def embed(self, texts: Sequence[str], model: str | None) -> EmbeddedBatch:
        pin = self._pinned_here()
        tracked = pin.tracked if pin is not None else self._current
        with tracked:
            started = self._clock()
            try:
                batch = await tracked.source.embed(texts, model)
            except DeadlineExceededError:
                if self._observe is not None:
                    self._observe(model, None, len(texts), self._clock() - started, True)
                raise
            if self._observe is not None:
                self._observe(model, batch.model, len(texts), self._clock() - started, False)
            return batch
