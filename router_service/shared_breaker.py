"""Circuit breakers whose state is shared by every router replica through a StateStore.

`SharedBreaker` presents the API of `router_service.breaker.CircuitBreaker` (`is_available`,
`try_acquire`, `record_success`, `record_failure`, `release`, `state`, `snapshot`,
`seconds_until_available`, `add_listener`), and `SharedBreakerRegistry` that of
`BreakerRegistry`, so routing, the gateway and the probes use them unchanged. Those methods are
synchronous and on the hot path (routing reads `is_available` for every candidate of every
request), so none of them talks to the store. Instead:

* each breaker keeps a **local mirror** of the shared `BreakerRecord` and answers from it;
* outcomes are applied to the mirror at once (this replica reacts to its own failures without
  waiting) and queued; the registry's **sync task** sends the queue in one batch (one Lua script
  applies the events in order, atomically) and replaces the mirror with the store's answer, with
  still-unsent events applied on top. A failure wakes the sync task immediately; otherwise it
  runs every `sync_interval_s` and reads the shared state (one small script per breaker);
* **half-open probe permits are authoritative in the store**: a replica may admit a probe only
  with a permit it took from the store (`breaker_acquire_probe`, a counter per open generation
  with a TTL). The sync task takes one when the breaker is due for half-open and this replica has
  recently been asked for the provider; `try_acquire` hands it out. A permit not used within
  `permit_hold_s` is given back so a replica with traffic can take it, and a permit whose holder
  died expires after `probe_ttl_s`. So probes cluster-wide never exceed `half_open_max_probes`.

Consistency model: eventual. A replica sees another replica's outcomes within about two sync
intervals (the writer's flush plus the reader's poll; failures flush at once, so typically one
interval). Until then it may admit a few calls to a provider another replica just saw fail; the
breaker's thresholds are counted on the shared window, so those calls only speed the opening up.
Probe admission is the one strictly bounded thing. The first request after the reset timeout may
find no permit ready yet: it is routed elsewhere or told to retry shortly (like a busy probe).

Store outage (`store.healthy` False): each breaker runs alone on its mirror, exactly like a local
breaker, with local probe permits (up to `half_open_max_probes` per replica). Its outcomes stay
queued (bounded; those older than the reset timeout are dropped) and are sent once the store is
back, after which the shared state is adopted again.

The rules themselves (when to open, half-open, close) are `router_service.breaker_rules`, the same
ones the local breaker and the Redis store apply.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping

from router_service.breaker import (
    BreakerConfig,
    BreakerListener,
    BreakerSnapshot,
    BreakerState,
    visible_state,
)
from router_service.breaker_rules import CLOSED_RECORD, BreakerEvent, BreakerRecord, apply_breaker_event
from router_service.config import RouterConfig
from router_service.state.base import StateStore, StoreUnavailableError

__all__ = ["SharedBreaker", "SharedBreakerRegistry"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

# Suggested wait when a half-open breaker has no probe permit for this replica: another replica
# is probing (or one is being fetched), and its outcome is known shortly.
_PROBE_BUSY_RETRY_S = 1.0


class SharedBreaker:
    """One provider's breaker, shared across replicas. See the module docstring."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        store: StateStore,
        *,
        wall_clock: Clock = time.time,
        request_sync: Callable[[], None] = lambda: None,
        probe_ttl_s: float = 60.0,
        permit_hold_s: float = 1.0,
        max_pending: int = 1000,
    ) -> None:
        self.name = name
        self.config = config
        self._store = store
        self._wall_clock = wall_clock
        self._request_sync = request_sync
        self._probe_ttl_s = probe_ttl_s
        self._permit_hold_s = permit_hold_s
        self._record: BreakerRecord = CLOSED_RECORD
        self._pending: collections.deque[BreakerEvent] = collections.deque(maxlen=max_pending)
        self._max_pending = max_pending
        self._permits_ready = 0  # store permits taken and not yet handed to a call
        self._permit_gen = -1
        self._permit_taken_at = 0.0
        self._permit_returned_at = -math.inf
        self._cluster_probes = 0  # calls admitted with a store permit, outcome not known yet
        self._local_probes = 0  # calls admitted as probes while the store was down
        self._releases_due: list[int] = []  # generations of permits to give back
        self._last_interest = -math.inf
        self._visible = BreakerState.CLOSED
        self._listeners: list[BreakerListener] = []
        self.transition_cause = ""  # why the last transition this replica saw happened

    # -- reads ----------------------------------------------------------------------------

    def _local_mode(self) -> bool:
        return not self._store.healthy

    def _visible_state(self, now: float) -> BreakerState:
        return visible_state(self._record, now)

    @property
    def state(self) -> BreakerState:
        return self._visible_state(self._wall_clock())

    def _probe_slot_free(self) -> bool:
        if self._local_mode():
            return self._local_probes < self.config.half_open_max_probes
        return self._permits_ready > 0 and self._permit_gen == self._record.generation

    def is_available(self) -> bool:
        """Whether a call would be admitted now; does not take a probe permit."""
        now = self._wall_clock()
        self._last_interest = now
        record = self._record
        if record.state == "closed":
            return True
        if now < record.open_until:
            return False
        if self._probe_slot_free():
            return True
        if not self._local_mode():
            self._request_sync()  # fetch a permit for the next request
        return False

    def seconds_until_available(self) -> float:
        now = self._wall_clock()
        record = self._record
        if record.state == "closed":
            return 0.0
        if now < record.open_until:
            return record.open_until - now
        return 0.0 if self._probe_slot_free() else _PROBE_BUSY_RETRY_S

    def snapshot(self) -> BreakerSnapshot:
        now = self._wall_clock()
        record = self._record
        window_calls = len(record.window)
        is_open = record.state == "open"
        until = max(0.0, record.open_until - now) if is_open else 0.0
        return BreakerSnapshot(
            name=self.name,
            state=self._visible_state(now),
            consecutive_failures=record.consecutive_failures,
            window_calls=window_calls,
            window_failure_rate=(record.window_failures / window_calls) if window_calls else 0.0,
            opened_at=record.opened_at if is_open else None,
            half_open_at=record.open_until if is_open else None,
            seconds_until_half_open=until,
        )

    # -- calls ----------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Admit a call: always when closed; in half-open only with a probe permit."""
        now = self._wall_clock()
        self._last_interest = now
        record = self._record
        if record.state == "closed":
            return True
        if now < record.open_until:
            return False
        self._notice(now, "the open period passed: probe calls are admitted")
        if self._local_mode():
            if self._local_probes >= self.config.half_open_max_probes:
                return False
            self._local_probes += 1
            return True
        if self._permits_ready > 0 and self._permit_gen == record.generation:
            self._permits_ready -= 1
            self._cluster_probes += 1
            return True
        self._request_sync()
        return False

    def release(self) -> None:
        """The call ended without an outcome that counts: its probe permit goes back."""
        if self._cluster_probes > 0:
            self._cluster_probes -= 1
            self._releases_due.append(self._permit_gen)
            self._request_sync()
        elif self._local_probes > 0:
            self._local_probes -= 1

    def record_success(self, latency_s: float = 0.0) -> None:
        if latency_s > self.config.slow_call_threshold_s:
            self.record_failure("slow")
            return
        self._outcome(BreakerEvent(False, self._wall_clock()))

    def record_failure(self, kind: str, retry_after_s: float | None = None) -> None:
        """Count a failed call (`kind`: timeout, connect, 5xx, 429, slow); Retry-After holds it open."""
        self._outcome(BreakerEvent(True, self._wall_clock(), kind, retry_after_s))
        self._request_sync()  # other replicas should learn about failures without delay

    def add_listener(self, listener: BreakerListener) -> None:
        """Call `listener(name, old_state, new_state)` on every state change this replica sees."""
        self._listeners.append(listener)

    # -- internals ------------------------------------------------------------------------

    def _outcome(self, event: BreakerEvent) -> None:
        # A probe's outcome settles its permit in the store: a success closes the breaker (and
        # deletes the counter), a failure opens a new generation.
        if self._cluster_probes > 0:
            self._cluster_probes -= 1
        elif self._local_probes > 0:
            self._local_probes -= 1
        self._pending.append(event)
        record = apply_breaker_event(self._record, event, self.config)
        self._set_record(record, event.at, _event_cause(self._record, record, event, self.config))

    def _set_record(self, record: BreakerRecord, now: float, cause: str) -> None:
        if record.state == "closed" or record.generation != self._record.generation:
            self._local_probes = 0
        self._record = record
        self._notice(now, cause)

    def _notice(self, now: float, cause: str) -> None:
        """Tell listeners when the state this replica sees changed."""
        new = self._visible_state(now)
        old = self._visible
        if new is old:
            return
        self._visible = new
        self.transition_cause = cause
        for listener in self._listeners:
            try:
                listener(self.name, old, new)
            except Exception:
                logger.warning("breaker listener failed", exc_info=True)

    async def sync_once(self) -> None:
        """Exchange state with the store: send queued outcomes, adopt the shared state, manage
        the probe permit. Does nothing while the store is down (the mirror rules alone then)."""
        store = self._store
        if not store.healthy:
            self._permits_ready = 0
            return
        now = self._wall_clock()
        batch = [e for e in self._pending if now - e.at <= self.config.reset_timeout_s]
        self._pending = collections.deque(maxlen=self._max_pending)
        releases, self._releases_due = self._releases_due, []
        try:
            remote = await (
                store.breaker_events(self.name, batch, self.config)
                if batch
                else store.breaker_load(self.name)
            )
            for generation in releases:
                await store.breaker_release_probe(self.name, generation)
        except StoreUnavailableError:
            self._pending = collections.deque([*batch, *self._pending], maxlen=self._max_pending)
            self._permits_ready = 0
            return
        mirror = remote
        for event in self._pending:  # outcomes recorded while the batch was on its way
            mirror = apply_breaker_event(mirror, event, self.config)
        now = self._wall_clock()
        self._set_record(mirror, now, "the state shared with the other replicas changed")
        if self._permit_gen != remote.generation:
            # Permits of an earlier open period admit nothing now; the store lets them expire.
            self._permits_ready = 0
            self._cluster_probes = 0
        try:
            await self._manage_permit(remote, mirror, now)
        except StoreUnavailableError:
            self._permits_ready = 0

    async def _manage_permit(self, remote: BreakerRecord, mirror: BreakerRecord, now: float) -> None:
        store = self._store
        max_probes = self.config.half_open_max_probes
        due = remote.half_open(now) and mirror.half_open(now)
        if (
            due
            and self._permits_ready == 0
            and self._cluster_probes < max_probes
            # Only a replica that is being asked for this provider takes a permit, and after it
            # gave an idle one back, only once asked again.
            and self._last_interest > self._permit_returned_at
            and now - self._last_interest <= max(self._permit_hold_s, 1.0) * 5
        ):
            generation = remote.generation
            if await store.breaker_acquire_probe(self.name, generation, max_probes, now, self._probe_ttl_s):
                self._permits_ready = 1
                self._permit_gen = generation
                self._permit_taken_at = now
        elif self._permits_ready > 0 and (not due or now - self._permit_taken_at >= self._permit_hold_s):
            self._permits_ready -= 1
            self._permit_returned_at = now
            await store.breaker_release_probe(self.name, self._permit_gen)


