"""Rank fusion: RRF arithmetic, weights, duplicate merging, min-max normalization, tie-breaking."""

from __future__ import annotations

import math

import pytest

from embedding_service.domain import DistanceMetric, Match
from embedding_service.fusion import (
    RankedList,
    distance_to_similarity,
    min_max_fusion,
    reciprocal_rank_fusion,
)


def test_rrf_sums_reciprocal_ranks_with_k_60() -> None:
    small = RankedList("kb_384", ids=["a", "b", "c"], distances=[0.1, 0.2, 0.3])
    large = RankedList("kb_1536", ids=["b", "a", "d"], distances=[0.05, 0.15, 0.4])

    fused = reciprocal_rank_fusion([small, large], k=60)

    scores = {hit.id: hit.score for hit in fused}
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["c"] == pytest.approx(1 / 63)
    assert scores["d"] == pytest.approx(1 / 63)
    # a and b tie exactly, as do c and d: ties go to the smaller id.
    assert [hit.id for hit in fused] == ["a", "b", "c", "d"]


def test_rrf_merges_duplicates_and_records_every_match() -> None:
    small = RankedList("kb_384", ids=["x", "y"], distances=[0.2, 0.3])
    large = RankedList("kb_1536", ids=["y", "x"], distances=[0.1, 0.4])

    fused = reciprocal_rank_fusion([small, large])

    assert len(fused) == 2
    by_id = {hit.id: hit for hit in fused}
    assert by_id["x"].matches == (Match("kb_384", 1, 0.2), Match("kb_1536", 2, 0.4))
    assert by_id["y"].matches == (Match("kb_384", 2, 0.3), Match("kb_1536", 1, 0.1))


def test_rrf_weights_scale_each_list() -> None:
    heavy = RankedList("kb_1536", ids=["q"], distances=[0.1], weight=2.0)
    light = RankedList("kb_384", ids=["p"], distances=[0.1], weight=0.5)

    fused = reciprocal_rank_fusion([light, heavy], k=10)

    assert [(hit.id, hit.score) for hit in fused] == [
        ("q", pytest.approx(2.0 / 11)),
        ("p", pytest.approx(0.5 / 11)),
    ]


def test_rrf_second_in_one_list_wins_when_fused() -> None:
    # One collection ranks "target" second; the other ranks it first and the rival third.
    first = RankedList("kb_384", ids=["rival", "target", "z"], distances=[0.1, 0.2, 0.3])
    second = RankedList("kb_1536", ids=["target", "w", "rival"], distances=[0.1, 0.2, 0.3])

    fused = reciprocal_rank_fusion([first, second])

    assert fused[0].id == "target"
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)


def test_rrf_counts_an_id_repeated_within_one_list_once() -> None:
    repeated = RankedList("kb_384", ids=["a", "a", "b"], distances=[0.1, 0.1, 0.2])

    fused = reciprocal_rank_fusion([repeated])

    assert fused[0].score == pytest.approx(1 / 61)
    assert fused[0].matches == (Match("kb_384", 1, 0.1),)


def test_rrf_refuses_bad_k_and_weights() -> None:
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([], k=0)
    with pytest.raises(ValueError):
        RankedList("c", ids=["a"], distances=[0.1], weight=-1)
    with pytest.raises(ValueError):
        RankedList("c", ids=["a"], distances=[0.1], weight=math.nan)
    with pytest.raises(ValueError):
        RankedList("c", ids=["a", "b"], distances=[0.1])


def test_min_max_normalizes_each_list_then_sums_weighted() -> None:
    cosine = RankedList("kb_384", ids=["a", "b", "c"], distances=[0.2, 0.4, 0.6])
    l2 = RankedList("kb_768", ids=["c", "a"], distances=[1.0, 3.0], metric=DistanceMetric.L2, weight=2.0)

    fused = min_max_fusion([cosine, l2])

    scores = {hit.id: hit.score for hit in fused}
    # cosine: a=1, b=0.5, c=0; l2: c=1, a=0 (x2 weight)
    assert scores == {"a": pytest.approx(1.0), "b": pytest.approx(0.5), "c": pytest.approx(2.0)}
    assert [hit.id for hit in fused] == ["c", "a", "b"]
    assert {m.collection for m in fused[0].matches} == {"kb_384", "kb_768"}


def test_min_max_gives_a_flat_list_full_score() -> None:
    single = RankedList("kb_384", ids=["only"], distances=[0.7])
    flat = RankedList("kb_768", ids=["m", "n"], distances=[0.3, 0.3])

    fused = min_max_fusion([single, flat])

    assert [(hit.id, hit.score) for hit in fused] == [("m", 1.0), ("n", 1.0), ("only", 1.0)]


def test_min_max_ignores_empty_lists() -> None:
    assert min_max_fusion([RankedList("kb_384", ids=[], distances=[])]) == []


def test_distance_to_similarity_per_metric() -> None:
    assert distance_to_similarity(0.25, DistanceMetric.COSINE) == pytest.approx(0.75)
    assert distance_to_similarity(0.25, DistanceMetric.INNER_PRODUCT) == pytest.approx(0.75)
    assert distance_to_similarity(4.0, DistanceMetric.L2) == pytest.approx(-4.0)


def test_fusion_is_deterministic_regardless_of_list_order() -> None:
    lists = [
        RankedList("c1", ids=["d", "b", "a"], distances=[0.1, 0.2, 0.3]),
        RankedList("c2", ids=["a", "c", "d"], distances=[0.1, 0.2, 0.3]),
        RankedList("c3", ids=["b", "a", "c"], distances=[0.1, 0.2, 0.3]),
    ]

    forward = [hit.id for hit in reciprocal_rank_fusion(lists)]
    backward = [hit.id for hit in reciprocal_rank_fusion(list(reversed(lists)))]

    assert forward == backward
    assert forward[0] == "a"  # ranks 3, 1, 2 beat b (2, -, 1) and d (1, 3, -)
