"""Config reload plumbing shared by both services: the reloader's frame, the SIGHUP hook, the
restart check, the admin signal.

Each service owns what a reload swaps (`router_service.reload`, `embedding_service.reload`,
subclasses of `Reloader`); what is the same for both lives here: one reload at a time, the file
read off the event loop, refusals logged with every problem while the running config keeps
serving, replaced parts retired once their requests end and closed at stop, which settings
changed that only a restart can apply, how SIGHUP is wired to a reload, and the admin command's
last step (`sekha-router reload`, `sekha-embedding reload`), which signals the running process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from sekha_runtime.configloader import ConfigError

__all__ = ["Reloader", "changed_settings", "on_sighup", "send_sighup"]

ConfigT = TypeVar("ConfigT")
RetiredT = TypeVar("RetiredT")

_MISSING = object()


def _setting(config: object, path: str) -> object:
    value = config
    for name in path.split("."):
        # A section a config class does not have compares as absent on both sides.
        value = getattr(value, name, _MISSING)
        if value is _MISSING:
            return None
    return value


def changed_settings(running: object, new: object, paths: Sequence[str]) -> str | None:
    """The dotted `paths` (e.g. `server`, `auth.enabled`) whose values differ, comma separated, or None."""
    changed = [path for path in paths if _setting(running, path) != _setting(new, path)]
    return ", ".join(changed) if changed else None


def on_sighup(reload_soon: Callable[[], None]) -> None:
    """Call `reload_soon` (it must not block: it schedules the reload) on SIGHUP, where there are signals."""
    with contextlib.suppress(NotImplementedError, AttributeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_soon)


def send_sighup(pid: int, service: str) -> int:
    """The admin command's last step: SIGHUP to `pid`; the exit code (1 when there is no such process)."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"no process {pid}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to {pid}; the {service} logs 'config reloaded' or 'config reload refused'")
    return 0


class Reloader(Generic[ConfigT, RetiredT]):
    """The frame of a service's config reloader; a subclass says what reading and applying mean.

    `_load(source)` reads and validates a file (blocking: it runs on a worker thread);
    `_apply_locked(config)` builds what the config needs and swaps it in, returning False through
    `_refuse` when it cannot; a replaced part (a `RetiredT`) goes into `_retiring` with the task
    that closes it once its requests have ended. `_close_retired` and `_close_current` close them
    at server stop.
    """

    def __init__(self, path: str | Path | None, logger: logging.Logger) -> None:
        self.path = path  # the file to re-read; None: the service's default
        self._log = logger
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], RetiredT] = {}
        self._pending: set[asyncio.Task[bool]] = set()
        self.generation = 0
        self.last_error: str | None = None

    @property
    def draining(self) -> int:
        """Replaced parts still waiting for the requests that use them."""
        return len(self._retiring)

    def reload_soon(self) -> None:
        """Schedule a reload (what the SIGHUP handler calls)."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="config-reload")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def reload(self, path: str | Path | None = None) -> bool:
        """Re-read the config file and apply it; False (logged) when it was refused."""
        source = path if path is not None else self.path
        async with self._lock:
            self._log.info("config reload requested")
            try:
                # Reading, expanding and validating (maybe against LiteLLM's model map) blocks.
                config = await asyncio.to_thread(self._load, source)
            except ConfigError as exc:
                return self._refuse(f"the new config is invalid ({len(exc.errors)} problems)", exc.errors)
            except OSError as exc:
                return self._refuse(f"the config file could not be read ({type(exc).__name__})")
            return await self._apply_locked(config)

    async def apply(self, config: ConfigT) -> bool:
        """Apply an already validated config (tests and embedders); False when refused."""
        async with self._lock:
            return await self._apply_locked(config)

    def _refuse(self, why: str, details: Sequence[str] | None = None) -> bool:
        self.last_error = why
        self._log.warning(
            "config reload refused, the running config keeps serving: %s",
            why,
            extra={"event": "config_reload_refused", "reason": why, "problems": len(details or ())},
        )
        for line in details or ():
            self._log.warning("config problem: %s", line, extra={"event": "config_problem"})
        return False

    async def retired(self) -> None:
        """Wait until every replaced part has been closed."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def close(self) -> None:
        """At server stop (after the grace period): close the current and every draining part."""
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        # The server has stopped, so nothing uses a draining part any more: close them now.
        draining = dict(self._retiring)
        for retiring in draining:
            retiring.cancel()
        await asyncio.gather(*draining, return_exceptions=True)
        for retired in draining.values():
            await self._close_retired(retired)
        await self._close_current()

    def install_sighup(self) -> None:
        """Reload the config on SIGHUP (where the platform has signals)."""
        on_sighup(self.reload_soon)

    # -- what a service provides ------------------------------------------------------------

    def _load(self, source: str | Path | None) -> ConfigT:
        raise NotImplementedError

    async def _apply_locked(self, config: ConfigT) -> bool:
        raise NotImplementedError

    async def _close_retired(self, retired: RetiredT) -> None:
        raise NotImplementedError

    async def _close_current(self) -> None:
        raise NotImplementedError
