"""`sekha_runtime.aggregation` against the OpenTelemetry SDK itself: the same measurements must give a
reader the same data points the SDK's own instruments would have given it."""

from __future__ import annotations

import math
import random
import threading
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from sekha_runtime.aggregation import Aggregation

BOUNDS = (0.01, 0.1, 1.0, 10.0)
SCOPE = "sekha"


def points(data: MetricsData | None, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
    found = {}
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    found.update({frozenset(p.attributes.items()): p for p in metric.data.data_points})
    return found


def sdk_and_ours(limit: int = 2000) -> tuple[Any, Aggregation, InMemoryMetricReader, InMemoryMetricReader]:
    """An SDK meter with its own reader, and an Aggregation exported through a second SDK's reader."""
    sdk_reader, our_reader = InMemoryMetricReader(), InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[sdk_reader]).get_meter(SCOPE)
    our_meter = MeterProvider(metric_readers=[our_reader]).get_meter(SCOPE)
    ours = Aggregation(our_meter, Resource.create({}), InstrumentationScope(SCOPE), cardinality_limit=limit)
    ours.export_through(our_reader)
    return meter, ours, sdk_reader, our_reader


def test_histograms_and_counters_match_the_sdk_for_random_measurements() -> None:
    meter, ours, sdk_reader, our_reader = sdk_and_ours()
    histograms = [
        factory.create_histogram("h", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
        for factory in (meter, ours)
    ]
    counters = [factory.create_counter("c", unit="{x}") for factory in (meter, ours)]
    rng = random.Random(7)
    for _ in range(3000):
        attributes = {"provider": rng.choice("abc"), "code": rng.choice(["OK", "UNAVAILABLE"])}
        # Exact bucket boundaries included: OpenTelemetry buckets are closed above.
        value = rng.choice([rng.expovariate(2.0), rng.choice(BOUNDS), 0.0])
        amount = rng.randint(0, 5)
        for histogram in histograms:
            histogram.record(value, attributes)
        for counter in counters:
            counter.add(amount, attributes)
    expected, got = sdk_reader.get_metrics_data(), our_reader.get_metrics_data()

    sdk_histogram, our_histogram = points(expected, "h"), points(got, "h")
    assert sdk_histogram.keys() == our_histogram.keys() and len(our_histogram) == 6
    for key, want in sdk_histogram.items():
        have = our_histogram[key]
        assert have.count == want.count
        assert list(have.bucket_counts) == list(want.bucket_counts)
        assert list(have.explicit_bounds) == list(want.explicit_bounds)
        assert have.sum == pytest.approx(want.sum)
        assert (have.min, have.max) == (want.min, want.max)
    sdk_counter, our_counter = points(expected, "c"), points(got, "c")
    assert {k: p.value for k, p in sdk_counter.items()} == {k: p.value for k, p in our_counter.items()}


def test_what_the_sdk_drops_is_dropped_and_cumulative_totals_grow() -> None:
    _, ours, _, reader = sdk_and_ours()
    histogram = ours.create_histogram("h", explicit_bucket_boundaries_advisory=BOUNDS)
    counter = ours.create_counter("c")
    for bad in (-1.0, math.nan):
        histogram.record(bad)
        counter.add(bad)
    assert not points(reader.get_metrics_data(), "h") and not points(reader.get_metrics_data(), "c")
    histogram.record(0.5)
    counter.add(2)
    counter.add(3)
    first = reader.get_metrics_data()
    (h,) = points(first, "h").values()
    (c,) = points(first, "c").values()
    assert (h.count, h.sum, c.value) == (1, 0.5, 5)
    histogram.record(20.0)
    (h,) = points(reader.get_metrics_data(), "h").values()
    assert (h.count, list(h.bucket_counts), h.max) == (2, [0, 0, 1, 0, 1], 20.0)


def test_series_past_the_limit_go_to_one_overflow_series_and_no_count_is_lost() -> None:
    _, ours, _, reader = sdk_and_ours(limit=4)
    counter = ours.create_counter("c")
    for index in range(10):
        counter.add(1, {"caller": f"c{index}"})
    found = points(reader.get_metrics_data(), "c")
    assert len(found) == 4 and ours.series_count() == 4
    assert found[frozenset({("otel.metric.overflow", True)})].value == 7
    assert sum(p.value for p in found.values()) == 10


def test_a_collection_never_sees_a_histogram_whose_buckets_disagree_with_its_count() -> None:
    _, ours, _, reader = sdk_and_ours()
    histogram = ours.create_histogram("h", explicit_bucket_boundaries_advisory=BOUNDS)
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            histogram.record(0.05, {"a": "b"})

    writer = threading.Thread(target=record)
    writer.start()
    try:
        for _ in range(300):
            for point in points(reader.get_metrics_data(), "h").values():
                assert sum(point.bucket_counts) == point.count
    finally:
        stop.set()
        writer.join()


def test_our_metrics_join_the_sdk_scope_of_the_same_name() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter(SCOPE)
    ours = Aggregation(meter, Resource.create({}), InstrumentationScope(SCOPE))
    ours.export_through(reader)
    meter.create_counter("sdk.counter").add(1)
    ours.create_counter("our.counter").add(1)
    (resource_metrics,) = reader.get_metrics_data().resource_metrics
    (scope_metrics,) = resource_metrics.scope_metrics
    assert scope_metrics.scope.name == SCOPE
    assert sorted(m.name for m in scope_metrics.metrics) == [
        "our.counter",
        "sdk.counter",
        "sekha.metrics.series",
    ]


def test_boundaries_must_increase() -> None:
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter(SCOPE)
    ours = Aggregation(meter, Resource.create({}), InstrumentationScope(SCOPE))
    with pytest.raises(ValueError, match="strictly increasing"):
        ours.create_histogram("h", explicit_bucket_boundaries_advisory=(1.0, 1.0))


def test_list_valued_attributes_are_one_series_like_in_the_sdk() -> None:
    meter, ours, sdk_reader, our_reader = sdk_and_ours()
    for factory in (meter, ours):
        counter = factory.create_counter("c")
        counter.add(1, {"tags": ["a", "b"]})
        counter.add(2, {"tags": ["a", "b"]})
    (want,) = points(sdk_reader.get_metrics_data(), "c").values()
    (have,) = points(our_reader.get_metrics_data(), "c").values()
    assert (
        (have.value, list(have.attributes["tags"]))
        == (want.value, list(want.attributes["tags"]))
        == (3, ["a", "b"])
    )
