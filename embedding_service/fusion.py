"""Merging ranked hit lists of several collections into one ranking (pure functions).

Both methods merge duplicates by document id, record where each hit ranked in every list
that returned it, and break score ties by id so equal inputs always give equal outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from embedding_service.domain import DistanceMetric, Match


@dataclass(frozen=True)
class RankedList:
    """One collection's hits, best first, with Chroma's distances (same length as ids)."""

    collection: str
    ids: Sequence[str]
    distances: Sequence[float]
    weight: float = 1.0
    metric: DistanceMetric = DistanceMetric.COSINE

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.distances):
            raise ValueError("ids and distances differ in length")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError("weight must be a finite number >= 0")


@dataclass(frozen=True)
class FusedHit:
    """A merged hit: fused score (higher is better) and its matches in list order."""

    id: str
    score: float
    matches: tuple[Match, ...]


def distance_to_similarity(distance: float, metric: DistanceMetric) -> float:
    """A similarity that grows as the distance shrinks, linear in the distance.

    Chroma reports cosine distance as 1 - cos, inner product as 1 - dot and l2 as the squared
    euclidean distance; a linear map keeps min-max normalization equivalent across metrics.
    """
    if metric is DistanceMetric.L2:
        return -distance
    return 1.0 - distance


def reciprocal_rank_fusion(lists: Sequence[RankedList], k: int = 60) -> list[FusedHit]:
    """Weighted RRF: score(d) = sum over lists containing d of weight / (k + rank), rank 1-based."""
    if k < 1:
        raise ValueError("k must be >= 1")
    scores: dict[str, float] = {}
    matches: dict[str, list[Match]] = {}
    for ranked in lists:
        for rank, (doc_id, distance) in enumerate(zip(ranked.ids, ranked.distances, strict=True), start=1):
            if doc_id in matches and any(m.collection == ranked.collection for m in matches[doc_id]):
                continue  # a list naming an id twice counts it once, at its best rank
            scores[doc_id] = scores.get(doc_id, 0.0) + ranked.weight / (k + rank)
            matches.setdefault(doc_id, []).append(Match(ranked.collection, rank, float(distance)))
    return _ordered(scores, matches)


def min_max_fusion(lists: Sequence[RankedList]) -> list[FusedHit]:
    """Similarities min-max normalized to [0, 1] within each list, weighted and summed.

    A list whose similarities are all equal (one hit, or ties) normalizes them to 1; a document
    a list did not return contributes 0 from that list.
    """
    scores: dict[str, float] = {}
    matches: dict[str, list[Match]] = {}
    for ranked in lists:
        if not ranked.ids:
            continue
        similarities = [distance_to_similarity(float(d), ranked.metric) for d in ranked.distances]
        low, high = min(similarities), max(similarities)
        spread = high - low
        for rank, (doc_id, distance, similarity) in enumerate(
            zip(ranked.ids, ranked.distances, similarities, strict=True), start=1
        ):
            if doc_id in matches and any(m.collection == ranked.collection for m in matches[doc_id]):
                continue
            normalized = (similarity - low) / spread if spread > 0 else 1.0
            scores[doc_id] = scores.get(doc_id, 0.0) + ranked.weight * normalized
            matches.setdefault(doc_id, []).append(Match(ranked.collection, rank, float(distance)))
    return _ordered(scores, matches)


def _ordered(scores: dict[str, float], matches: dict[str, list[Match]]) -> list[FusedHit]:
    # Rounding makes scores that differ only by float summation order tie, and ties go to the id.
    ordered_ids = sorted(scores, key=lambda doc_id: (-round(scores[doc_id], 12), doc_id))
    return [FusedHit(doc_id, scores[doc_id], tuple(matches[doc_id])) for doc_id in ordered_ids]
