"""The Embedding service's shared state in Redis: the registry and the leases of its replicas.

With `state.backend: redis`, several replicas of the service on one Chroma server share the
collection registry, the aliases and the migrations (with their cursor, phase and counts) here,
and coordinate with leases (`embedding_service.leases`). Key design (`P` is `state.key_prefix`):

=====================  ======  ===============================================================
key                    type    holds
=====================  ======  ===============================================================
P:meta                 hash    `schema`, `created_at`: written once; its absence later means
                               Redis lost its data (see below)
P:col                  hash    collection name -> JSON CollectionRecord
P:chroma               hash    Chroma name -> collection name (Chroma names are unique too)
P:mig                  hash    migration id -> JSON MigrationRecord (ended ones are kept)
P:active               hash    base -> id of its active migration (at most one per base)
P:lease:<name>         string  `<token>:<holder>` of the lease's holder, PX = the lease's TTL
P:fence                string  counter: every acquisition takes the next fencing token
=====================  ======  ===============================================================

Every change is one Lua script, so it is atomic across replicas, and a change made under a
lease (`fence=`) first checks that `P:lease:<name>` still holds the caller's value: a holder
whose lease expired while it was paused cannot swap an alias or move a cursor afterwards. For
Redis Cluster set `key_prefix` to a hash tag such as `{sekha-embedding}`.

Reads go to Redis each time (a replica sees a migration or a switch from the next request on)
and keep the last answer as this replica's view. While Redis is unreachable, reads and plain
upserts are served from that view; whatever needs a lease or changes the registry is refused
with UNAVAILABLE and RetryInfo; a background task pings every `reconnect_interval_s` and the
service resumes by itself once Redis answers. Redis must persist its data (AOF, as the deploy
configs run it): if it comes back empty (`P:meta` missing), the registry is lost, which this
service reports (ERROR log) and treats as an outage rather than starting a new, empty registry
next to existing collections.

Nothing Redis says ends up in a log line or an error: logs name the exception class only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from embedding_service.collection_registry import CollectionRecord, MigrationRecord, not_active
from embedding_service.config import StateConfig
from embedding_service.domain import DistanceMetric, MigrationState
from embedding_service.leases import Lease, LeaseLostError, lease_unavailable
from sekha_runtime.errors import AlreadyExistsError, NotFoundError, UnavailableError

__all__ = ["RedisConnection", "RedisLeases", "RedisRegistry", "holder_id"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = "1"

# Shared prelude of every change: the registry must exist (Redis did not lose it) and the
# fencing lease, when one is given (ARGV[1] not empty), must still hold the caller's value.
# KEYS: meta, col, chroma, mig, active, fence lease.
_LUA_PRELUDE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
if ARGV[1] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[1] then return {'fenced'} end
local function insert(json, name, chroma, base, primary)
  if redis.call('HEXISTS', KEYS[2], name) == 1 or redis.call('HEXISTS', KEYS[3], chroma) == 1 then
    return false
  end
  if primary == '1' then
    for _, v in ipairs(redis.call('HVALS', KEYS[2])) do
      local r = cjson.decode(v)
      if r.base == base and r.primary then return false end
    end
  end
  redis.call('HSET', KEYS[2], name, json)
  redis.call('HSET', KEYS[3], chroma, name)
  return true
end
local function set_flags(name, serving, writing, primary)
  local raw = redis.call('HGET', KEYS[2], name)
  if not raw then return end
  local r = cjson.decode(raw)
  r.serving_reads = serving
  r.receiving_writes = writing
  if primary ~= nil then r.primary = primary end
  redis.call('HSET', KEYS[2], name, cjson.encode(r))
end
"""

# ARGV: fence, record json, name, chroma name, base, primary (0|1)
_LUA_ADD_COLLECTION = (
    _LUA_PRELUDE
    + """
if not insert(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]) then return {'exists'} end
return {'ok'}
"""
)

# ARGV: fence, name
_LUA_REMOVE_COLLECTION = (
    _LUA_PRELUDE
    + """
local raw = redis.call('HGET', KEYS[2], ARGV[2])
if raw then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], cjson.decode(raw).chroma_name)
end
return {'ok'}
"""
)

