"""Config reload without dropping a request: SIGHUP (`kill -HUP <pid>`) or `ConfigReloader.reload()`.

A reload reads and validates the file, builds what the new config needs (a new router channel
when the `router` section changed; `server.router_vectors`) and swaps it in with plain
assignments and no await in between, so every new request sees one whole configuration:

* `auth.keys`: the key ring is replaced, so keys rotate; a removed key is refused from the next
  call on, while calls it already authorized finish;
* `router` (target, timeout, API key, TLS): new requests embed through the new channel. Requests
  already running finish on the channel they started on (each pins its vector source,
  `vectors.VectorSwitch`); once the last of them has finished, the old channel is closed;
* `defaults` (request defaults and limits) and `migration` (backfill settings) apply to requests
  that start after the swap.

Running migrations are left alone: their tasks are neither cancelled nor started again, so a
backfill is never interrupted or run twice; its next batch embeds through the new router.

A reload is refused, and the running config keeps serving, when the new file does not validate,
when the new router channel cannot be set up (e.g. an unreadable TLS file), or when it changes
what only a restart can apply: `server` (listener, TLS, limits), `auth.enabled`, `telemetry`
(exporters and logging are set up once per process), `chroma` (where the vectors live) or
`state_path` (the registry of collections and migrations).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from embedding_service.config import EmbeddingConfig
from sekha.configloader import ConfigError
from sekha.server.auth import ApiKeyAuthInterceptor, KeyRing
from sekha.server.reload import changed_settings, on_sighup

if TYPE_CHECKING:
    from embedding_service.server import EmbeddingDeps, RouterVectors
    from embedding_service.service import EmbeddingStoreService
    from embedding_service.vectors import TrackedSource

__all__ = ["RESTART_SETTINGS", "ConfigReloader", "install_sighup", "restart_needed"]

log = logging.getLogger(__name__)

# What the process builds once: the listener, the auth interceptor chain, exporters and logging,
# the Chroma client and the SQLite registry.
RESTART_SETTINGS = ("server", "auth.enabled", "telemetry", "chroma", "state_path")


def restart_needed(running: EmbeddingConfig, new: EmbeddingConfig) -> str | None:
    """What in `new` only a restart can apply, or None."""
    return changed_settings(running, new, RESTART_SETTINGS)


class ConfigReloader:
    """Applies a new config to a running Embedding service; see the module docstring."""

    def __init__(
        self,
        service: EmbeddingStoreService,
        config: EmbeddingConfig,
        deps: EmbeddingDeps,
        router: RouterVectors,
        *,
        auth_interceptor: ApiKeyAuthInterceptor | None = None,
        path: str | Path | None = None,
    ) -> None:
        self._service = service
        self._config = config
        self._deps = deps
        self._router = router
        self._auth = auth_interceptor
        self.path = path  # the file to re-read; None: the embedded default
        self._lock = asyncio.Lock()
        # Replaced router channels still draining, with the channel each will close.
        self._retiring: dict[asyncio.Task[None], RouterVectors] = {}
        self._pending: set[asyncio.Task[bool]] = set()
        self.generation = 0
        self.last_error: str | None = None

    @property
    def config(self) -> EmbeddingConfig:
        return self._config

    @property
    def draining(self) -> int:
        """Replaced router channels still waiting for the requests that use them."""
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
            log.info("config reload requested")
            try:
                # Reading the file and expanding it is blocking work: keep it off the event loop.
                config = await asyncio.to_thread(EmbeddingConfig.load, source)
            except ConfigError as exc:
                return self._refuse(f"the new config is invalid ({len(exc.errors)} problems)", exc.errors)
            except OSError as exc:
                return self._refuse(f"the config file could not be read ({type(exc).__name__})")
            return await self._apply_locked(config)

    async def apply(self, config: EmbeddingConfig) -> bool:
        """Apply an already validated config (tests and embedders); False when refused."""
        async with self._lock:
            return await self._apply_locked(config)

    def _refuse(self, why: str, details: list[str] | None = None) -> bool:
        self.last_error = why
        log.error("config reload refused, the running config keeps serving: %s", why)
        for line in details or ():
            log.error("config problem: %s", line)
        return False

    async def _apply_locked(self, config: EmbeddingConfig) -> bool:
        from embedding_service.server import router_vectors  # server imports this module

        old = self._config
        needs_restart = restart_needed(old, config)
        if needs_restart is not None:
            return self._refuse(
                f"restart needed: {needs_restart} changed; restart the embedding service to apply that"
            )
        router: RouterVectors | None = None
        if config.router != old.router:
            if self._deps.vectors is not None or self._deps.router_connection is not None:
                # The embedder chose the vector source (tests): the config does not describe it.
                log.warning("router settings changed, but the vector source is injected: it stays")
            else:
                try:
                    router = router_vectors(config, self._deps)
                except ConfigError as exc:
                    why = f"the new router connection cannot be set up ({len(exc.errors)} problems)"
                    return self._refuse(why, exc.errors)
                except Exception as exc:
                    return self._refuse(f"building the new router connection failed ({type(exc).__name__})")
        # The swap: no await from here to the end of the block, so a new request sees either the
        # old configuration or the new one, whole.
        replaced = self._service.reconfigure(config, router.source if router is not None else None)
        if self._auth is not None:
            self._auth.keys = KeyRing.from_config(config.auth)
        self._config = config
        self.generation += 1
        self.last_error = None
        if router is not None and replaced is not None:
            previous, self._router = self._router, router
            task = asyncio.get_running_loop().create_task(
                self._retire(replaced, previous), name="retire-router-channel"
            )
            self._retiring[task] = previous
            task.add_done_callback(lambda done: self._retiring.pop(done, None))
        log.info(
            "config reloaded (generation %d): router %s%s",
            self.generation,
            config.router.target,
            " (new connection)" if router is not None else "",
        )
        return True

    async def _retire(self, replaced: TrackedSource, previous: RouterVectors) -> None:
        """Close the replaced router channel once the requests and calls using it have ended."""
        await replaced.drained()
        await _close(previous)
        log.info("previous router connection closed after its in-flight requests finished")

    async def retired(self) -> None:
        """Wait until every replaced router channel has been closed."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def close(self) -> None:
        """At server stop (after the grace period and the service): close every router channel."""
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        # The server and the migrations have stopped, so nothing uses a draining channel any more.
        draining = dict(self._retiring)
        for retiring in draining:
            retiring.cancel()
        await asyncio.gather(*draining, return_exceptions=True)
        for previous in draining.values():
            await _close(previous)
        await _close(self._router)


async def _close(router: RouterVectors) -> None:
    if router.close is None:
        return
    try:
        await router.close()
    except Exception as exc:
        log.warning("error while closing a router connection: %s", type(exc).__name__)


def install_sighup(reloader: ConfigReloader) -> None:
    """Reload the config on SIGHUP (where the platform has signals)."""
    on_sighup(reloader.reload_soon)
