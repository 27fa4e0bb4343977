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
  that start after the swap; `batching` to the next embedding call (what was measured of each
  model's speed is kept).

Running migrations are left alone: their tasks are neither cancelled nor started again, so a
backfill is never interrupted or run twice; its next batch embeds through the new router.

A reload is refused, and the running config keeps serving, when the new file does not validate,
when the new router channel cannot be set up (e.g. an unreadable TLS file), or when it changes
what only a restart can apply: `server` (listener, TLS, limits), `auth.enabled`, `telemetry`
(exporters and logging are set up once per process), `chroma` (where the vectors live),
`state_path` or `state` (the registry of collections and migrations, and the leases).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from embedding_service.config import EmbeddingConfig
from sekha_runtime.configloader import ConfigError
from sekha_runtime.server.auth import ApiKeyAuth, KeyRing
from sekha_runtime.server.reload import Reloader, changed_settings

if TYPE_CHECKING:
    from embedding_service.server import EmbeddingDeps, RouterVectors
    from embedding_service.service import EmbeddingStoreService
    from embedding_service.vectors import TrackedSource

__all__ = ["RESTART_SETTINGS", "ConfigReloader", "install_sighup", "restart_needed"]

log = logging.getLogger(__name__)

# What the process builds once: the listener, the auth interceptor chain, exporters and logging,
# the Chroma client, the registry (SQLite or Redis) and the leases.
RESTART_SETTINGS = ("server", "auth.enabled", "telemetry", "chroma", "state_path", "state")


def restart_needed(running: EmbeddingConfig, new: EmbeddingConfig) -> str | None:
    """What in `new` only a restart can apply, or None."""
    return changed_settings(running, new, RESTART_SETTINGS)


class ConfigReloader(Reloader[EmbeddingConfig, "RouterVectors"]):
    """Applies a new config to a running Embedding service; see the module docstring.

    A retired part is a replaced router connection."""

    def __init__(
        self,
        service: EmbeddingStoreService,
        config: EmbeddingConfig,
        deps: EmbeddingDeps,
        router: RouterVectors,
        *,
        auth: ApiKeyAuth | None = None,
        path: str | Path | None = None,
    ) -> None:
        """`path` None re-reads the embedded default."""
        super().__init__(path, log)
        self._service = service
        self._config = config
        self._deps = deps
        self._router = router
        self._auth = auth

    @property
    def config(self) -> EmbeddingConfig:
        return self._config

    def _load(self, source: str | Path | None) -> EmbeddingConfig:
        return EmbeddingConfig.load(source)

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
            extra={"event": "config_reloaded", "generation": self.generation},
        )
        return True

    async def _retire(self, replaced: TrackedSource, previous: RouterVectors) -> None:
        """Close the replaced router channel once the requests and calls using it have ended."""
        await replaced.drained()
        await _close(previous)
        log.info("previous router connection closed after its in-flight requests finished")

    async def _close_retired(self, retired: RouterVectors) -> None:
        await _close(retired)

    async def _close_current(self) -> None:
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
    reloader.install_sighup()
