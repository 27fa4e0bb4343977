"""Config reload without dropping a request: SIGHUP (`kill -HUP <pid>`) or `ConfigReloader.reload()`.

A reload reads and validates the file, builds a complete new core (registry, breakers,
provider clients, gateway, probes; `server.build_core`) and swaps it in with plain attribute
assignments and no await in between, so every new request sees one whole configuration and
never a mix. Requests already running keep the gateway they started on; once the last of them
has finished, the old core is closed (probes stopped, provider connections closed).

A reload is refused, and the running configuration keeps serving, when the new file does not
validate, when building from it fails, or when it changes what only a restart can apply: the
`server` section (address, TLS, limits of the listener), the `state` backend, or whether auth
is enabled. API keys themselves are swapped, so keys rotate with a SIGHUP. A provider whose
config the new file leaves unchanged keeps its breaker (an open one stays open) and, when a
401/403 disabled it, stays disabled and is re-checked by a probe at once; a changed or new
provider starts with a closed breaker, enabled (a changed key is the usual fix for a 401).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from router_service.breaker import BreakerRegistry
from router_service.config import RouterConfig
from router_service.gateway import Gateway
from sekha_runtime.server.auth import ApiKeyAuth, KeyRing
from sekha_runtime.server.reload import Reloader, changed_settings

if TYPE_CHECKING:
    from router_service.rpc.servicer import RouterServicer
    from router_service.server import RouterApp, RouterCore, RouterDeps

__all__ = ["ConfigReloader", "install_sighup", "restart_needed"]

log = logging.getLogger(__name__)


def restart_needed(running: RouterConfig, new: RouterConfig) -> str | None:
    """What in `new` only a restart can apply, or None."""
    # Telemetry: exporters are set up once per process.
    return changed_settings(running, new, ("server", "state", "auth.enabled", "telemetry"))


class ConfigReloader(Reloader[RouterConfig, tuple["RouterCore", bool]]):
    """Swaps the router's core for one built from a new config; see the module docstring.

    A retired part is an old core and whether the local embedder it shares stays open."""

    def __init__(
        self,
        app: RouterApp,
        servicer: RouterServicer,
        core: RouterCore,
        deps: RouterDeps,
        *,
        auth: ApiKeyAuth | None = None,
        path: str | Path | None = None,
    ) -> None:
        """`path` None re-reads $SEKHA_CONFIG, else the embedded default."""
        super().__init__(path, log)
        self._app = app
        self._servicer = servicer
        self._core = core
        self._deps = deps
        self._auth = auth

    @property
    def core(self) -> RouterCore:
        return self._core

    @property
    def config(self) -> RouterConfig:
        return self._core.config

    def _load(self, source: str | Path | None) -> RouterConfig:
        return RouterConfig.load(source, None, self._deps.model_info)

    async def _apply_locked(self, config: RouterConfig) -> bool:
        from router_service.server import build_core  # server imports this module

        old = self._core
        needs_restart = restart_needed(old.config, config)
        if needs_restart is not None:
            return self._refuse(f"restart needed: {needs_restart} changed; restart the router to apply that")
        shared_embedder = old.local_embedder
        deps = dataclasses.replace(self._deps, local_embedder=shared_embedder or self._deps.local_embedder)
        try:
            core = await build_core(config, deps, self._app.store, self._app.state_health)
        except Exception as exc:
            rebind = getattr(self._deps.observer, "bind", None)
            if rebind is not None:  # the metrics observer may already point at the discarded core
                rebind(old.config, old.breakers)
            return self._refuse(f"building the new configuration failed ({type(exc).__name__})")
        old_providers = {p.id: p for p in old.config.providers}
        unchanged = [p.id for p in config.providers if old_providers.get(p.id) == p]
        if isinstance(core.breakers, BreakerRegistry) and isinstance(old.breakers, BreakerRegistry):
            # A reload during an outage must not send traffic to the dead provider again: providers
            # the new file leaves as they were keep their breakers. (Shared breakers live in Redis.)
            core.breakers.inherit(old.breakers, unchanged)
        self._carry_disabled(old, core, unchanged)
        old_gateway = self._servicer.gateway
        # The swap: no await from here to the end of the block, so a new request sees either the
        # old core or the new one, whole.
        self._servicer.gateway = core.gateway
        self._servicer.catalog = core.catalog
        self._core = core
        self._app.gateway = core.gateway
        self._app.registry = core.registry
        self._app.breakers = core.breakers
        self._app.probes = core.probes
        self._app.spend = core.spend
        if self._auth is not None:
            self._auth.keys = KeyRing.from_config(config.auth)
        core.probes.start()
        self.generation += 1
        self.last_error = None
        keep_embedder = shared_embedder is not None and core.local_embedder is shared_embedder
        task = asyncio.get_running_loop().create_task(
            self._retire(old, old_gateway, keep_embedder), name="retire-config"
        )
        self._retiring[task] = (old, keep_embedder)
        task.add_done_callback(lambda done: self._retiring.pop(done, None))
        log.info(
            "config reloaded (generation %d): %d providers, %d models",
            self.generation,
            len(config.providers),
            len(core.registry.entries),
            extra={
                "event": "config_reloaded",
                "generation": self.generation,
                "providers": len(config.providers),
                "models": len(core.registry.entries),
            },
        )
        return True

    def _carry_disabled(self, old: RouterCore, core: RouterCore, unchanged: list[str]) -> None:
        """Providers a 401/403 disabled stay disabled when their config is unchanged, and are
        re-checked at once; a changed one (a new key, say) starts enabled."""
        for provider_id, reason in old.registry.runtime_disabled().items():
            if provider_id in unchanged:
                core.registry.disable_provider(provider_id, reason.split("; re-checked")[0])
                core.probes.recheck_now(provider_id)
            elif core.registry.providers.get(provider_id) is not None:
                log.info(
                    "provider %s enabled again: its configuration changed",
                    provider_id,
                    extra={"event": "provider_reenabled", "provider": provider_id, "via": "reload"},
                )

    async def _retire(self, old: RouterCore, gateway: Gateway, keep_embedder: bool) -> None:
        """Close the old core once the requests that started on it have ended."""
        await gateway.in_use.drained()
        await self._close_old(old, keep_embedder)
        log.info("previous config retired after its in-flight requests finished")

    async def _close_old(self, old: RouterCore, keep_embedder: bool) -> None:
        # Injected providers (tests) are shared by every core; they close with the server.
        await old.close(keep_local_embedder=keep_embedder, keep_providers=self._deps.providers is not None)

    async def _close_retired(self, retired: tuple[RouterCore, bool]) -> None:
        await self._close_old(*retired)

    async def _close_current(self) -> None:
        await self._core.close()


def install_sighup(reloader: ConfigReloader) -> None:
    """Reload the config on SIGHUP (where the platform has signals)."""
    reloader.install_sighup()
