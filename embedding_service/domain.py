"""Domain values of the Embedding service: what the facade takes and returns (no protobuf, no grpc).

The gRPC servicer converts these to and from `sekha.embedding.v1` messages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sekha_runtime.errors import FailedPreconditionError

MetadataValue = str | int | float | bool
Metadata = Mapping[str, MetadataValue]
# A Chroma `where` filter as plain JSON-like data (the servicer converts google.protobuf.Struct).
WhereFilter = Mapping[str, object]


class DistanceMetric(enum.StrEnum):
    """HNSW space of a collection; the values are Chroma's names."""

    COSINE = "cosine"
    L2 = "l2"
    INNER_PRODUCT = "ip"


class FusionMethod(enum.StrEnum):
    """How ranked lists of several collections are merged."""

    RECIPROCAL_RANK = "rrf"
    MIN_MAX = "min_max"


class MigrationState(enum.StrEnum):
    """Phase of a migration; the first three are active (at most one per base)."""

    PENDING = "PENDING"
    BACKFILLING = "BACKFILLING"
    VERIFYING = "VERIFYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"

    @property
    def active(self) -> bool:
        return self in (MigrationState.PENDING, MigrationState.BACKFILLING, MigrationState.VERIFYING)


class CollectionInUseError(FailedPreconditionError):
    """The collection serves reads or takes part in a migration: FAILED_PRECONDITION.

    `subject` names the collection, `violation_type` says why (for PreconditionFailure).
    """

    reason = "COLLECTION_IN_USE"


@dataclass(frozen=True)
class DocumentIn:
    """A document to upsert."""

    id: str
    text: str
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    """A stored document; `embedding` is set only when asked for."""

    id: str
    text: str
    metadata: Metadata = field(default_factory=dict)
    embedding: list[float] | None = None


@dataclass(frozen=True)
class CollectionInfo:
    """One dimension collection of a base as callers see it."""

    name: str
    base: str
    dimension: int
    model: str
    distance_metric: DistanceMetric
    document_count: int
    created_at: datetime
    serving_reads: bool
    receiving_writes: bool


@dataclass(frozen=True)
class UpsertResult:
    """Documents written (per collection, not summed) and the collections written."""

    upserted_count: int
    collections: list[CollectionInfo]


@dataclass(frozen=True)
class GetResult:
    """Documents found (missing ids left out), the collection read first, the next page's token
    and every collection read, in order of precedence."""

    documents: list[Document]
    collection: str
    next_page_token: str = ""
    collections: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CollectionPage:
    """One page of ListCollections, ordered by name."""

    collections: list[CollectionInfo]
    next_page_token: str = ""


@dataclass(frozen=True)
class Match:
    """Where a hit ranked in one collection: 1-based rank and Chroma's distance."""

    collection: str
    rank: int
    distance: float


@dataclass(frozen=True)
class Hit:
    """One fused search result; higher score is better."""

    id: str
    text: str
    metadata: Metadata
    score: float
    matches: list[Match]


@dataclass(frozen=True)
class SearchResult:
    """Hits best first, and the collections searched."""

    hits: list[Hit]
    collections: list[str]


@dataclass(frozen=True)
class Migration:
    """State of moving a base to a new embedding model."""

    id: str
    base: str
    source_collection: str
    target_collection: str
    target_model: str
    state: MigrationState
    total_documents: int
    migrated_documents: int
    created_at: datetime
    updated_at: datetime
    error: str = ""
