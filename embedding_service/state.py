"""Where the service keeps its registry and takes its leases, from the `state:` section.

`sqlite` (the default): `SqliteRegistry` at `state_path` and in-process `LocalLeases`; one
process owns its Chroma database. `redis`: `RedisRegistry` and `RedisLeases` on one connection,
shared by every replica of the service (`embedding_service.redis_state`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from embedding_service.collection_registry import RegistryStore, SqliteRegistry
from embedding_service.config import EmbeddingConfig
from embedding_service.leases import Leases, LocalLeases

__all__ = ["open_state"]

_log = logging.getLogger(__name__)


def open_state(
    config: EmbeddingConfig, clock: Callable[[], datetime] | None = None
) -> tuple[RegistryStore, Leases]:
    """The registry and the leases `config.state` describes (nothing is contacted yet)."""
    state = config.state
    if state.backend == "redis":
        # Imported here so a one-process service never loads the Redis client.
        from embedding_service.redis_state import RedisConnection, RedisLeases, RedisRegistry, holder_id

        connection = RedisConnection(state)
        holder = holder_id()
        _log.info(
            "embedding state: shared registry in redis (prefix %s), leases held as %s, TTL %.1f s",
            state.key_prefix,
            holder,
            state.lease_ttl_s,
        )
        shared_leases: Leases = RedisLeases(
            connection, holder=holder, ttl_s=state.lease_ttl_s, wait_s=state.lease_wait_s
        )
        shared_registry: RegistryStore = RedisRegistry(connection, clock=clock)
        return shared_registry, shared_leases
    registry: RegistryStore = SqliteRegistry(config.state_path, clock=clock)
    leases: Leases = LocalLeases()
    return registry, leases
