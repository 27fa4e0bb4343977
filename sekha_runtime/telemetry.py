"""Traces and metrics for both services: one explicit setup, no global state needed.

`setup_telemetry(service_name, settings)` builds a `Telemetry`: a TracerProvider and a
MeterProvider of their own, the tracer, the meter and every instrument the services record
(`Instruments`, whose names are the contract with `deploy/metrics.txt`). Each service's
`__main__` calls it once and passes the result to `build_server` (TGI style: the command line
owns process setup); tests call it with in-memory exporters and readers, so two services in
one process each get their own providers and nothing depends on `trace.set_tracer_provider`,
which may run only once per process.

What gets exported:

* traces go over OTLP/gRPC (BatchSpanProcessor) when `settings.otlp_endpoint` or
  `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` is set, or to the exporter a test hands in; with no
  exporter tracing is off (a no-op tracer: no spans are built at all);
* metrics go to every reader handed in, to a Prometheus registry of this Telemetry's own when
  `prometheus=True` (served by `MetricsEndpoint` on `server.metrics_port`), and over OTLP
  (PeriodicExportingMetricReader) when an endpoint is set; the synchronous instruments
  aggregate in `sekha_runtime.aggregation` and join each collection there (the SDK's own instruments
  cost ten times as much per measurement);
* logs go over OTLP too (the same JSON-line fields, never exception text) when an endpoint is
  set: `configure_logging(..., logger_provider=telemetry.logger_provider)` adds the handler;
* the standard variables keep working: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (through
  `Resource.create()`), OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (the SDK's default
  sampler), OTEL_EXPORTER_OTLP_* (headers, certificates, timeouts; read by the exporters),
  OTEL_SDK_DISABLED, and OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER / OTEL_LOGS_EXPORTER = none.

Prompt and completion text are recorded only when content capture is on
(`capture_message_content`, or OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true); keys
and authorization metadata never are, in any mode.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import metrics, trace
from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    # The aggregation imports the OpenTelemetry metrics SDK (about 40 ms); it is imported only
    # when metrics are on, so a router without metrics starts without it.
    from sekha_runtime.aggregation import Adder, Recorder

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "DURATION_BUCKETS_S",
    "TOKEN_BUCKETS",
    "Instruments",
    "MetricsEndpoint",
    "Telemetry",
    "TelemetryConfig",
    "setup_telemetry",
]

log = logging.getLogger(__name__)

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
INSTRUMENTATION_SCOPE = "sekha"

# Bucket boundaries from the OpenTelemetry GenAI metric conventions.
TOKEN_BUCKETS: tuple[float, ...] = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
# RPCs include fast catalog reads and long streams; the router's own share is sub-millisecond.
RPC_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
OVERHEAD_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class TelemetryConfig(BaseModel):
    """The `telemetry:` section of both services' configs (the OTEL_* variables still apply)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/gRPC collector, e.g. http://otel-collector:4317; "
        "null: $OTEL_EXPORTER_OTLP_ENDPOINT, else traces are not exported",
    )
    capture_message_content: bool = Field(
        default=False,
        description="record prompts and completions on spans (also "
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true)",
    )
    log_level: str = Field(default="INFO", description="root log level; $SEKHA_LOG_LEVEL wins")
    event_log_window_s: float = Field(
        default=1.0,
        gt=0,
        description="operational events (provider failures, breaker transitions, ...): the first of "
        "a kind per provider in this window is logged, the rest are counted in one summary line",
    )

    @field_validator("otlp_endpoint", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level: use one of {', '.join(_LOG_LEVELS)}")
        return level


class _InstrumentFactory(Protocol):
    """An OpenTelemetry Meter, or our `Aggregation`: both make counters and histograms alike."""

    def create_counter(self, name: str, unit: str = "", description: str = "") -> Any: ...

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class Instruments:
    """Every synchronous instrument the services record. The Prometheus names
    (`deploy/metrics.txt`) follow from name + unit: dots become `_`, unit `s` adds `_seconds`,
    counters add `_total`, and unit annotations in braces add nothing.

    With metrics on they are `sekha_runtime.aggregation` instruments (about 1 us per measurement instead
    of the SDK's 11 us), with metrics off the API's no-op ones. Four more are observable (read
    when collected, so they cost nothing per call): `sekha.rpc.requests` and `sekha.rpc.in_flight`
    (`sekha_runtime.server.tracing.ServerTelemetry`), `sekha.router.breaker.state`
    (`router_service.observability.RouterObserver`) and `sekha.metrics.series`
    (`sekha_runtime.aggregation`)."""

    rpc_duration: Recorder
    token_usage: Recorder
    operation_duration: Recorder
    fallbacks: Adder
    breaker_transitions: Adder
    cost: Adder
    time_to_first_token: Recorder
    overhead: Recorder
    documents_ingested: Adder
    search_duration: Recorder
    http_duration: Recorder

    @classmethod
    def create(cls, meter: _InstrumentFactory) -> Instruments:
        return cls(
            rpc_duration=meter.create_histogram(
                "sekha.rpc.duration",
                unit="s",
                description="RPC duration as the server saw it",
                explicit_bucket_boundaries_advisory=RPC_BUCKETS_S,
            ),
            token_usage=meter.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description="Tokens per provider call, by gen_ai.token.type",
                explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
            ),
            operation_duration=meter.create_histogram(
                "gen_ai.client.operation.duration",
                unit="s",
                description="Duration of each provider call (attempt)",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
            ),
            fallbacks=meter.create_counter(
                "sekha.router.fallbacks",
                unit="{fallback}",
                description="Moves to another provider within a request",
            ),
            breaker_transitions=meter.create_counter(
                "sekha.router.breaker.transitions",
                unit="{transition}",
                description="Circuit breaker state changes",
            ),
            cost=meter.create_counter(
                "sekha.router.cost", unit="usd", description="Provider cost in US dollars (known prices only)"
            ),
            time_to_first_token=meter.create_histogram(
                "sekha.router.time_to_first_token",
                unit="s",
                description="Time from the provider call to its first streamed text",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
            ),
            overhead=meter.create_histogram(
                "sekha.router.overhead",
                unit="s",
                description="RPC time not spent waiting for providers",
                explicit_bucket_boundaries_advisory=OVERHEAD_BUCKETS_S,
            ),
            documents_ingested=meter.create_counter(
                "sekha.embedding.documents_ingested",
                unit="{document}",
                description="Documents written, per collection",
            ),
            search_duration=meter.create_histogram(
                "sekha.embedding.search.duration",
                unit="s",
                description="SearchDocuments latency, embedding the query included",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
            ),
            http_duration=meter.create_histogram(
                "http.server.request.duration",
                unit="s",
                description="Requests to the Router's OpenAI-compatible HTTP door, by route and status",
                explicit_bucket_boundaries_advisory=RPC_BUCKETS_S,
            ),
        )


