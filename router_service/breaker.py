"""Circuit breakers: one per provider, so a failing provider is skipped instead of retried.

States: CLOSED (calls flow) -> OPEN (calls refused) -> HALF_OPEN (a bounded number of probe calls
test the provider) -> CLOSED on a probe success, or OPEN again on a probe failure. When each
transition happens is decided by `router_service.breaker_rules`, the one home of the rules, which
the shared breaker (`router_service.shared_breaker`) and the Redis store apply too; this module
keeps a `BreakerRecord` per provider on the injected monotonic clock, admits calls (bounding the
half-open probes), reports transitions to listeners and snapshots for status and metrics.

OPEN turns into HALF_OPEN lazily: reads compare the injected clock with the time the breaker may
be probed again, so no timer task is needed. Listeners hear of that transition from the first
call that notices it (`try_acquire`, or an outcome).

Thread-safety: every call happens on the one asyncio event loop of the server, and no method
awaits, so each method runs to completion without interleaving; no locks are needed. Code that
calls these from other threads must bring its own lock.
How long it stays open grows with each reopening (as Envoy's outlier detection ejects for
longer each time): the first opening lasts ``initial_reset_timeout_s``, each reopening without
a close in between twice as long as the one before, up to ``reset_timeout_s``
(`breaker_rules.reset_timeout_for`, shared with the Redis breaker). A lone local server that was
started a moment late is back in seconds; a provider that stays down is probed every
``reset_timeout_s``.

Every transition has a cause (``transition_cause``, read by listeners such as the event log):
the failures that opened it, the probe that closed or reopened it, the timeout that passed.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from router_service.breaker_rules import CLOSED_RECORD, BreakerEvent, BreakerRecord, apply_breaker_event
from router_service.config import CircuitBreakerConfig, RouterConfig

__all__ = [
    "BreakerConfig",
    "BreakerListener",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BreakerState",
    "Breakers",
    "CallBreaker",
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


class CallBreaker(Protocol):
    """What the gateway, routing and the probes use of one provider's breaker: `CircuitBreaker`
    in one process, `shared_breaker.SharedBreaker` across replicas."""

    @property
    def state(self) -> BreakerState: ...

    def is_available(self) -> bool: ...

    def seconds_until_available(self) -> float: ...

    def snapshot(self) -> BreakerSnapshot: ...

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...

    def record_success(self, latency_s: float = 0.0) -> None: ...

    def record_failure(self, kind: str, retry_after_s: float | None = None) -> None: ...


class Breakers(Protocol):
    """The breakers of every provider: `BreakerRegistry` or `shared_breaker.SharedBreakerRegistry`."""

    def get(self, provider_id: str) -> CallBreaker: ...

    def is_available(self, provider_id: str) -> bool: ...

    def seconds_until_available(self, provider_ids: Iterable[str]) -> float: ...

    def add_listener(self, listener: BreakerListener) -> None: ...

    def snapshots(self) -> list[BreakerSnapshot]: ...

    def states(self) -> dict[str, BreakerState]: ...


def visible_state(record: BreakerRecord, now: float) -> BreakerState:
    """The state a record shows at `now` (half-open is an open record past its reset time)."""
    if record.state == "closed":
        return BreakerState.CLOSED
    return BreakerState.HALF_OPEN if now >= record.open_until else BreakerState.OPEN


class CircuitBreaker:
    """The breaker of one provider in this process. See the module docstring."""

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
        self._record = CLOSED_RECORD  # times on `clock`
        self._probes_in_flight = 0  # calls admitted as probes of `_probe_generation`
        self._probe_generation = -1
        self._reported = BreakerState.CLOSED  # the last state listeners were told
        self._listeners: list[BreakerListener] = []
        self.transition_cause = ""  # why the last transition happened (for listeners)

    # -- reads (never change state) --------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state as callers see it: OPEN reads as HALF_OPEN once the reset timeout passed."""
        return visible_state(self._record, self._clock())

    def _probes(self) -> int:
        """Probes in flight in the current open period (those of an earlier one do not count)."""
        return self._probes_in_flight if self._probe_generation == self._record.generation else 0

    def is_available(self) -> bool:
        """Whether a call would be admitted now; does not take a probe permit."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        return self._probes() < self.config.half_open_max_probes

    def seconds_until_available(self) -> float:
        state = self.state
        if state is BreakerState.CLOSED:
            return 0.0
        if state is BreakerState.OPEN:
            return max(0.0, self._record.open_until - self._clock())
        if self._probes() < self.config.half_open_max_probes:
            return 0.0
        return _PROBE_BUSY_RETRY_S

    def snapshot(self) -> BreakerSnapshot:
        now = self._clock()
        wall_now = self._wall_clock()
        record = self._record
        state = visible_state(record, now)
        window_calls = len(record.window)
        opened_at = None if record.opened_at is None else wall_now - (now - record.opened_at)
        until = max(0.0, record.open_until - now) if state is BreakerState.OPEN else 0.0
        return BreakerSnapshot(
            name=self.name,
            state=state,
            consecutive_failures=record.consecutive_failures,
            window_calls=window_calls,
            window_failure_rate=(record.window_failures / window_calls) if window_calls else 0.0,
            opened_at=opened_at if record.state == "open" else None,
            half_open_at=wall_now + until if state is BreakerState.OPEN else None,
            seconds_until_half_open=until,
        )

    # -- calls ------------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Admit a call: always when closed; in half-open only while a probe slot is free."""
        state = self.state
        self._report(state, "the open period passed: one probe call is admitted")
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._probes() >= self.config.half_open_max_probes:
            return False
        self._probes_in_flight = self._probes() + 1
        self._probe_generation = self._record.generation
        return True

    def release(self) -> None:
        """The call ended without an outcome that counts (cancelled, caller's fault)."""
        if self.state is BreakerState.HALF_OPEN and self._probes() > 0:
            self._probes_in_flight -= 1

    def record_success(self, latency_s: float = 0.0) -> None:
        if latency_s > self.config.slow_call_threshold_s:
            # A provider that answers this slowly is as good as down for interactive callers.
            self.record_failure("slow")
            return
        self._apply(BreakerEvent(False, self._clock()))

    def record_failure(self, kind: str, retry_after_s: float | None = None) -> None:
        """Count a failed call. `kind` names it (timeout, connect, 5xx, 429, slow) for diagnostics.

        A Retry-After from the provider holds the breaker open at least that long even when the
        thresholds are not reached: the provider told us when it will accept calls again, and
        calling earlier only burns our retry budget and its rate limit.
        """
        self._apply(BreakerEvent(True, self._clock(), kind, retry_after_s))

    def inherit(self, previous: CircuitBreaker) -> None:
        """Take over the state of `previous`, the same provider's breaker before a config reload:
        an open breaker stays open, so a reload during an outage does not send traffic to the
        dead provider again. No transition is reported (none happened). A probe still in flight
        belongs to `previous` and reports there, so at most one extra probe may follow."""
        self._record = previous._record
        self._probes_in_flight = 0
        self._reported = previous._reported

    # -- listeners --------------------------------------------------------------------------

    def add_listener(self, listener: BreakerListener) -> None:
        """Call `listener(name, old_state, new_state)` on every transition."""
        self._listeners.append(listener)

    # -- internals --------------------------------------------------------------------------

    def _apply(self, event: BreakerEvent) -> None:
        before = visible_state(self._record, event.at)
        # A half-open breaker noticed by its outcome, not by an admission.
        self._report(before, "the open period passed: one probe call is admitted")
        self._record = apply_breaker_event(self._record, event, self.config)
        after = visible_state(self._record, event.at)
        if after is not before:
            self._report(after, self._cause(before, event))

    def _cause(self, before: BreakerState, event: BreakerEvent) -> str:
        """Why `event` moved the breaker out of `before` (it did), in words for the event log."""
        record = self._record
        if record.state == "closed":
            return "a half-open probe call succeeded"
        kind = event.kind or "failure"
        open_for = f"; open for {record.open_until - event.at:.3g} s"
        if before is BreakerState.HALF_OPEN:
            return f"the half-open probe call failed ({kind}){open_for}"
        if record.consecutive_failures >= self.config.failure_threshold:
            return f"{record.consecutive_failures} failures in a row (the last: {kind}){open_for}"
        if event.retry_after_s and record.open_until <= event.at + event.retry_after_s:
            return f"the provider asked to wait {event.retry_after_s:g} s ({kind}){open_for}"
        calls = len(record.window)
        return f"{record.window_failures} of the last {calls} calls failed (the last: {kind}){open_for}"

    def _report(self, state: BreakerState, cause: str) -> None:
        """Tell listeners when the state differs from the one they were last told."""
        old = self._reported
        if state is old:
            return
        self._reported = state
        self.transition_cause = cause
        for listener in self._listeners:
            try:
                listener(self.name, old, state)
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
