"""Circuit breakers: one per provider, so a failing provider is skipped instead of retried.

States: CLOSED (calls flow) -> OPEN (calls refused) -> HALF_OPEN (a bounded number of probe calls
test the provider) -> CLOSED on a probe success, or OPEN again on a probe failure.

A breaker opens when the consecutive failures reach ``failure_threshold``, or when the failure
rate over the last ``window_size`` calls reaches ``failure_rate_threshold`` once the window holds
at least ``minimum_calls`` calls. OPEN turns into HALF_OPEN lazily: reads compare the injected
clock with the time the breaker may be probed again, so no timer task is needed.

How long it stays open grows with each reopening (as Envoy's outlier detection ejects for
longer each time): the first opening lasts ``initial_reset_timeout_s``, each reopening without
a close in between twice as long as the one before, up to ``reset_timeout_s``
(`state.base.reset_timeout_for`, shared with the Redis breaker). A lone local server that was
started a moment late is back in seconds; a provider that stays down is probed every
``reset_timeout_s``.

Every transition has a cause (``transition_cause``, read by listeners such as the event log):
the failures that opened it, the probe that closed or reopened it, the timeout that passed.

Thread-safety: every call happens on the one asyncio event loop of the server, and no method
awaits, so each method runs to completion without interleaving; no locks are needed. Code that
calls these from other threads must bring its own lock.

Design note: a later change shares breaker state across replicas (Redis). Every state change
goes through ``CircuitBreaker._transition`` and the counters live in plain fields, so a shared
store can replace them in one place without touching the callers.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from router_service.config import CircuitBreakerConfig, RouterConfig
from router_service.state.base import reset_timeout_for

__all__ = [
    "BreakerConfig",
    "BreakerListener",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
]

logger = logging.getLogger(__name__)

BreakerConfig = CircuitBreakerConfig
Clock = Callable[[], float]
BreakerListener = Callable[[str, "BreakerState", "BreakerState"], None]

# Suggested wait when a half-open breaker's probe slots are all taken: the probe's outcome is
# not known yet, and a short wait lets the caller see it.
_PROBE_BUSY_RETRY_S = 1.0


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's state for metrics, health and debugging (wall-clock times in epoch seconds)."""

    name: str
    state: BreakerState
    consecutive_failures: int
    window_calls: int
    window_failure_rate: float
    opened_at: float | None
    half_open_at: float | None
    seconds_until_half_open: float


