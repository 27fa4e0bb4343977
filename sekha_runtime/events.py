"""Operational events: one structured log line each, rate-limited so a failing dependency
cannot flood the log.

An event is a log record whose `event` field names what happened (`provider_attempt_failed`,
`breaker_transition`, ...) and whose other `extra=` fields say about what (provider, model,
error kind, HTTP status, latency); `sekha_runtime.server.logs.JsonFormatter` writes it as one
JSON line with the current trace and span ids. docs/ARCHITECTURE.md lists every event.

Rate limit: per (event, subject) — the subject is usually a provider id — the first event of a
window (`window_s`, default one second) is logged; the ones after it in the same window are
only counted, and when the window ends one summary line with the same fields and
`suppressed: N` is logged. A dead provider at a thousand requests per second therefore costs
two lines per second, and no failure goes uncounted. `flush()` (at shutdown) logs the counts of
windows still open.

Fields are what the caller passes: never a request or response body, a prompt or a key. Free
text from a dependency (an exception's message, a provider's error body) must not be passed;
name the exception's class instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_WINDOW_S", "EventLog"]

DEFAULT_WINDOW_S = 1.0
# Windows are forgotten once closed; this many open ones (event kinds x subjects) at most.
_MAX_WINDOWS = 4096


@dataclass
class _Window:
    started: float
    level: int
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    suppressed: int = 0
    flush: asyncio.TimerHandle | None = None


class EventLog:
    """Writes operational events to `logger`; see the module docstring."""

    def __init__(
        self,
        logger: logging.Logger | str,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def warning(self, event: str, message: str, *, subject: str = "", **fields: Any) -> None:
        """A failure (WARNING)."""
        self.emit(logging.WARNING, event, message, subject=subject, **fields)

    def info(self, event: str, message: str, *, subject: str = "", **fields: Any) -> None:
        """A recovery or a change an operator wants to see (INFO)."""
        self.emit(logging.INFO, event, message, subject=subject, **fields)

    def emit(self, level: int, event: str, message: str, *, subject: str = "", **fields: Any) -> None:
        """Log the event, or count it when one of its kind and subject was logged this window."""
        if not self.logger.isEnabledFor(level):
            return
        key = (event, subject)
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.started < self.window_s:
            window.suppressed += 1
            window.level = max(window.level, level)
            window.message = message
            window.fields = fields
            if window.flush is None:
                window.flush = self._schedule(window.started + self.window_s - now, key)
            return
        if window is not None:
            self._close(key, window)  # its timer did not run (no event loop): report it now
        if len(self._windows) >= _MAX_WINDOWS:
            self._prune(now)
        self._windows[key] = _Window(now, level, message)
        self._write(level, event, message, fields)

    def flush(self) -> None:
        """Log the counts of every open window (at shutdown: no count is lost)."""
        for key, window in list(self._windows.items()):
            self._close(key, window)

    # -- internals ------------------------------------------------------------------------

    def _write(self, level: int, event: str, message: str, fields: dict[str, Any]) -> None:
        self.logger.log(level, message, extra={"event": event, **fields})

    def _schedule(self, delay: float, key: tuple[str, str]) -> asyncio.TimerHandle | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None  # no loop: the count goes out with the next event of this kind, or at flush
        return loop.call_later(max(delay, 0.0), self._expire, key)

    def _expire(self, key: tuple[str, str]) -> None:
        window = self._windows.get(key)
        if window is not None:
            self._close(key, window)

    def _close(self, key: tuple[str, str], window: _Window) -> None:
        """Forget the window, logging what it suppressed."""
        self._windows.pop(key, None)
        if window.flush is not None:
            window.flush.cancel()
            window.flush = None
        if window.suppressed:
            event = key[0]
            self._write(
                window.level,
                event,
                f"{window.suppressed} more {event} events in {self.window_s:g} s; the last: {window.message}",
                {**window.fields, "suppressed": window.suppressed},
            )
            window.suppressed = 0

    def _prune(self, now: float) -> None:
        for key, window in list(self._windows.items()):
            if now - window.started >= self.window_s:
                self._close(key, window)
