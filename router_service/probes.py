"""Active health probes: a dead provider is known before a user request finds it, and a provider
disabled for refusing our credentials is checked again until it accepts them.

One task per provider with `health_probe_interval_s` > 0 calls the provider's
cheap probe (list models) on that interval. Outcomes feed the provider's
breaker like any call, and the latest result is kept for GetProviderStatus.
A probe is skipped while the breaker refuses calls, except when it is due for
a half-open probe: then the probe is the call that tests recovery.

A provider disabled at run time (a 401/403 from it: `Registry.disable_provider`)
stays out of routing, and a re-check task probes it after
`circuit_breaker.auth_recheck_initial_s`, then at doubling intervals up to
`auth_recheck_max_s`, until a probe is accepted; then the provider is enabled
again. The key may have been rotated upstream, or the refusal was transient;
either way no restart is needed. A periodic probe that is accepted re-enables
it as well, and a config reload re-checks at once (`recheck_now`). The probe
bypasses the breaker: the provider gets no user traffic while disabled anyway.

Result changes (healthy <-> failing), disabling re-checks and re-enabling are
operational events in the log (`sekha_runtime.events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from router_service.breaker import Breakers
from router_service.providers.base import ProviderClient
from router_service.providers.errors import ProviderAuthError, ProviderError, ProviderFailure
from sekha_runtime.events import EventLog

if TYPE_CHECKING:
    from router_service.model_registry import Registry

log = logging.getLogger(__name__)

# A probe is a list-models call: cheap, so it never needs the provider's full timeout.
_PROBE_TIMEOUT_CAP_S = 10.0


@dataclass(frozen=True)
class ProbeResult:
    wall_time: float
    healthy: bool
    error_kind: str
    latency_s: float


@dataclass(frozen=True)
class RecheckBackoff:
    """How often a provider disabled by a 401/403 is probed again: `initial_s`, doubling to `max_s`."""

    initial_s: float = 10.0
    max_s: float = 600.0


class ProbeScheduler:
    def __init__(
        self,
        providers: Mapping[str, ProviderClient],
        intervals: Mapping[str, float],
        timeouts: Mapping[str, float],
        breakers: Breakers,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        *,
        registry: Registry | None = None,
        recheck: Mapping[str, RecheckBackoff] | None = None,
        events: EventLog | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`registry` (a `Registry`) is told when a re-check is accepted; without one, nothing is
        re-checked. `recheck` gives each provider's back-off (default `RecheckBackoff()`)."""
        self._providers = providers
        self._intervals = {pid: s for pid, s in intervals.items() if s > 0}
        self._timeouts = timeouts
        self._breakers = breakers
        self._clock = clock
        self._wall_clock = wall_clock
        self._registry = registry
        self._recheck = dict(recheck or {})
        self._events = events or EventLog(log)
        self._sleep = sleep
        self._tasks: list[asyncio.Task[None]] = []
        self._rechecks: dict[str, asyncio.Task[None]] = {}
        self._recheck_due: dict[str, float] = {}  # re-checks asked for before start(): first delay
        self._started = False
        self.results: dict[str, ProbeResult] = {}

    def start(self) -> None:
        self._started = True
        for provider_id, interval in self._intervals.items():
            self._tasks.append(
                asyncio.create_task(self._loop(provider_id, interval), name=f"probe-{provider_id}")
            )
        due, self._recheck_due = self._recheck_due, {}
        for provider_id, delay in due.items():
            self._start_recheck(provider_id, delay)

    async def stop(self) -> None:
        self._started = False
        tasks = [*self._tasks, *self._rechecks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._rechecks.clear()

    # -- periodic probes ------------------------------------------------------------------

    async def probe_once(self, provider_id: str) -> ProbeResult | None:
        """Run one probe now; None when the breaker refused it."""
        breaker = self._breakers.get(provider_id)
        if not breaker.try_acquire():
            return None
        started = self._clock()
        try:
            await self._providers[provider_id].probe(self._probe_timeout(provider_id))
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
        self._record(provider_id, result)
        if result.healthy:
            self._enable(provider_id, "its health probe was accepted")
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

    def _probe_timeout(self, provider_id: str) -> float:
        return min(self._timeouts[provider_id], _PROBE_TIMEOUT_CAP_S)

    def _record(self, provider_id: str, result: ProbeResult) -> None:
        """Keep the latest result; a change between healthy and failing is an event."""
        previous = self.results.get(provider_id)
        self.results[provider_id] = result
        if previous is not None and previous.healthy == result.healthy:
            return
        if previous is None and result.healthy:
            return  # the first result, and a good one: nothing changed an operator must know
        fields: dict[str, object] = {
            "provider": provider_id,
            "healthy": result.healthy,
            "error_kind": result.error_kind,
            "latency_ms": round(result.latency_s * 1000, 1),
        }
        subject = f"{provider_id}|{result.healthy}"  # a recovery never hides behind a failure
        if result.healthy:
            message = f"probe of {provider_id} succeeds again"
            self._events.info("probe_result_changed", message, subject=subject, **fields)
        else:
            message = f"probe of {provider_id} fails ({result.error_kind})"
            self._events.warning("probe_result_changed", message, subject=subject, **fields)

    # -- re-checks of disabled providers --------------------------------------------------

    def provider_changed(self, provider_id: str, reason: str | None) -> None:
        """The registry's listener: a provider was disabled (`reason`) or enabled again (None)."""
        if reason is None:
            task = self._rechecks.pop(provider_id, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
            self._recheck_due.pop(provider_id, None)
            return
        self._schedule(provider_id, self._backoff(provider_id).initial_s)

    def recheck_now(self, provider_id: str) -> None:
        """Re-check a disabled provider at once (a config reload: its key may have changed)."""
        task = self._rechecks.pop(provider_id, None)
        if task is not None:
            task.cancel()
        self._schedule(provider_id, 0.0)

    def _schedule(self, provider_id: str, delay: float) -> None:
        if self._registry is None or provider_id in self._rechecks:
            return
        if self._started:
            self._start_recheck(provider_id, delay)
        else:
            self._recheck_due[provider_id] = delay

    def _start_recheck(self, provider_id: str, delay: float) -> None:
        self._rechecks[provider_id] = asyncio.get_running_loop().create_task(
            self._recheck_loop(provider_id, delay), name=f"recheck-{provider_id}"
        )

    def _backoff(self, provider_id: str) -> RecheckBackoff:
        return self._recheck.get(provider_id, RecheckBackoff())

    async def _recheck_loop(self, provider_id: str, delay: float) -> None:
        registry = self._registry
        if registry is None:  # re-checks are scheduled only by a scheduler that has a registry
            return
        backoff = self._backoff(provider_id)
        base_reason = (registry.disabled_reason(provider_id) or "").split("; re-checked")[0]
        try:
            while registry.disabled_reason(provider_id) is not None:
                if delay > 0:
                    next_at = datetime.fromtimestamp(self._wall_clock() + delay, UTC)
                    registry.disable_provider(
                        provider_id,
                        f"{base_reason}; re-checked by a probe at {next_at:%Y-%m-%dT%H:%M:%S}Z",
                    )
                    await self._sleep(delay)
                if await self._recheck_once(provider_id, delay):
                    return
                delay = min(max(delay * 2, backoff.initial_s), backoff.max_s)
        finally:
            if self._rechecks.get(provider_id) is asyncio.current_task():
                del self._rechecks[provider_id]

    async def _recheck_once(self, provider_id: str, waited_s: float) -> bool:
        """Probe a disabled provider; True when it was accepted (and the provider enabled)."""
        started = self._clock()
        try:
            await self._providers[provider_id].probe(self._probe_timeout(provider_id))
        except ProviderAuthError as exc:
            result = ProbeResult(self._wall_clock(), False, "auth", self._clock() - started)
            self._record(provider_id, result)
            next_s = min(
                max(waited_s * 2, self._backoff(provider_id).initial_s), self._backoff(provider_id).max_s
            )
            self._events.warning(
                "provider_recheck_refused",
                f"provider {provider_id} still refuses our credentials (HTTP {exc.status}); "
                f"next check in {next_s:g} s",
                provider=provider_id,
                http_status=exc.status,
                next_check_s=next_s,
            )
            return False
        except ProviderFailure as exc:
            # Not an answer about the key: the provider is down. Stay disabled, ask again later.
            self._record(
                provider_id, ProbeResult(self._wall_clock(), False, exc.kind, self._clock() - started)
            )
            return False
        except ProviderError:
            pass  # it answered past authentication (a 400 on the models list, say): the key works
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("re-check of %s failed unexpectedly: %s", provider_id, type(exc).__name__)
            return False
        self._record(provider_id, ProbeResult(self._wall_clock(), True, "", self._clock() - started))
        return self._enable(provider_id, "a probe was accepted")

    def _enable(self, provider_id: str, why: str) -> bool:
        registry = self._registry
        if registry is None or not registry.is_runtime_disabled(provider_id):
            return False
        registry.enable_provider(provider_id)
        self._events.info(
            "provider_reenabled",
            f"provider {provider_id} enabled again: {why}",
            provider=provider_id,
            via="probe",
        )
        return True