class CircuitBreaker:
    """The breaker of one provider. See the module docstring for the rules."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._window: deque[bool] = deque(maxlen=config.window_size)  # True = the call failed
        self._window_failures = 0
        self._opened_at: float | None = None  # monotonic
        self._open_until = 0.0  # monotonic: no call is admitted before this time
        self._opens = 0  # openings since the breaker last closed (each lasts longer)
        self._probes_in_flight = 0
        self._listeners: list[BreakerListener] = []
        self.transition_cause = ""  # why the last transition happened (for listeners)

    # -- reads (never change state) --------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state as callers see it: OPEN reads as HALF_OPEN once the reset timeout passed."""
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            return BreakerState.HALF_OPEN
        return self._state

    def is_available(self) -> bool:
        """Whether a call would be admitted now; does not take a probe permit."""
        state = self._state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            # Due for half-open: the first try_acquire will take a probe slot, and all are free.
            return self._clock() >= self._open_until
        return self._probes_in_flight < self.config.half_open_max_probes

    def seconds_until_available(self) -> float:
        state = self._state
        if state is BreakerState.CLOSED:
            return 0.0
        if state is BreakerState.OPEN:
            return max(0.0, self._open_until - self._clock())
        if self._probes_in_flight < self.config.half_open_max_probes:
            return 0.0
        return _PROBE_BUSY_RETRY_S

    def snapshot(self) -> BreakerSnapshot:
        now = self._clock()
        wall_now = self._wall_clock()
        state = self.state
        window_calls = len(self._window)
        opened_at = None if self._opened_at is None else wall_now - (now - self._opened_at)
        half_open_at: float | None = None
        until = 0.0
        if self._state is BreakerState.OPEN:
            until = max(0.0, self._open_until - now)
            half_open_at = wall_now + until
        return BreakerSnapshot(
            name=self.name,
            state=state,
            consecutive_failures=self._consecutive_failures,
            window_calls=window_calls,
            window_failure_rate=(self._window_failures / window_calls) if window_calls else 0.0,
            opened_at=opened_at if self._state is not BreakerState.CLOSED else None,
            half_open_at=half_open_at,
            seconds_until_half_open=until,
        )

    # -- calls ------------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Admit a call: always when closed; in half-open only while a probe slot is free."""
        state = self._state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            if self._clock() < self._open_until:
                return False
            self._transition(BreakerState.HALF_OPEN, "the open period passed: one probe call is admitted")
        if self._probes_in_flight >= self.config.half_open_max_probes:
            return False
        self._probes_in_flight += 1
        return True

    def release(self) -> None:
        """The call ended without an outcome that counts (cancelled, caller's fault)."""
        if self._state is BreakerState.HALF_OPEN and self._probes_in_flight > 0:
            self._probes_in_flight -= 1

    def record_success(self, latency_s: float = 0.0) -> None:
        if latency_s > self.config.slow_call_threshold_s:
            # A provider that answers this slowly is as good as down for interactive callers.
            self.record_failure("slow")
            return
        state = self._state
        if state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._push(False)
        elif state is BreakerState.HALF_OPEN:
            # The probe succeeded (or a call admitted while closed did): the provider answers.
            self._transition(BreakerState.CLOSED, "a half-open probe call succeeded")
        # OPEN: the success of a call admitted before the breaker opened proves little; the
        # half-open probe decides.

    def record_failure(self, kind: str, retry_after_s: float | None = None) -> None:
        """Count a failed call. `kind` names it (timeout, connect, 5xx, 429, slow) for diagnostics.

        A Retry-After from the provider holds the breaker open at least that long even when the
        thresholds are not reached: the provider told us when it will accept calls again, and
        calling earlier only burns our retry budget and its rate limit.
        """
        now = self._clock()
        cooldown_until = now + retry_after_s if retry_after_s and retry_after_s > 0 else None
        state = self._state
        if state is BreakerState.CLOSED:
            self._consecutive_failures += 1
            self._push(True)
            if self._thresholds_reached():
                self._open(now, cooldown_until, self._threshold_cause(kind))
            elif cooldown_until is not None:
                cause = f"the provider asked to wait {retry_after_s:g} s ({kind})"
                self._open(now, cooldown_until, cause, from_cooldown_only=True)
        elif state is BreakerState.HALF_OPEN:
            self._consecutive_failures += 1
            self._open(now, cooldown_until, f"the half-open probe call failed ({kind})")
        elif cooldown_until is not None and cooldown_until > self._open_until:
            self._open_until = cooldown_until

    def inherit(self, previous: CircuitBreaker) -> None:
        """Take over the counters and state of `previous`, the same provider's breaker before a
        config reload: an open breaker stays open, so a reload during an outage does not send
        traffic to the dead provider again. No transition is reported (none happened). A probe
        still in flight belongs to `previous` and reports there, so at most one extra probe may
        follow."""
        self._state = previous._state
        self._consecutive_failures = previous._consecutive_failures
        self._window = deque(previous._window, maxlen=self.config.window_size)
        self._window_failures = sum(self._window)
        self._opened_at = previous._opened_at
        self._open_until = previous._open_until
        self._opens = previous._opens
        self._probes_in_flight = 0

    # -- listeners --------------------------------------------------------------------------

    def add_listener(self, listener: BreakerListener) -> None:
        """Call `listener(name, old_state, new_state)` on every transition."""
        self._listeners.append(listener)

    # -- internals --------------------------------------------------------------------------

    def _push(self, failed: bool) -> None:
        window = self._window
        if len(window) == window.maxlen and window[0]:
            self._window_failures -= 1
        window.append(failed)
        if failed:
            self._window_failures += 1

    def _thresholds_reached(self) -> bool:
        config = self.config
        if self._consecutive_failures >= config.failure_threshold:
            return True
        calls = len(self._window)
        return (
            calls >= config.minimum_calls and self._window_failures / calls >= config.failure_rate_threshold
        )

    def _threshold_cause(self, kind: str) -> str:
        if self._consecutive_failures >= self.config.failure_threshold:
            return f"{self._consecutive_failures} failures in a row (the last: {kind})"
        calls = len(self._window)
        return f"{self._window_failures} of the last {calls} calls failed (the last: {kind})"

    def _open(
        self, now: float, cooldown_until: float | None, cause: str, *, from_cooldown_only: bool = False
    ) -> None:
        self._opens += 1
        open_for = reset_timeout_for(self._opens, self.config)
        open_until = now if from_cooldown_only else now + open_for
        if cooldown_until is not None and cooldown_until > open_until:
            open_until = cooldown_until
        self._opened_at = now
        self._open_until = open_until
        self._transition(BreakerState.OPEN, f"{cause}; open for {open_until - now:.3g} s")

    def _transition(self, new_state: BreakerState, cause: str) -> None:
        """The one place the state changes (see the design note in the module docstring)."""
        old_state = self._state
        self._probes_in_flight = 0
        if new_state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._window.clear()
            self._window_failures = 0
            self._opened_at = None
            self._open_until = 0.0
            self._opens = 0
        self._state = new_state
        if old_state is new_state:
            return
        self.transition_cause = cause
        for listener in self._listeners:
            try:
                listener(self.name, old_state, new_state)
            except Exception:
                # A broken metrics hook must not break the breaker.
                logger.warning("breaker listener failed", exc_info=True)


