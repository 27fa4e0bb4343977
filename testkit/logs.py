"""The services' JSON log lines, captured in-process for tests.

`capture_json_logs()` sets logging up exactly as a service process does
(`sekha_runtime.server.logs.configure_logging`: one JSON handler on the root logger), writing
into memory instead of stderr, and puts the previous handlers back afterwards. Read a
process's log with `testkit.service_process.ServiceProcess.log_text()` instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

from sekha_runtime.server.logs import configure_logging

__all__ = ["JsonLog", "capture_json_logs", "parse_json_lines"]


def parse_json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as JSON; a line that is not JSON fails the test (the stream must be pure)."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line[:200]!r}") from None
    return entries


class JsonLog:
    """What the JSON handler wrote so far."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        return self._stream.getvalue()

    def entries(self) -> list[dict[str, Any]]:
        return parse_json_lines(self.text)

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """The lines of event `name` whose fields equal `fields`."""
        return [
            e
            for e in self.entries()
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]


@contextlib.contextmanager
def capture_json_logs(level: str = "INFO") -> Iterator[JsonLog]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    stream = io.StringIO()
    configure_logging(level, stream=stream)
    try:
        yield JsonLog(stream)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, logger_level in saved_levels.items():
            logging.getLogger(name).setLevel(logger_level)