# ARGV: fence, target json, target name, target chroma name, base, migration id, migration json
_LUA_BEGIN_MIGRATION = (
    _LUA_PRELUDE
    + """
local active = redis.call('HGET', KEYS[5], ARGV[5])
if active then return {'active', active} end
if not insert(ARGV[2], ARGV[3], ARGV[4], ARGV[5], '0') then return {'exists'} end
redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
redis.call('HSET', KEYS[5], ARGV[5], ARGV[6])
return {'ok'}
"""
)

# ARGV: fence, id, updated_at, then optional fields as json: state, total, migrated, cursor
# ('' = unchanged)
_LUA_UPDATE_MIGRATION = (
    _LUA_PRELUDE
    + """
local raw = redis.call('HGET', KEYS[4], ARGV[2])
if not raw then return {'notfound'} end
local m = cjson.decode(raw)
if ARGV[4] ~= '' then m.state = ARGV[4] end
if ARGV[5] ~= '' then m.total_documents = tonumber(ARGV[5]) end
if ARGV[6] ~= '' then m.migrated_documents = tonumber(ARGV[6]) end
if ARGV[7] ~= '' then m.cursor = ARGV[7] end
m.updated_at = ARGV[3]
local encoded = cjson.encode(m)
redis.call('HSET', KEYS[4], ARGV[2], encoded)
return {'ok', encoded}
"""
)

# The alias swap. ARGV: fence, id, updated_at, document count
_LUA_COMPLETE_MIGRATION = (
    _LUA_PRELUDE
    + """
local raw = redis.call('HGET', KEYS[4], ARGV[2])
if not raw then return {'notfound'} end
local m = cjson.decode(raw)
if redis.call('HGET', KEYS[5], m.base) ~= m.id then return {'ended', raw} end
local source = redis.call('HGET', KEYS[2], m.source_collection)
local was_primary = source ~= false and cjson.decode(source).primary
set_flags(m.source_collection, false, false, false)
set_flags(m.target_collection, true, true, was_primary)
m.state = 'COMPLETED'
m.total_documents = tonumber(ARGV[4])
m.migrated_documents = tonumber(ARGV[4])
m.updated_at = ARGV[3]
m.error = ''
local encoded = cjson.encode(m)
redis.call('HSET', KEYS[4], m.id, encoded)
redis.call('HDEL', KEYS[5], m.base)
return {'ok', encoded}
"""
)

# ARGV: fence, id, updated_at, error
_LUA_FAIL_MIGRATION = (
    _LUA_PRELUDE
    + """
local raw = redis.call('HGET', KEYS[4], ARGV[2])
if not raw then return {'notfound'} end
local m = cjson.decode(raw)
if redis.call('HGET', KEYS[5], m.base) ~= m.id then return {'ended', raw} end
set_flags(m.target_collection, false, false, nil)
m.state = 'FAILED'
m.updated_at = ARGV[3]
m.error = ARGV[4]
local encoded = cjson.encode(m)
redis.call('HSET', KEYS[4], m.id, encoded)
redis.call('HDEL', KEYS[5], m.base)
return {'ok', encoded}
"""
)

# Reads return whether the registry exists first. KEYS: meta, col
_LUA_READ_COLLECTIONS = """
return {redis.call('EXISTS', KEYS[1]), redis.call('HVALS', KEYS[2])}
"""

# KEYS: meta, mig, active
_LUA_READ_ACTIVE = """
local ids = redis.call('HVALS', KEYS[3])
local records = {}
if #ids > 0 then records = redis.call('HMGET', KEYS[2], unpack(ids)) end
return {redis.call('EXISTS', KEYS[1]), records}
"""

# KEYS: lease, fence counter, meta. ARGV: holder, ttl_ms. Returns the token, or 0 when held.
_LUA_ACQUIRE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
"""

# KEYS: lease. ARGV: value, ttl_ms
_LUA_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease. ARGV: value
_LUA_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def holder_id() -> str:
    """This replica's name in lease values and logs: host, pid and a random suffix."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class RegistryLostError(UnavailableError):
    """Redis answers but the registry is gone (it restarted without its data)."""

    reason = "STATE_UNAVAILABLE"