class BreakerRegistry:
    """One breaker per provider id, created on first use with that provider's settings."""

    def __init__(
        self,
        config_for_provider: Callable[[str], BreakerConfig] | Mapping[str, BreakerConfig],
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        default: BreakerConfig | None = None,
    ) -> None:
        """`config_for_provider` maps a provider id to its settings (a function or a mapping;
        ids missing from a mapping get `default`, else the built-in defaults)."""
        if isinstance(config_for_provider, Mapping):
            table = dict(config_for_provider)
            fallback = default or BreakerConfig()
            self._config_for_provider: Callable[[str], BreakerConfig] = lambda pid: table.get(pid, fallback)
        else:
            self._config_for_provider = config_for_provider
        self._clock = clock
        self._wall_clock = wall_clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[BreakerListener] = []

    @classmethod
    def from_config(cls, config: RouterConfig, clock: Clock = time.monotonic) -> BreakerRegistry:
        """Build from a RouterConfig (`breaker_config_for` picks the provider's override)."""
        return cls(config.breaker_config_for, clock)

    def get(self, provider_id: str) -> CircuitBreaker:
        breaker = self._breakers.get(provider_id)
        if breaker is None:
            breaker = CircuitBreaker(
                provider_id, self._config_for_provider(provider_id), self._clock, self._wall_clock
            )
            for listener in self._listeners:
                breaker.add_listener(listener)
            self._breakers[provider_id] = breaker
        return breaker

    def is_available(self, provider_id: str) -> bool:
        """Non-mutating: a provider with no breaker yet has had no failures."""
        breaker = self._breakers.get(provider_id)
        return breaker is None or breaker.is_available()

    def seconds_until_available(self, provider_ids: Iterable[str]) -> float:
        """Seconds until the first of these providers admits a call (0 when one does now)."""
        waits = [
            0.0 if breaker is None else breaker.seconds_until_available()
            for breaker in (self._breakers.get(p) for p in provider_ids)
        ]
        return min(waits, default=0.0)

    def add_listener(self, listener: BreakerListener) -> None:
        """Observe transitions of every breaker, present and future."""
        self._listeners.append(listener)
        for breaker in self._breakers.values():
            breaker.add_listener(listener)

    def snapshots(self) -> list[BreakerSnapshot]:
        return [b.snapshot() for b in self._breakers.values()]

    def states(self) -> dict[str, BreakerState]:
        """The state of every breaker made so far (a provider without one is closed). Safe to
        call from another thread (a metrics exporter's): it copies the table in one step."""
        return {provider_id: breaker.state for provider_id, breaker in list(self._breakers.items())}

    def inherit(self, previous: BreakerRegistry, provider_ids: Iterable[str]) -> None:
        """Carry the breakers of `provider_ids` over from the registry a reload replaces, where
        their breaker settings did not change (see `CircuitBreaker.inherit`)."""
        for provider_id in provider_ids:
            old = previous._breakers.get(provider_id)
            if old is not None and old.config == self._config_for_provider(provider_id):
                self.get(provider_id).inherit(old)
