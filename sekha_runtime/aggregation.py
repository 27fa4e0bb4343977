"""Counters and histograms aggregated in plain Python, exported by the OpenTelemetry SDK's readers.

Why not the SDK's own synchronous instruments: each of their measurements costs about 11 us on
this machine (the attribute dict is re-validated, sorted into a key and wrapped in a Measurement
on every call), and a routed Chat records six, which was 8% of the router's CPU at saturation
(`bench/tracing_overhead.py`). Here a measurement is a frozenset lookup, a bisect and a few
additions under a lock, about 1 us, and the SDK sees the aggregated series when a reader
collects.

What a reader receives is what the SDK itself would have produced for the same instruments:
the same names, units, descriptions and explicit bucket boundaries, cumulative temporality, min
and max per histogram series, and the same overflow series (`otel.metric.overflow=true`) once an
instrument holds `cardinality_limit` series. Measurements the SDK would drop (negative counter
increments and histogram values, NaN) are dropped here too.

Attribute mappings are read when first recorded: one handed in again must not have changed in
between (the services build theirs once and reuse them; see `_Instrument._state`).

How the series reach a reader: `Aggregation.export_through(reader)` wraps the reader's
`_receive_metrics`, the method every SDK reader implements to receive a collection, so that the
collection it receives carries these metrics next to the SDK's own (observable instruments) in
the same instrumentation scope. The SDK hands a reader nothing when none of *its* instruments
has data, so an `Aggregation` registers one observable gauge on the meter it is given that
always reports, `sekha.metrics.series`: the number of series held here, worth watching anyway.

Thread safety: measurements arrive on the event loop, collections on an exporter's or the
scrape handler's thread; each instrument's lock makes a series' count, sum and buckets change
together, so a collection never sees a histogram whose buckets disagree with its count.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = [
    "DEFAULT_CARDINALITY_LIMIT",
    "Adder",
    "AggregatedCounter",
    "AggregatedHistogram",
    "Aggregation",
    "Recorder",
]

# The SDK's default per-instrument limit (OTel metrics SDK spec, "cardinality limits").
DEFAULT_CARDINALITY_LIMIT = 2000
_OVERFLOW_ATTRIBUTES: Mapping[str, Any] = {"otel.metric.overflow": True}
_OVERFLOW_KEY = frozenset(_OVERFLOW_ATTRIBUTES.items())
_NO_ATTRIBUTES: Mapping[str, Any] = {}
_NO_KEY: frozenset[tuple[str, Any]] = frozenset()
# Mappings remembered by identity per instrument; beyond this (callers building a new mapping
# per measurement) lookups fall back to the frozenset key.
_IDENTITY_CACHE_LIMIT = 1024


class Adder(Protocol):
    """What a counter offers its callers: the OpenTelemetry `Counter.add` signature."""

    def add(
        self, amount: float, attributes: Mapping[str, Any] | None = None, context: Any = None
    ) -> None: ...


class Recorder(Protocol):
    """What a histogram offers its callers: the OpenTelemetry `Histogram.record` signature."""

    def record(
        self, amount: float, attributes: Mapping[str, Any] | None = None, context: Any = None
    ) -> None: ...


class _Instrument:
    """Name, unit, description and the series of one instrument, keyed by attribute set."""

    def __init__(self, name: str, unit: str, description: str, limit: int, clock: Callable[[], int]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (attributes, start time, state); state is the subclass's mutable list.
        self._series: dict[frozenset[tuple[str, Any]], tuple[Mapping[str, Any], int, list[Any]]] = {}
        # id(mapping) -> (mapping, state): see `_state`. Touched on the recording thread only.
        self._by_identity: dict[int, tuple[Mapping[str, Any], list[Any]]] = {}

    def _state(self, attributes: Mapping[str, Any] | None) -> list[Any]:
        if not attributes:
            key = _NO_KEY
        else:
            # The hot callers hand in the same mapping object every time (cached per model,
            # method, status code): found by identity, no frozenset is built. The entry holds
            # the mapping, so its id cannot be reused by another object while cached.
            known = self._by_identity.get(id(attributes))
            if known is not None and known[0] is attributes:
                return known[1]
            try:
                key = frozenset(attributes.items())
            except TypeError:  # OpenTelemetry allows list values; a list is not hashable
                key = frozenset((k, tuple(v) if isinstance(v, list) else v) for k, v in attributes.items())
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key, attributes or _NO_ATTRIBUTES)
        if attributes and len(self._by_identity) < _IDENTITY_CACHE_LIMIT:
            self._by_identity[id(attributes)] = (attributes, series[2])
        return series[2]

    def _new_series(
        self, key: frozenset[tuple[str, Any]], attributes: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any], int, list[Any]]:
        with self._lock:
            if key not in self._series and len(self._series) >= self._limit - 1:
                # The last slot is the overflow series, as in the SDK: totals stay right.
                key, attributes = _OVERFLOW_KEY, _OVERFLOW_ATTRIBUTES
            series = self._series.get(key)
            if series is None:
                # Lists become tuples, as the SDK stores them.
                kept = {k: tuple(v) if isinstance(v, list) else v for k, v in attributes.items()}
                series = (kept, self._clock(), self._empty_state())
                self._series[key] = series
            return series

    def _empty_state(self) -> list[Any]:
        raise NotImplementedError

    def _snapshot(self) -> list[tuple[Mapping[str, Any], int, list[Any]]]:
        with self._lock:
            return [(attributes, start, list(state)) for attributes, start, state in self._series.values()]

    def series_count(self) -> int:
        return len(self._series)

    def to_metric(self, now: int) -> Metric | None:
        raise NotImplementedError


class AggregatedCounter(_Instrument):
    """A monotonic sum per attribute set (`Counter.add`)."""

    def _empty_state(self) -> list[Any]:
        return [0]

    def add(self, amount: float, attributes: Mapping[str, Any] | None = None, context: Any = None) -> None:
        if not amount >= 0:  # negative or NaN: the SDK drops these too
            return
        state = self._state(attributes)
        with self._lock:
            state[0] += amount

    def to_metric(self, now: int) -> Metric | None:
        snapshot = self._snapshot()
        if not snapshot:
            return None
        points = [
            NumberDataPoint(
                attributes=attributes, start_time_unix_nano=start, time_unix_nano=now, value=state[0]
            )
            for attributes, start, state in snapshot
        ]
        data = Sum(
            data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE, is_monotonic=True
        )
        return Metric(name=self.name, description=self.description, unit=self.unit, data=data)


class AggregatedHistogram(_Instrument):
    """Explicit-bucket histogram per attribute set (`Histogram.record`).

    State per series: [count, sum, min, max, bucket 0, ..., bucket n]; bucket i counts values in
    (bounds[i-1], bounds[i]], the last one values above every bound, as OpenTelemetry defines them.
    """

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        boundaries: Sequence[float],
        limit: int,
        clock: Callable[[], int],
    ) -> None:
        super().__init__(name, unit, description, limit, clock)
        self.boundaries = tuple(float(bound) for bound in boundaries)
        if list(self.boundaries) != sorted(set(self.boundaries)):
            raise ValueError(f"{name}: bucket boundaries must be strictly increasing")

    def _empty_state(self) -> list[Any]:
        return [0, 0.0, math.inf, -math.inf] + [0] * (len(self.boundaries) + 1)

    def record(self, amount: float, attributes: Mapping[str, Any] | None = None, context: Any = None) -> None:
        if not amount >= 0:  # negative or NaN: the SDK drops these too
            return
        state = self._state(attributes)
        bucket = 4 + bisect_left(self.boundaries, amount)
        with self._lock:
            state[0] += 1
            state[1] += amount
            if amount < state[2]:
                state[2] = amount
            if amount > state[3]:
                state[3] = amount
            state[bucket] += 1

    def to_metric(self, now: int) -> Metric | None:
        snapshot = self._snapshot()
        if not snapshot:
            return None
        points = [
            HistogramDataPoint(
                attributes=attributes,
                start_time_unix_nano=start,
                time_unix_nano=now,
                count=state[0],
                sum=state[1],
                bucket_counts=state[4:],
                explicit_bounds=self.boundaries,
                min=state[2],
                max=state[3],
            )
            for attributes, start, state in snapshot
        ]
        data = Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE)
        return Metric(name=self.name, description=self.description, unit=self.unit, data=data)


class Aggregation:
    """The synchronous instruments of one service, and their way into the SDK's readers."""

    def __init__(
        self,
        meter: Meter,
        resource: Resource,
        scope: InstrumentationScope,
        cardinality_limit: int = DEFAULT_CARDINALITY_LIMIT,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """`meter` (of the SDK MeterProvider whose readers export these) gets the series gauge;
        `resource` and `scope` label a collection that held none of the SDK's metrics."""
        if cardinality_limit < 2:
            raise ValueError("cardinality_limit must leave room for the overflow series")
        self._resource = resource
        self._scope = scope
        self._limit = cardinality_limit
        self._clock = clock
        self._instruments: list[_Instrument] = []
        meter.create_observable_gauge(
            "sekha.metrics.series",
            callbacks=[self._observe_series],
            unit="{series}",
            description=f"Metric series held in process ({cardinality_limit} per instrument at most)",
        )

    def _observe_series(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(self.series_count())]

    def create_counter(self, name: str, unit: str = "", description: str = "") -> AggregatedCounter:
        counter = AggregatedCounter(name, unit, description, self._limit, self._clock)
        self._instruments.append(counter)
        return counter

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> AggregatedHistogram:
        histogram = AggregatedHistogram(
            name, unit, description, explicit_bucket_boundaries_advisory or (), self._limit, self._clock
        )
        self._instruments.append(histogram)
        return histogram

    def series_count(self) -> int:
        """Series held across every instrument (the `sekha.metrics.series` gauge)."""
        return sum(instrument.series_count() for instrument in self._instruments)

    def collect(self) -> list[Metric]:
        """Every instrument with at least one series, as SDK metric data, cumulative."""
        now = self._clock()
        return [
            metric for instrument in self._instruments if (metric := instrument.to_metric(now)) is not None
        ]

    def merge(self, data: MetricsData | None) -> MetricsData:
        """`data` (an SDK collection) with these metrics added to this scope's metrics."""
        ours = self.collect()
        resource_metrics = list(data.resource_metrics) if data is not None else []
        if not resource_metrics:
            resource_metrics = [
                ResourceMetrics(
                    resource=self._resource, scope_metrics=[], schema_url=self._resource.schema_url
                )
            ]
        first = resource_metrics[0]
        scopes = list(first.scope_metrics)
        for index, scope_metrics in enumerate(scopes):
            if scope_metrics.scope.name == self._scope.name:
                scopes[index] = replace(scope_metrics, metrics=[*scope_metrics.metrics, *ours])
                break
        else:
            if ours:
                scopes.append(
                    ScopeMetrics(scope=self._scope, metrics=ours, schema_url=self._scope.schema_url or "")
                )
        resource_metrics[0] = replace(first, scope_metrics=scopes)
        return MetricsData(resource_metrics=resource_metrics)

    def export_through(self, reader: MetricReader) -> None:
        """Make every collection `reader` receives carry these metrics as well.

        `_receive_metrics` is the one method each SDK reader (Prometheus, periodic OTLP, in-memory)
        implements to take a collection, and the only thing `MetricReader.collect` calls with it.
        """
        deliver = reader._receive_metrics

        def receive(metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
            deliver(self.merge(metrics_data), timeout_millis=timeout_millis, **kwargs)

        reader._receive_metrics = receive  # type: ignore[method-assign]
