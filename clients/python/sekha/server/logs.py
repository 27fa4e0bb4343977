"""Structured JSON logs, one object per line, with trace and span ids when a span is active.

Log records carry only what the code put in them; handlers never add request
bodies. The trace ids come from the current OpenTelemetry span, so a log line
can be found from a trace and the other way round.
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
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        return json.dumps(entry, default=str)


def resolve_log_level(configured: str = "INFO", environ: Mapping[str, str] | None = None) -> str:
    """$SEKHA_LOG_LEVEL when set, else the configured level (`telemetry.log_level`)."""
    env = os.environ if environ is None else environ
    return (env.get(LOG_LEVEL_ENV) or configured or "INFO").upper()


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Replace the root handlers with one JSON handler at `level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
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
