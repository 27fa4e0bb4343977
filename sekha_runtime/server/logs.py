"""Structured JSON logs, one object per line, with trace and span ids when a span is active;
the same records over OTLP when telemetry exports logs (`OtlpLogHandler`).

Log records carry only what the code put in them; handlers never add request bodies, and
neither handler writes exception text or tracebacks (an exception's message may hold what a
provider echoed back: a prompt, a key). The trace ids come from the current OpenTelemetry span,
so a log line can be found from a trace and the other way round.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
LOG_LEVEL_ENV = "SEKHA_LOG_LEVEL"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = f"{context.trace_id:032x}"
            entry["span_id"] = f"{context.span_id:016x}"
        entry.update(_extras(record))
        return json.dumps(entry, default=str)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """What the code attached with `extra=`: the fields beyond the standard ones."""
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}


class OtlpLogHandler(logging.Handler):
    """Sends each record to an OpenTelemetry LoggerProvider (exported over OTLP).

    Why not the SDK's `LoggingHandler`: it is deprecated, and it adds the exception's message
    and traceback as attributes. This one sends what the JSON line holds: the message, the
    level, the logger's name, the `extra=` fields (as strings unless they are plain scalars),
    and the current span as the record's context.
    """

    def __init__(self, logger_provider: Any, level: int = logging.NOTSET) -> None:
        super().__init__(level=level)
        self._provider = logger_provider

    def emit(self, record: logging.LogRecord) -> None:
        from opentelemetry._logs import LogRecord, SeverityNumber

        try:
            attributes = {
                key: value if isinstance(value, str | bool | int | float) else str(value)
                for key, value in _extras(record).items()
            }
            severity = _SEVERITY.get(record.levelno, SeverityNumber.UNSPECIFIED)
            self._provider.get_logger(record.name).emit(
                LogRecord(
                    timestamp=int(record.created * 1e9),
                    severity_text=_SEVERITY_TEXT.get(record.levelname, record.levelname),
                    severity_number=severity,
                    body=record.getMessage(),
                    attributes=attributes,
                )
            )
        except Exception:  # a log line must never break the code that logs it
            self.handleError(record)


def _severities() -> dict[int, Any]:
    from opentelemetry._logs import SeverityNumber

    return {
        logging.DEBUG: SeverityNumber.DEBUG,
        logging.INFO: SeverityNumber.INFO,
        logging.WARNING: SeverityNumber.WARN,
        logging.ERROR: SeverityNumber.ERROR,
        logging.CRITICAL: SeverityNumber.FATAL,
    }


_SEVERITY = _severities()
_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}  # the OpenTelemetry log data model's names


def resolve_log_level(configured: str = "INFO", environ: Mapping[str, str] | None = None) -> str:
    """$SEKHA_LOG_LEVEL when set, else the configured level (`telemetry.log_level`)."""
    env = os.environ if environ is None else environ
    return (env.get(LOG_LEVEL_ENV) or configured or "INFO").upper()


def configure_logging(level: str = "INFO", stream: Any = None, logger_provider: Any = None) -> None:
    """Replace the root handlers with one JSON handler at `level`, plus an OTLP one when
    `logger_provider` (a `Telemetry.logger_provider`) is given."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler] if logger_provider is None else [handler, OtlpLogHandler(logger_provider)]
    root.setLevel(level.upper())
    # LiteLLM (its token counter too) and httpx log request details at INFO/DEBUG; they may hold
    # prompts. LiteLLM's loggers have spaces in their names, so they are not children of "LiteLLM".
    for noisy in (
        "LiteLLM",
        "LiteLLM Router",
        "LiteLLM Proxy",
        "litellm",
        "httpx",
        "httpcore",
        "chromadb",
        "aiohttp.access",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