class SharedBreakerRegistry:
    """`BreakerRegistry`'s API over SharedBreakers, plus the sync task that keeps them current."""

    def __init__(
        self,
        config_for_provider: Callable[[str], BreakerConfig] | Mapping[str, BreakerConfig],
        store: StateStore,
        *,
        wall_clock: Clock = time.time,
        default: BreakerConfig | None = None,
        sync_interval_s: float = 0.2,
        probe_ttl_s: float = 60.0,
        permit_hold_s: float | None = None,
        provider_ids: Iterable[str] = (),
    ) -> None:
        if isinstance(config_for_provider, Mapping):
            table = dict(config_for_provider)
            fallback = default or BreakerConfig()
            self._config_for_provider: Callable[[str], BreakerConfig] = lambda pid: table.get(pid, fallback)
            provider_ids = [*provider_ids, *table]
        else:
            self._config_for_provider = config_for_provider
        self._store = store
        self._wall_clock = wall_clock
        self._sync_interval_s = sync_interval_s
        self._probe_ttl_s = probe_ttl_s
        self._permit_hold_s = permit_hold_s if permit_hold_s is not None else max(1.0, 5 * sync_interval_s)
        self._breakers: dict[str, SharedBreaker] = {}
        self._listeners: list[BreakerListener] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        for provider_id in provider_ids:
            self.get(provider_id)

    @classmethod
    def from_config(
        cls, config: RouterConfig, store: StateStore, *, wall_clock: Clock = time.time
    ) -> SharedBreakerRegistry:
        """Build from a RouterConfig: one shared breaker per configured provider."""
        return cls(
            config.breaker_config_for,
            store,
            wall_clock=wall_clock,
            sync_interval_s=config.state.breaker_sync_interval_s,
            probe_ttl_s=config.state.probe_permit_ttl_s,
            provider_ids=[p.id for p in config.providers],
        )

    def get(self, provider_id: str) -> SharedBreaker:
        breaker = self._breakers.get(provider_id)
        if breaker is None:
            breaker = SharedBreaker(
                provider_id,
                self._config_for_provider(provider_id),
                self._store,
                wall_clock=self._wall_clock,
                request_sync=self._wake.set,
                probe_ttl_s=self._probe_ttl_s,
                permit_hold_s=self._permit_hold_s,
            )
            for listener in self._listeners:
                breaker.add_listener(listener)
            self._breakers[provider_id] = breaker
        return breaker

    def is_available(self, provider_id: str) -> bool:
        # Created on first read: another replica may have opened this provider's breaker.
        return self.get(provider_id).is_available()

    def seconds_until_available(self, provider_ids: Iterable[str]) -> float:
        waits = [self.get(p).seconds_until_available() for p in provider_ids]
        return min(waits, default=0.0)

    def add_listener(self, listener: BreakerListener) -> None:
        self._listeners.append(listener)
        for breaker in self._breakers.values():
            breaker.add_listener(listener)

    def snapshots(self) -> list[BreakerSnapshot]:
        return [b.snapshot() for b in self._breakers.values()]

    def states(self) -> dict[str, BreakerState]:
        """The state of every breaker made so far; safe to call from another thread."""
        return {provider_id: breaker.state for provider_id, breaker in list(self._breakers.items())}

    # -- sync task ------------------------------------------------------------------------

    async def sync_once(self) -> None:
        """One exchange with the store for every breaker (the task's step; tests call it)."""
        await asyncio.gather(*(b.sync_once() for b in list(self._breakers.values())))

    async def start(self) -> None:
        """Adopt the shared state, then keep syncing in the background."""
        await self.sync_once()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sync_once(), timeout=2.0)  # last outcomes to the store

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._sync_interval_s)
            self._wake.clear()
            try:
                await self.sync_once()
            except Exception as exc:
                logger.error("breaker sync failed (%s)", type(exc).__name__)


def _event_cause(
    before: BreakerRecord, after: BreakerRecord, event: BreakerEvent, settings: BreakerConfig
) -> str:
    """Why one call outcome moved the breaker from `before` to `after` (for the event log)."""
    if after.state == "closed":
        return "a half-open probe call succeeded"
    open_for = f"open for {after.open_until - event.at:.3g} s"
    if before.state == "open":
        return f"the half-open probe call failed ({event.kind}); {open_for}"
    if after.consecutive_failures >= settings.failure_threshold:
        return f"{after.consecutive_failures} failures in a row (the last: {event.kind}); {open_for}"
    if event.retry_after_s:
        return f"the provider asked to wait {event.retry_after_s:g} s ({event.kind}); {open_for}"
    calls = len(after.window)
    return f"{after.window_failures} of the last {calls} calls failed (the last: {event.kind}); {open_for}"
