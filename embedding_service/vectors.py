"""Where vectors come from: the protocol the domain sees instead of the Router's gRPC API."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sekha.errors import GatewayError, UnavailableError

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
    """Turns texts into vectors. Implementations raise `sekha.errors` types only."""

    async def embed(self, texts: Sequence[str], model: str | None) -> EmbeddedBatch:
        """Embed `texts` with `model` (`model` or `provider_id/model`); None is the router's choice."""
        ...


async def embed_checked(source: VectorSource, texts: Sequence[str], model: str | None) -> EmbeddedBatch:
    """`source.embed` with its answer checked: one vector per text, all of the reported dimension.

    Errors other than `sekha.errors` types become UnavailableError; their text is not kept
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
