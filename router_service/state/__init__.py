"""Router state that outlives a request: budgets, the spend ledger, rate limits, breaker state.

`open_store(config)` builds the backend the `state:` config section names and starts it. See
`base.StateStore` for the interface, `memory` and `sqlite` for the in-process backends and
`redis_store` for the one shared by replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from router_service.state.base import (
    BreakerEvent,
    BreakerRecord,
    BudgetKey,
    BudgetUsage,
    RateDecision,
    RateLimit,
    ReserveOutcome,
    SpendGrouping,
    SpendRecord,
    SpendRow,
    StateConfig,
    StateStore,
    StoreUnavailableError,
)
from router_service.state.memory import MemoryStore
from router_service.state.sqlite import SqliteStore

__all__ = [
    "BreakerEvent",
    "BreakerRecord",
    "BudgetKey",
    "BudgetUsage",
    "MemoryStore",
    "RateDecision",
    "RateLimit",
    "ReserveOutcome",
    "SpendGrouping",
    "SpendRecord",
    "SpendRow",
    "SqliteStore",
    "StateConfig",
    "StateStore",
    "StoreUnavailableError",
    "build_store",
    "open_store",
]


def build_store(config: StateConfig, wall_clock: Callable[[], float] = time.time) -> StateStore:
    """The configured backend, not started yet."""
    if config.backend == "memory":
        return MemoryStore()
    if config.backend == "sqlite":
        return SqliteStore(config.sqlite_path)
    # Imported here so the memory and SQLite backends do not need the redis package loaded.
    from router_service.state.redis_store import RedisStore

    assert config.redis_url is not None  # checked by StateConfig
    return RedisStore(
        config.redis_url.get_secret_value(),
        prefix=config.key_prefix,
        timeout_s=config.redis_timeout_s,
        reconnect_interval_s=config.reconnect_interval_s,
        max_pending_ops=config.max_pending_ops,
        spend_log_max_rows=config.spend_log_max_rows,
        hourly_retention_days=config.spend_hourly_retention_days,
        daily_retention_days=config.spend_daily_retention_days,
        wall_clock=wall_clock,
    )


async def open_store(config: StateConfig, wall_clock: Callable[[], float] = time.time) -> StateStore:
    """Build and start the configured backend (a Redis that is down starts it degraded, not failed)."""
    store = build_store(config, wall_clock)
    await store.start()
    return store
