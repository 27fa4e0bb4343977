"""Active health probes: a dead provider is known before a user request finds it.

One task per provider with `health_probe_interval_s` > 0 calls the provider's
cheap probe (list models) on that interval. Outcomes feed the provider's
breaker like any call, and the latest result is kept for GetProviderStatus.
A probe is skipped while the breaker refuses calls, except when it is due for
a half-open probe: then the probe is the call that tests recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router_service.breaker import Breakers
from router_service.providers.base import ProviderClient
from router_service.providers.errors import ProviderAuthError, ProviderError, ProviderFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeResult:
    wall_time: float
    healthy: bool
    error_kind: str
    latency_s: float


class ProbeScheduler:
    def __init__(
        self,
        providers: Mapping[str, ProviderClient],
        intervals: Mapping[str, float],
        timeouts: Mapping[str, float],
        breakers: Breakers,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._providers = providers
        self._intervals = {pid: s for pid, s in intervals.items() if s > 0}
        self._timeouts = timeouts
        self._breakers = breakers
        self._clock = clock
        self._wall_clock = wall_clock
        self._tasks: list[asyncio.Task[None]] = []
        self.results: dict[str, ProbeResult] = {}

    def start(self) -> None:
        for provider_id, interval in self._intervals.items():
            self._tasks.append(
                asyncio.create_task(self._loop(provider_id, interval), name=f"probe-{provider_id}")
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def probe_once(self, provider_id: str) -> ProbeResult | None:
        """Run one probe now; None when the breaker refused it."""
        breaker = self._breakers.get(provider_id)
        if not breaker.try_acquire():
            return None
        started = self._clock()
        try:
            await self._providers[provider_id].probe(min(self._timeouts[provider_id], 10.0))
        except ProviderFailure as exc:
            breaker.record_failure(exc.kind, exc.retry_after_s)
            result = ProbeResult(self._wall_clock(), False, exc.kind, self._clock() - started)
        except ProviderError as exc:
            # A probe that reached the provider and was refused proves it is up.
            breaker.release()
            kind = "auth" if isinstance(exc, ProviderAuthError) else getattr(exc, "kind", "rejected")
            result = ProbeResult(self._wall_clock(), kind != "auth", kind, self._clock() - started)
        except BaseException:
            breaker.release()
            raise
        else:
            latency = self._clock() - started
            breaker.record_success(latency)
            result = ProbeResult(self._wall_clock(), True, "", latency)
        self.results[provider_id] = result
        return result

    async def _loop(self, provider_id: str, interval: float) -> None:
        while True:
            try:
                await self.probe_once(provider_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("probe of %s failed unexpectedly: %s", provider_id, type(exc).__name__)
            await asyncio.sleep(interval)
