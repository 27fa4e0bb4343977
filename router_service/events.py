"""The Router's operational events outside the data plane: breaker transitions and the state
backend's health.

The data plane logs its own events where they happen (`gateway.Attempts`: failed attempts,
fallbacks, disabled providers, broken streams, refused requests); the probes log theirs
(`probes`); the state store logs losing and regaining its backend (`state.redis_store`). This
module holds what listens from outside: a breaker listener that logs each transition with its
cause, and `StateBackendHealth`, which follows the store's health for metrics and
GetProviderStatus (the store's health-listener hook).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from router_service.breaker import Breakers, BreakerState
from router_service.state.base import StateStore
from sekha_runtime.events import EventLog

__all__ = ["StateBackendHealth", "StateBackendView", "log_breaker_transitions"]


def log_breaker_transitions(breakers: Breakers, events: EventLog) -> None:
    """Log every transition of `breakers` (a BreakerRegistry or SharedBreakerRegistry): WARNING
    when one opens, INFO when it half-opens or closes, with the cause the breaker gives."""

    def transition(provider_id: str, old: BreakerState, new: BreakerState) -> None:
        cause = getattr(breakers.get(provider_id), "transition_cause", "")
        message = f"circuit breaker of {provider_id}: {old.value} -> {new.value}" + (
            f" ({cause})" if cause else ""
        )
        fields = {"provider": provider_id, "from_state": old.value, "to_state": new.value, "cause": cause}
        # Rate-limited per kind of transition: a flapping breaker is summarised, and one kind
        # never hides another (an open right after a half-open is always seen).
        subject = f"{provider_id}|{old.value}|{new.value}"
        if new is BreakerState.OPEN:
            events.warning("breaker_transition", message, subject=subject, **fields)
        else:
            events.info("breaker_transition", message, subject=subject, **fields)

    breakers.add_listener(transition)


@dataclass(frozen=True, slots=True)
class StateBackendView:
    """What GetProviderStatus says about the state backend."""

    backend: str
    healthy: bool
    changed_at: float | None  # wall time of the last change of `healthy`; None: never changed
    message: str


class StateBackendHealth:
    """Follows a state store's health (its health-listener hook) for metrics and status."""

    def __init__(self, store: StateStore, backend: str, wall_clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self._store = store
        self._wall_clock = wall_clock
        self.changed_at: float | None = None
        self.changes = 0  # how often the backend was lost or regained
        store.add_health_listener(self._changed)
        if not store.healthy:  # lost before anyone listened (down at start)
            self.changed_at = wall_clock()

    @property
    def healthy(self) -> bool:
        return self._store.healthy

    def _changed(self, healthy: bool) -> None:
        self.changed_at = self._wall_clock()
        self.changes += 1

    def view(self) -> StateBackendView:
        backend = self.backend
        if self.healthy:
            where = "shared by every replica" if self._store.shared else "this process only"
            message = f"{backend}: healthy ({where})"
        else:
            message = (
                f"{backend} unreachable: this router serves budgets, rate limits and breakers on its "
                "local state, and replays spend once it is back"
            )
        return StateBackendView(backend, self.healthy, self.changed_at, message)