class RedisConnection:
    """One Redis client shared by the registry and the leases, with outage tracking.

    Any Redis error marks the connection down (one WARNING), after which calls fail at once
    with UnavailableError instead of waiting for timeouts; a background task pings every
    `reconnect_interval_s` and marks it up again (one WARNING) when Redis answers and the
    registry is still there.
    """

    def __init__(self, config: StateConfig, client: redis_asyncio.Redis | None = None) -> None:
        if client is None:
            if config.redis_url is None:
                raise ValueError("state.redis_url is required for the redis backend")
            # No client-side retries: a script is not safe to resend blindly (the first try may
            # have run), and a down Redis must turn into the outage path quickly.
            client = redis_asyncio.Redis.from_url(
                config.redis_url.get_secret_value(),
                decode_responses=True,
                socket_timeout=config.redis_timeout_s,
                socket_connect_timeout=config.redis_timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        self.client = client
        self.config = config
        self.prefix = config.key_prefix
        self.healthy = True
        self.registry_lost = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    @property
    def retry_after_s(self) -> float:
        return self.config.reconnect_interval_s

    def unavailable(self, what: str = "the shared state") -> UnavailableError:
        if self.registry_lost:
            return RegistryLostError(
                "the shared registry in redis lost its data; restore redis", retry_after_s=self.retry_after_s
            )
        return UnavailableError(
            f"{what} is unavailable (redis unreachable); retry",
            retry_after_s=self.retry_after_s,
            reason="STATE_UNAVAILABLE",
        )

    async def create_registry(self) -> None:
        """Write the registry's marker on a Redis that has none (the first replica ever to start)."""
        meta = self.key("meta")
        created = await self.call(lambda: self.client.hsetnx(meta, "schema", SCHEMA_VERSION))
        if created:
            await self.call(lambda: self.client.hsetnx(meta, "created_at", datetime.now(UTC).isoformat()))
            _log.info("embedding state: created a new shared registry in redis (prefix %s)", self.prefix)

    async def call(self, call: Callable[[], Awaitable[T]], what: str = "the shared state") -> T:
        """Run a Redis call; any failure marks the connection down and raises UnavailableError."""
        if not self.healthy:
            raise self.unavailable(what)
        try:
            return await call()
        except (RedisError, OSError) as exc:
            self.lost(exc)
            raise self.unavailable(what) from None

    def lost(self, exc: BaseException) -> None:
        """Redis did not answer: go down (one WARNING) and start pinging it."""
        if self.healthy:
            _log.warning(
                "embedding state: redis unreachable (%s); reads and plain upserts go on from the last "
                "registry view, new collections and migration steps wait for it",
                type(exc).__name__,
            )
        self._down()

    def registry_gone(self) -> None:
        """Redis answered without the registry's marker: it lost its data (one ERROR)."""
        if not self.registry_lost:
            self.registry_lost = True
            _log.error(
                "embedding state: the shared registry in redis is gone (redis restarted without its "
                "data?); reads and plain upserts go on from this replica's last view, registry changes "
                "are refused until redis is restored"
            )
        self._down()

    def _down(self) -> None:
        self.healthy = False
        if not self._closed and (self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect_loop(), name="embedding-state-reconnect"
            )

    async def _reconnect_loop(self) -> None:
        while not self._closed and not self.healthy:
            await asyncio.sleep(self.config.reconnect_interval_s)
            try:
                present = await self.client.exists(self.key("meta"))
            except (RedisError, OSError) as exc:
                _log.debug("redis still unreachable (%s)", type(exc).__name__)
                continue
            if not present:
                if not self.registry_lost:
                    self.registry_gone()
                continue
            self.registry_lost = False
            self.healthy = True
            _log.warning("embedding state: redis reachable again, shared registry restored")

    async def aclose(self) -> None:
        self._closed = True
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.client.aclose()


# -- records as JSON ------------------------------------------------------------------------------


def _collection_json(record: CollectionRecord) -> str:
    return json.dumps(
        {
            "name": record.name,
            "base": record.base,
            "chroma_name": record.chroma_name,
            "dimension": record.dimension,
            "model": record.model,
            "distance_metric": record.distance_metric.value,
            "created_at": record.created_at.isoformat(),
            "serving_reads": record.serving_reads,
            "receiving_writes": record.receiving_writes,
            "primary": record.primary,
        }
    )


def _collection(raw: str) -> CollectionRecord:
    data = json.loads(raw)
    return CollectionRecord(
        name=data["name"],
        base=data["base"],
        chroma_name=data["chroma_name"],
        dimension=int(data["dimension"]),
        model=data["model"],
        distance_metric=DistanceMetric(data["distance_metric"]),
        created_at=datetime.fromisoformat(data["created_at"]),
        serving_reads=bool(data["serving_reads"]),
        receiving_writes=bool(data["receiving_writes"]),
        primary=bool(data["primary"]),
    )


def _migration_json(record: MigrationRecord) -> str:
    return json.dumps(
        {
            "id": record.id,
            "base": record.base,
            "source_collection": record.source_collection,
            "target_collection": record.target_collection,
            "target_model": record.target_model,
            "source_model": record.source_model,
            "state": record.state.value,
            "total_documents": record.total_documents,
            "migrated_documents": record.migrated_documents,
            "cursor": record.cursor,
            "batch_size": record.batch_size,
            "created_at": record.created_at.isoformat(),
            "updated_at": record.updated_at.isoformat(),
            "error": record.error,
        }
    )


def _migration(raw: str) -> MigrationRecord:
    data = json.loads(raw)
    cursor = data.get("cursor")
    return MigrationRecord(
        id=data["id"],
        base=data["base"],
        source_collection=data["source_collection"],
        target_collection=data["target_collection"],
        target_model=data["target_model"],
        state=MigrationState(data["state"]),
        total_documents=int(data["total_documents"]),
        migrated_documents=int(data["migrated_documents"]),
        cursor=cursor if isinstance(cursor, str) else None,
        batch_size=int(data["batch_size"]),
        created_at=datetime.fromisoformat(data["created_at"]),
        updated_at=datetime.fromisoformat(data["updated_at"]),
        error=data.get("error") or "",
        source_model=data.get("source_model") or "",
    )


class RedisRegistry:
    """The `RegistryStore` contract in Redis, with this replica's last view for outages."""

    def __init__(self, connection: RedisConnection, clock: Callable[[], datetime] | None = None) -> None:
        self._redis = connection
        self._clock = clock or (lambda: datetime.now(UTC))
        client = connection.client
        self._add_collection = client.register_script(_LUA_ADD_COLLECTION)
        self._remove_collection = client.register_script(_LUA_REMOVE_COLLECTION)
        self._begin_migration = client.register_script(_LUA_BEGIN_MIGRATION)
        self._update_migration = client.register_script(_LUA_UPDATE_MIGRATION)
        self._complete_migration = client.register_script(_LUA_COMPLETE_MIGRATION)
        self._fail_migration = client.register_script(_LUA_FAIL_MIGRATION)
        self._read_collections = client.register_script(_LUA_READ_COLLECTIONS)
        self._read_active = client.register_script(_LUA_READ_ACTIVE)
        # This replica's last view: served while Redis is unreachable.
        self._collections: dict[str, CollectionRecord] | None = None
        self._migrations: dict[str, MigrationRecord] = {}
        self._active: dict[str, str] | None = None  # base -> migration id
        self._seen = False  # whether this replica ever read the registry

    async def _absent(self) -> None:
        """The registry's marker is missing: a fresh Redis (create it) or one that lost its data."""
        if self._seen:
            self._redis.registry_gone()
            raise self._redis.unavailable("the collection registry")
        # A replica that never saw the registry is the first one on this Redis.
        await self._redis.create_registry()

    @property
    def shared(self) -> bool:
        return True

    def _keys(self, fence: Lease | None) -> list[str]:
        k = self._redis.key
        fence_key = k(f"lease:{fence.name}") if fence is not None else k("lease:-")
        return [k("meta"), k("col"), k("chroma"), k("mig"), k("active"), fence_key]

    def _now(self) -> str:
        return self._clock().isoformat()

    # -- reads ------------------------------------------------------------------------------------

    async def _all_collections(self) -> dict[str, CollectionRecord]:
        k = self._redis.key
        if self._redis.healthy:
            try:
                present, values = await self._redis.call(
                    lambda: self._read_collections(keys=[k("meta"), k("col")])
                )
                if not present:
                    await self._absent()
            except UnavailableError:
                pass
            else:
                self._seen = True
                records = (_collection(raw) for raw in values)
                self._collections = {record.name: record for record in records}
                return self._collections
        if self._collections is None:
            raise self._redis.unavailable("the collection registry")
        return self._collections

    async def collections(self, base: str | None = None) -> list[CollectionRecord]:
        records = (await self._all_collections()).values()
        return sorted((r for r in records if base is None or r.base == base), key=lambda r: r.name)

    async def collection(self, name: str) -> CollectionRecord | None:
        return (await self._all_collections()).get(name)

    async def name_taken(self, name: str) -> bool:
        records = await self._all_collections()
        return name in records or any(r.chroma_name == name for r in records.values())

    async def _active_view(self) -> list[MigrationRecord]:
        k = self._redis.key
        if self._redis.healthy:
            try:
                present, values = await self._redis.call(
                    lambda: self._read_active(keys=[k("meta"), k("mig"), k("active")])
                )
                if not present:
                    await self._absent()
            except UnavailableError:
                pass
            else:
                self._seen = True
                records = [_migration(raw) for raw in values if raw]
                self._migrations.update((r.id, r) for r in records)
                self._active = {r.base: r.id for r in records}
                return records
        if self._active is None:
            raise self._redis.unavailable("the migration registry")
        return [self._migrations[i] for i in self._active.values() if i in self._migrations]

    async def active_migrations(self, base: str | None = None) -> list[MigrationRecord]:
        records = [r for r in await self._active_view() if base is None or r.base == base]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    async def migration(self, migration_id: str) -> MigrationRecord:
        try:
            raw: str | None = await self._redis.call(
                lambda: self._redis.client.hget(self._redis.key("mig"), migration_id)  # type: ignore[arg-type,return-value]
            )
        except UnavailableError:
            cached = self._migrations.get(migration_id)
            if cached is None:
                raise
            return cached
        if raw is None:
            raise NotFoundError("migration", migration_id)
        record = _migration(raw)
        self._migrations[record.id] = record
        return record

    async def migrations(self, base: str) -> list[MigrationRecord]:
        try:
            values: list[str] | None = await self._redis.call(
                lambda: self._redis.client.hvals(self._redis.key("mig"))  # type: ignore[arg-type,return-value]
            )
        except UnavailableError:
            values = None
        if values is not None:
            self._migrations.update((r.id, r) for r in map(_migration, values))
        records = [r for r in self._migrations.values() if r.base == base]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    # -- changes ----------------------------------------------------------------------------------

    async def _change(self, script: Any, fence: Lease | None, args: list[str], what: str) -> list[Any]:
        if fence is not None:
            fence.check()
        fence_value = fence.value if fence is not None else ""

        async def run() -> list[Any]:
            return list(
                await self._redis.call(
                    lambda: script(keys=self._keys(fence), args=[fence_value, *args]), what
                )
            )

        reply = await run()
        if reply[0] == "lost":
            await self._absent()  # raises unless this replica is the first on a fresh Redis
            self._seen = True
            reply = await run()
            if reply[0] == "lost":
                self._redis.registry_gone()
                raise self._redis.unavailable(what)
        status = reply[0]
        if status == "fenced":
            assert fence is not None
            fence.mark_lost()
            raise LeaseLostError(fence.name, fence.ttl_s)
        return reply

    async def add_collection(self, record: CollectionRecord, fence: Lease | None = None) -> CollectionRecord:
        reply = await self._change(
            self._add_collection,
            fence,
            [
                _collection_json(record),
                record.name,
                record.chroma_name,
                record.base,
                "1" if record.primary else "0",
            ],
            "registering a collection",
        )
        if reply[0] == "exists":
            raise AlreadyExistsError(f"collection {record.name!r} already exists", "collection", record.name)
        if self._collections is not None:
            self._collections[record.name] = record
        return record

    async def remove_collection(self, name: str, fence: Lease | None = None) -> None:
        await self._change(self._remove_collection, fence, [name], "removing a collection")
        if self._collections is not None:
            self._collections.pop(name, None)

    async def begin_migration(
        self, migration: MigrationRecord, target: CollectionRecord, fence: Lease | None = None
    ) -> MigrationRecord:
        reply = await self._change(
            self._begin_migration,
            fence,
            [
                _collection_json(target),
                target.name,
                target.chroma_name,
                migration.base,
                migration.id,
                _migration_json(migration),
            ],
            "starting a migration",
        )
        if reply[0] == "active":
            raise AlreadyExistsError(
                f"base {migration.base!r} already has a migration in progress", "migration", str(reply[1])
            )
        if reply[0] == "exists":
            raise AlreadyExistsError(f"collection {target.name!r} already exists", "collection", target.name)
        self._migrations[migration.id] = migration
        if self._active is not None:
            self._active[migration.base] = migration.id
        if self._collections is not None:
            self._collections[target.name] = target
        return migration

    def _ended(self, reply: list[Any], migration_id: str) -> MigrationRecord:
        if reply[0] == "notfound":
            raise NotFoundError("migration", migration_id)
        record = _migration(reply[1])
        self._migrations[record.id] = record
        if (
            not record.state.active
            and self._active is not None
            and self._active.get(record.base) == record.id
        ):
            del self._active[record.base]
        if reply[0] == "ended":
            raise not_active(record)
        return record

    async def update_migration(
        self,
        migration_id: str,
        *,
        state: MigrationState | None = None,
        total_documents: int | None = None,
        migrated_documents: int | None = None,
        cursor: str | None = None,
        fence: Lease | None = None,
    ) -> MigrationRecord:
        def arg(value: object) -> str:
            return "" if value is None else str(value)

        reply = await self._change(
            self._update_migration,
            fence,
            [
                migration_id,
                self._now(),
                state.value if state is not None else "",
                arg(total_documents),
                arg(migrated_documents),
                arg(cursor),
            ],
            "recording migration progress",
        )
        return self._ended(reply, migration_id)

    async def complete_migration(
        self, migration_id: str, document_count: int, fence: Lease | None = None
    ) -> MigrationRecord:
        reply = await self._change(
            self._complete_migration,
            fence,
            [migration_id, self._now(), str(document_count)],
            "switching a base to its new collection",
        )
        record = self._ended(reply, migration_id)
        if self._collections is not None:  # the view follows at once; the next read refreshes it all
            source = self._collections.get(record.source_collection)
            target = self._collections.get(record.target_collection)
            if source is not None and target is not None:
                self._collections[source.name] = replace(
                    source, serving_reads=False, receiving_writes=False, primary=False
                )
                self._collections[target.name] = replace(
                    target, serving_reads=True, receiving_writes=True, primary=source.primary
                )
        return record

    async def fail_migration(
        self, migration_id: str, error: str, fence: Lease | None = None
    ) -> MigrationRecord:
        reply = await self._change(
            self._fail_migration, fence, [migration_id, self._now(), error], "failing a migration"
        )
        return self._ended(reply, migration_id)

    async def aclose(self) -> None:
        """Close the Redis connection (the leases sharing it are closed first)."""
        await self._redis.aclose()


class RedisLeases:
    """Leases in Redis (`SET NX PX` with a fencing token from `INCR`), renewed every TTL/3.

    A lease is lost when a renewal finds another holder's value (this holder was paused or cut off
    past its TTL and someone else took over), or when renewals kept failing until the TTL ran out.
    Either way one WARNING says so and the holder's `on_lost` callbacks run (a migration's task is
    cancelled); its `check()` fails from then on.
    """

    def __init__(
        self,
        connection: RedisConnection,
        *,
        holder: str,
        ttl_s: float,
        wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = connection
        self.holder = holder
        self._ttl_s = ttl_s
        self._wait_s = wait_s
        self._clock = clock
        client = connection.client
        self._acquire = client.register_script(_LUA_ACQUIRE)
        self._renew = client.register_script(_LUA_RENEW)
        self._release = client.register_script(_LUA_RELEASE)
        self._renewals: dict[str, asyncio.Task[None]] = {}  # lease value -> its renewal task
        self._held: dict[str, Lease] = {}

    @property
    def shared(self) -> bool:
        return True

    def _key(self, name: str) -> str:
        return self._redis.key(f"lease:{name}")

    async def _acquire_once(self, name: str, what: str) -> Lease | None:
        ttl_ms = str(max(1, int(self._ttl_s * 1000)))
        sent = self._clock()
        try:
            token = int(
                await self._redis.call(
                    lambda: self._acquire(
                        keys=[self._key(name), self._redis.key("fence"), self._redis.key("meta")],
                        args=[self.holder, ttl_ms],
                    )
                )
            )
        except UnavailableError:
            raise lease_unavailable(what, self._redis.retry_after_s) from None
        if token < 0:
            self._redis.registry_gone()
            raise lease_unavailable(what, self._redis.retry_after_s)
        if token == 0:
            return None
        lease = Lease(
            name=name,
            token=token,
            value=f"{token}:{self.holder}",
            ttl_s=self._ttl_s,
            deadline=sent + self._ttl_s,
            clock=self._clock,
        )
        lease.on_lost.append(lambda: self._lost(lease))
        self._held[lease.value] = lease
        self._renewals[lease.value] = asyncio.get_running_loop().create_task(
            self._renew_loop(lease), name=f"lease-{name}"
        )
        return lease

    def _lost(self, lease: Lease) -> None:
        _log.warning(
            "lost the lease %s (token %d): another replica holds it now or it expired; no further "
            "step is taken under it",
            lease.name,
            lease.token,
        )
        self._held.pop(lease.value, None)
        task = self._renewals.pop(lease.value, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _renew_loop(self, lease: Lease) -> None:
        ttl_ms = str(max(1, int(self._ttl_s * 1000)))
        while not lease.lost:
            await asyncio.sleep(self._ttl_s / 3)
            if lease.lost:
                return
            if self._clock() >= lease.deadline:  # this process did not run for a whole TTL
                lease.mark_lost()
                return
            sent = self._clock()
            try:
                renewed = await self._redis.call(
                    lambda: self._renew(keys=[self._key(lease.name)], args=[lease.value, ttl_ms])
                )
            except UnavailableError:
                if self._clock() >= lease.deadline:
                    lease.mark_lost()
                    return
                continue
            if not int(renewed):
                lease.mark_lost()
                return
            lease.deadline = sent + self._ttl_s

    @contextlib.asynccontextmanager
    async def hold(self, name: str, what: str) -> AsyncIterator[Lease]:
        give_up = self._clock() + self._wait_s
        pause = 0.02
        while True:
            lease = await self._acquire_once(name, what)
            if lease is not None:
                break
            if self._clock() >= give_up:
                raise UnavailableError(
                    f"{what} waits for another replica that is changing the same base; retry",
                    retry_after_s=min(self._ttl_s, 5.0),
                    reason="LEASE_BUSY",
                )
            # Jittered so replicas waiting for one lease do not poll in step.
            await asyncio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.25)
        try:
            yield lease
        finally:
            await self.release(lease)

    async def try_acquire(self, name: str) -> Lease | None:
        return await self._acquire_once(name, f"taking over {name.split(':', 1)[0]} work")

    async def confirm(self, lease: Lease) -> None:
        lease.check()
        try:
            current = await self._redis.call(lambda: self._redis.client.get(self._key(lease.name)))
        except UnavailableError:
            # Not known to be lost, but not confirmable either: the step waits for Redis.
            what = f"{lease.name.split(':', 1)[0]} work"
            raise lease_unavailable(what, self._redis.retry_after_s) from None
        if current != lease.value:
            lease.mark_lost()
            raise LeaseLostError(lease.name, lease.ttl_s)
        lease.check()

    async def release(self, lease: Lease) -> None:
        task = self._renewals.pop(lease.value, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._held.pop(lease.value, None)
        if lease.lost:
            return
        lease.lost = True  # released: no step may use it any more
        with contextlib.suppress(UnavailableError):  # it expires by itself
            await self._redis.call(lambda: self._release(keys=[self._key(lease.name)], args=[lease.value]))

    async def aclose(self) -> None:
        for lease in list(self._held.values()):
            await self.release(lease)
