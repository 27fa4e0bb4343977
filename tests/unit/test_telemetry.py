"""`setup_telemetry`: what gets exported under which settings, and the standard OTEL_* variables."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from router_service.config import RouterConfig
from sekha.tracing import extract_from_metadata, inject_headers
from sekha_runtime.server.logs import configure_logging, resolve_log_level
from sekha_runtime.telemetry import TelemetryConfig, setup_telemetry

MINIMAL_ROUTER = """
providers:
  - id: p
    type: openai_compatible
    base_url: http://127.0.0.1:1/v1
    models: [{id: m, tasks: [chat_smart]}]
"""


def test_nothing_configured_exports_nothing_and_builds_no_spans() -> None:
    telemetry = setup_telemetry("svc", environ={})
    assert not telemetry.enabled
    span = telemetry.tracer.start_span("x")
    assert not span.is_recording() and not span.get_span_context().is_valid
    telemetry.shutdown()


def test_in_memory_exporter_and_reader_get_spans_and_metrics_with_the_service_name() -> None:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = setup_telemetry("svc", span_exporter=spans, metric_readers=(reader,), environ={})
    assert telemetry.tracing_enabled and telemetry.metrics_enabled
    with telemetry.tracer.start_as_current_span("work"):
        telemetry.instruments.cost.add(0.5, {"provider": "p", "model": "m"})
    telemetry.force_flush()
    (finished,) = spans.get_finished_spans()
    assert finished.resource.attributes["service.name"] == "svc"
    metrics = {
        m.name: m
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert sorted(metrics) == ["sekha.metrics.series", "sekha.router.cost"]
    assert [p.value for p in metrics["sekha.router.cost"].data.data_points] == [0.5]
    assert [p.value for p in metrics["sekha.metrics.series"].data.data_points] == [1]
    telemetry.shutdown()
    telemetry.shutdown()  # idempotent


def test_standard_variables_name_the_service_and_pick_the_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    telemetry = setup_telemetry("svc", span_exporter=InMemorySpanExporter(), environ={})
    provider = telemetry.tracer_provider
    assert provider.resource.attributes["service.name"] == "from-env"  # type: ignore[attr-defined]
    assert provider.resource.attributes["deployment.environment"] == "test"  # type: ignore[attr-defined]
    assert "0.25" in provider.sampler.get_description()  # type: ignore[attr-defined]
    telemetry.shutdown()


def test_otlp_endpoint_from_config_or_environment_turns_tracing_on(collector: Collector) -> None:
    configured = setup_telemetry("svc", TelemetryConfig(otlp_endpoint=collector.endpoint), environ={})
    from_env = setup_telemetry("svc", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint})
    try:
        assert configured.tracing_enabled and configured.metrics_enabled  # OTLP traces and metrics
        assert from_env.tracing_enabled and from_env.metrics_enabled
    finally:
        configured.shutdown()
        from_env.shutdown()


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
        {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
        },
    ],
    ids=["sdk-disabled", "exporters-none"],
)
def test_standard_switches_turn_exporting_off(environ: dict[str, str]) -> None:
    telemetry = setup_telemetry("svc", environ=environ)
    assert not telemetry.enabled
    telemetry.shutdown()


def test_content_capture_is_off_unless_asked_for() -> None:
    assert not setup_telemetry("svc", environ={}).capture_message_content
    assert setup_telemetry(
        "svc", TelemetryConfig(capture_message_content=True), environ={}
    ).capture_message_content
    on = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "True"}
    assert setup_telemetry("svc", environ=on).capture_message_content


def test_telemetry_section_validates_and_takes_environment_overrides() -> None:
    assert TelemetryConfig(log_level="debug", otlp_endpoint="").model_dump() == {
        "otlp_endpoint": None,
        "capture_message_content": False,
        "log_level": "DEBUG",
        "event_log_window_s": 1.0,
    }
    with pytest.raises(ValidationError):
        TelemetryConfig(log_level="chatty")
    with pytest.raises(ValidationError):
        TelemetryConfig(sample_ratio=0.1)  # type: ignore[call-arg]  # sampling is OTEL_TRACES_SAMPLER's job
    assert (
        RouterConfig.model_validate(
            {
                "providers": [
                    {
                        "id": "p",
                        "type": "ollama",
                        "base_url": "http://x",
                        "models": [{"id": "m", "tasks": ["chat_smart"]}],
                    }
                ]
            }
        ).telemetry
        == TelemetryConfig()
    )


def test_router_config_file_and_env_set_the_telemetry_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "router.yaml"
    path.write_text(MINIMAL_ROUTER + "telemetry: {otlp_endpoint: 'http://collector:4317'}\n")
    config = RouterConfig.load(path, environ={"SEKHA_ROUTER__TELEMETRY__CAPTURE_MESSAGE_CONTENT": "true"})
    assert config.telemetry == TelemetryConfig(
        otlp_endpoint="http://collector:4317", capture_message_content=True
    )


def test_log_level_environment_wins_over_the_config() -> None:
    assert resolve_log_level("warning", {}) == "WARNING"
    assert resolve_log_level("WARNING", {"SEKHA_LOG_LEVEL": "debug"}) == "DEBUG"


def test_trace_context_round_trips_through_headers_and_metadata() -> None:
    assert extract_from_metadata(()) is None
    assert extract_from_metadata((("authorization", "Bearer x"),)) is None
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry("svc", span_exporter=spans, environ={})
    with telemetry.tracer.start_as_current_span("parent") as parent:
        headers: dict[str, str] = {}
        inject_headers(headers)
    context = extract_from_metadata(tuple(headers.items()))
    assert context is not None
    remote = trace.get_current_span(context).get_span_context()
    assert (remote.trace_id, remote.span_id) == (
        parent.get_span_context().trace_id,
        parent.get_span_context().span_id,
    )
    assert remote.is_remote
    telemetry.shutdown()


@dataclass
class Collector:
    """A real OTLP/gRPC collector on loopback that keeps what it receives, decoded."""

    endpoint: str
    metrics: list[Any] = field(default_factory=list)
    spans: list[Any] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)


@pytest.fixture
def collector() -> Iterator[Collector]:
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    received = Collector(f"http://127.0.0.1:{port}")

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # the generated API's name
            received.metrics.extend(
                m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            )
            return metrics_service_pb2.ExportMetricsServiceResponse()

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # the generated API's name
            received.spans.extend(
                s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
            )
            return trace_service_pb2.ExportTraceServiceResponse()

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # the generated API's name
            received.logs.extend(
                r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records
            )
            return logs_service_pb2.ExportLogsServiceResponse()

    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    server.start()
    try:
        yield received
    finally:
        server.stop(0)


def test_otlp_push_carries_the_aggregated_metrics_and_the_spans_to_a_real_collector(
    collector: Collector,
) -> None:
    telemetry = setup_telemetry("svc", TelemetryConfig(otlp_endpoint=collector.endpoint), environ={})
    configure_logging("INFO", stream=io.StringIO(), logger_provider=telemetry.logger_provider)
    try:
        with telemetry.tracer.start_as_current_span("work") as span:
            telemetry.instruments.cost.add(0.25, {"provider": "p", "model": "m"})
            for seconds in (0.005, 0.05, 0.5):
                telemetry.instruments.operation_duration.record(seconds, {"gen_ai.operation.name": "chat"})
            logging.getLogger("sekha.test").warning("provider %s failed", "p", extra={"attempt": 2})
        telemetry.force_flush()
    finally:
        configure_logging("INFO")
        telemetry.shutdown()

    by_name = {m.name: m for m in collector.metrics}
    assert by_name["sekha.router.cost"].sum.data_points[0].as_double == 0.25
    assert by_name["sekha.router.cost"].sum.is_monotonic
    duration = by_name["gen_ai.client.operation.duration"].histogram.data_points[0]
    assert (duration.count, round(duration.sum, 3), duration.min, duration.max) == (3, 0.555, 0.005, 0.5)
    assert sum(duration.bucket_counts) == 3
    assert list(duration.explicit_bounds)[:2] == [0.01, 0.02]  # the GenAI convention's buckets
    assert "sekha.metrics.series" in by_name
    assert [s.name for s in collector.spans] == ["work"]
    (log,) = collector.logs
    assert (log.body.string_value, log.severity_text) == ("provider p failed", "WARN")
    assert log.trace_id == span.get_span_context().trace_id.to_bytes(16, "big")
    assert {a.key: a.value.int_value for a in log.attributes} == {"attempt": 2}


def test_logs_over_otlp_carry_the_json_line_fields_and_never_exception_text() -> None:
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter

    exported = InMemoryLogRecordExporter()
    telemetry = setup_telemetry("svc", log_exporter=exported, environ={})
    lines = io.StringIO()
    configure_logging("DEBUG", stream=lines, logger_provider=telemetry.logger_provider)
    try:
        try:
            raise RuntimeError("upstream said: sk-SENTINEL-KEY in the prompt")
        except RuntimeError:
            logging.getLogger("sekha.test").error("attempt failed", exc_info=True, extra={"kind": "http_500"})
        telemetry.force_flush()
    finally:
        configure_logging("INFO")
        telemetry.shutdown()
    (record,) = [r.log_record for r in exported.get_finished_logs()]
    assert (record.body, record.severity_text, dict(record.attributes or {})) == (
        "attempt failed",
        "ERROR",
        {"kind": "http_500"},
    )
    assert "SENTINEL" not in repr(record) and "SENTINEL" not in lines.getvalue()
    assert json.loads(lines.getvalue())["kind"] == "http_500"  # the JSON line says the same