@dataclass
class Telemetry:
    """Providers, tracer, meter and instruments of one service."""

    service_name: str
    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    tracer: trace.Tracer
    meter: metrics.Meter
    instruments: Instruments
    tracing_enabled: bool
    metrics_enabled: bool
    capture_message_content: bool = False
    prometheus_registry: Any = None  # prometheus_client.CollectorRegistry when prometheus=True
    # An SDK LoggerProvider when logs are exported over OTLP (`sekha_runtime.server.logs.configure_logging`).
    logger_provider: Any = None
    _closed: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.tracing_enabled or self.metrics_enabled

    def set_global(self) -> None:
        """Make these the process-wide providers (for libraries using the global API).

        Only a process's entry point should call this: the globals can be set once per process.
        """
        if self.tracing_enabled:
            trace.set_tracer_provider(self.tracer_provider)
        if self.metrics_enabled:
            metrics.set_meter_provider(self.meter_provider)

    def force_flush(self, timeout_millis: int = 5_000) -> None:
        """Export buffered spans (and metrics to push exporters) now."""
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop exporters; idempotent."""
        if self._closed:
            return
        self._closed = True
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                try:
                    stop()
                except Exception as exc:  # shutdown must go on
                    log.warning("telemetry shutdown failed: %s", type(exc).__name__)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _resource(service_name: str) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    # Resource.create() reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; our name is only
    # the default when neither names the service.
    detected = Resource.create()
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: service_name}))
    return detected


def setup_telemetry(
    service_name: str,
    settings: TelemetryConfig | None = None,
    span_exporter: Any = None,
    metric_readers: Sequence[Any] = (),
    log_exporter: Any = None,
    *,
    prometheus: bool = False,
    sampler: Any = None,
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """Build the telemetry of one service (see the module docstring for what is exported).

    `span_exporter` replaces the OTLP span exporter (tests: InMemorySpanExporter);
    `metric_readers` are added to the MeterProvider (tests: InMemoryMetricReader);
    `prometheus` adds a PrometheusMetricReader on a CollectorRegistry of this Telemetry's own;
    `log_exporter` replaces the OTLP log exporter (tests: InMemoryLogRecordExporter);
    `sampler` overrides OTEL_TRACES_SAMPLER (benchmarks).
    """
    env = os.environ if environ is None else environ
    settings = settings or TelemetryConfig()
    capture = settings.capture_message_content or _truthy(env.get(CAPTURE_CONTENT_ENV))
    disabled = _truthy(env.get("OTEL_SDK_DISABLED"))
    traces_endpoint = (
        settings.otlp_endpoint
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    metrics_endpoint = (
        settings.otlp_endpoint
        or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        traces_endpoint = None
    logs_endpoint = (
        settings.otlp_endpoint
        or env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    if env.get("OTEL_LOGS_EXPORTER", "").strip().lower() == "none":
        logs_endpoint = None
    if env.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "none":
        metrics_endpoint = None

    resource = None
    tracer_provider: trace.TracerProvider
    exporter = span_exporter
    if exporter is None and traces_endpoint and not disabled:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # The endpoint decided on above, not one the exporter would read from os.environ again
        # (`environ` may be another mapping); headers, certificates and timeouts it reads itself.
        exporter = OTLPSpanExporter(endpoint=traces_endpoint)
    if exporter is not None and not disabled:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = _resource(service_name)
        sdk_tracer_provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
        sdk_tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer_provider = sdk_tracer_provider
    else:
        tracer_provider = trace.NoOpTracerProvider()

    readers: list[Any] = [] if disabled else list(metric_readers)
    registry = None
    if prometheus and not disabled:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
    if metrics_endpoint and not disabled:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        metric_exporter = OTLPMetricExporter(endpoint=metrics_endpoint)
        readers.append(PeriodicExportingMetricReader(metric_exporter))
    meter_provider: metrics.MeterProvider
    instruments: Instruments
    if readers:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from sekha_runtime.aggregation import Aggregation

        resource = resource or _resource(service_name)
        meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        meter = meter_provider.get_meter(INSTRUMENTATION_SCOPE)
        aggregation = Aggregation(meter, resource, InstrumentationScope(INSTRUMENTATION_SCOPE))
        for reader in readers:
            aggregation.export_through(reader)
        instruments = Instruments.create(aggregation)
    else:
        meter_provider = metrics.NoOpMeterProvider()
        meter = meter_provider.get_meter(INSTRUMENTATION_SCOPE)
        instruments = Instruments.create(meter)

    logger_provider = None
    log_exporter_in_use = log_exporter
    if log_exporter_in_use is None and logs_endpoint and not disabled:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        log_exporter_in_use = OTLPLogExporter(endpoint=logs_endpoint)
    if log_exporter_in_use is not None and not disabled:
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        logger_provider = LoggerProvider(resource=resource or _resource(service_name), shutdown_on_exit=False)
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter_in_use))

    tracer = tracer_provider.get_tracer(INSTRUMENTATION_SCOPE)
    return Telemetry(
        service_name=service_name,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        tracer=tracer,
        meter=meter,
        instruments=instruments,
        tracing_enabled=not isinstance(tracer_provider, trace.NoOpTracerProvider),
        metrics_enabled=bool(readers),
        capture_message_content=capture,
        prometheus_registry=registry,
        logger_provider=logger_provider,
    )


class MetricsEndpoint:
    """Serves a Prometheus registry at `/metrics` from the service's own event loop.

    Why not prometheus_client's `start_http_server`: it serves from a thread whose shutdown
    polls every 0.5 s, and it cannot share the service's lifecycle. Here the endpoint starts and
    stops with the gRPC server, binds port 0 in tests and reports the port it got; the text is
    rendered on a worker thread so a large scrape never stalls RPCs. Content negotiation
    (OpenMetrics or the classic text format) is prometheus_client's own.
    """

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self._runner: Any = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
