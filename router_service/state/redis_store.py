"""Router state shared by every replica through Redis (`redis.asyncio`, atomic Lua scripts).

Key design (`P` is `state.key_prefix`, default `sekha`):

==================================  =========  ====================================================
key                                 type       holds
==================================  =========  ====================================================
P:b:<scope>|<period>|<window>       hash       `spent`, `reserved` (nano-USD), `r:<id>` = amount
                                               of each open reservation; expires after its window
P:b:<scope>|<period>|<window>:z     zset       reservation id -> expiry; stale ones (a replica died
                                               mid-request) are returned by the next reserve
P:s:h:<YYYYMMDDHH> / P:s:d:<YYYYMMDD>  hash    spend per UTC hour / day; field
                                               `<caller>\\x1f<provider>\\x1f<model>\\x1f<metric>`,
                                               metric c=cost nanos, n=requests, i/o=tokens,
                                               u=requests of unknown price, ci/cw/r=cached,
                                               cache-write and reasoning tokens (HINCRBY, exact)
P:s:log                             stream     raw ledger rows, capped (MAXLEN ~ spend_log_max_rows)
P:s:done:<reservation id>           string     settle marker (SET NX, 15 min): a settle replayed
                                               after an outage is not counted twice
P:r:<limit key>                     string     GCRA theoretical arrival time (us on the Redis server's
                                               clock, read by the script: TIME), PX-expiring
P:k:<breaker>                       hash       state, open_until, opened_at, consec, gen, opens
P:k:<breaker>:w                     list       the breaker's sliding window, '1' = failure
P:k:<breaker>:p:<gen>               string     half-open probe permits taken in generation `gen`
==================================  =========  ====================================================

Every check-and-change is one Lua script, so it is atomic across replicas. Scripts touch keys
they build from declared ones (expired reservations, probe counters), which a single Redis,
a primary with replicas, and Sentinel all allow; for Redis Cluster set `key_prefix` to a hash tag
such as `{sekha}` so every key lands in one slot.

GetSpend ranges are answered from the hour and day hashes: whole UTC days inside the range from
the day hashes, the rest from hour hashes, so a range is rounded outward to whole UTC hours (the
SQLite backend is exact). Hour hashes are kept `spend_hourly_retention_days`, day hashes
`spend_daily_retention_days`.

Outage: any Redis error marks the store unhealthy (health listeners are told) and a background
task pings every `reconnect_interval_s`. Meanwhile budgets, rate limits and spend are served by a
local `MemoryStore`: budget counters start from the last totals this replica saw in Redis (spent
plus reserved, the conservative choice), so each replica enforces the budget alone during the
outage; settles and releases are queued (at most `max_pending_ops`, oldest dropped first) and
replayed in order when Redis answers again, before the store reports healthy. Breaker operations
raise `StoreUnavailableError` instead: the shared breaker then runs on its local mirror. Redis
without persistence loses its history on restart; the replay restores only the outage's writes.

Nothing Redis says ends up in a log line or an error (a URL or a reply may carry a password or a
caller's data): logs name the exception class only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from router_service.breaker_rules import (
    LUA_RULES,
    RULE_PARAMETERS,
    BreakerEvent,
    BreakerRecord,
    BreakerSettings,
    lua_rule_arguments,
)
from router_service.state.base import (
    BudgetKey,
    BudgetUsage,
    RateDecision,
    RateLimit,
    ReserveOutcome,
    SpendGrouping,
    SpendRecord,
    SpendRow,
    StateStore,
    StoreUnavailableError,
    gcra_interval_us,
    sort_rows,
)
from router_service.state.memory import MemoryStore

__all__ = ["RedisStore", "spend_buckets"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SEP = "\x1f"
_HOUR = 3600
_DAY = 86400
_SETTLE_MARKER_TTL_S = 900
_BREAKER_KEY_TTL_S = 7 * _DAY
_PENDING = tuple[str, str, tuple[BudgetKey, ...], SpendRecord | None]

# Returns reservations past their expiry to the budget. Expects h, z, now in scope.
_LUA_PURGE = """
local function purge(h, z, now)
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 256)
  for _, rid in ipairs(expired) do
    local held = redis.call('HGET', h, 'r:' .. rid)
    if held then
      redis.call('HDEL', h, 'r:' .. rid)
      redis.call('HINCRBY', h, 'reserved', '-' .. held)
    end
    redis.call('ZREM', z, rid)
  end
end
"""

# KEYS: hash_1, zset_1, ..., hash_n, zset_n
# ARGV: id, amount, now, reservation_expiry, then per budget: limit, counter_ttl_s
# (TTLs are relative to the caller's clock, so a test clock far from Redis's still works)
_LUA_RESERVE = (
    _LUA_PURGE
    + """
local id, amount, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local n = #KEYS / 2
local out = {1, 0}
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  purge(h, z, now)
  local spent = tonumber(redis.call('HGET', h, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', h, 'reserved') or '0')
  out[#out + 1] = spent
  out[#out + 1] = reserved
  if out[1] == 1 and spent + reserved + amount > tonumber(ARGV[3 + 2 * i]) then
    out[1] = 0
    out[2] = i
  end
end
if out[1] == 1 then
  for i = 1, n do
    local h, z = KEYS[2 * i - 1], KEYS[2 * i]
    redis.call('HINCRBY', h, 'reserved', ARGV[2])
    redis.call('HSET', h, 'r:' .. id, ARGV[2])
    redis.call('ZADD', z, ARGV[4], id)
    redis.call('EXPIRE', h, ARGV[4 + 2 * i])
    redis.call('EXPIRE', z, ARGV[4 + 2 * i])
  end
end
return out
"""
)

# KEYS: hash_1, zset_1, ...; ARGV: now
_LUA_USAGE = (
    _LUA_PURGE
    + """
local out = {}
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  purge(h, z, ARGV[1])
  out[#out + 1] = tonumber(redis.call('HGET', h, 'spent') or '0')
  out[#out + 1] = tonumber(redis.call('HGET', h, 'reserved') or '0')
end
return out
"""
)

_LUA_RELEASE_ONE = """
local function release(h, z, id)
  local held = redis.call('HGET', h, 'r:' .. id)
  if held then
    redis.call('HDEL', h, 'r:' .. id)
    redis.call('HINCRBY', h, 'reserved', '-' .. held)
  end
  redis.call('ZREM', z, id)
end
"""

# KEYS: hash_1, zset_1, ...; ARGV: id
_LUA_RELEASE = (
    _LUA_RELEASE_ONE
    + """
for i = 1, #KEYS / 2 do
  release(KEYS[2 * i - 1], KEYS[2 * i], ARGV[1])
end
return 1
"""
)

# KEYS: marker, hour hash, day hash, log stream, then hash_1, zset_1, ...
# ARGV: id, cost, field prefix, input, output, unknown(0|1), marker_ttl, hour_ttl_s,
#       day_ttl_s, log_maxlen, n_budgets, counter_ttl_s_1..n, cached, cache-write and
#       reasoning tokens, then log field/value pairs
_LUA_SETTLE = (
    _LUA_RELEASE_ONE
    + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[7]) then
  return {0}
end
local id, cost = ARGV[1], ARGV[2]
local nb = tonumber(ARGV[11])
local out = {1}
for i = 1, nb do
  local h, z = KEYS[4 + 2 * i - 1], KEYS[4 + 2 * i]
  release(h, z, id)
  if cost ~= '0' then
    redis.call('HINCRBY', h, 'spent', cost)
    redis.call('EXPIRE', h, ARGV[11 + i])
  end
  out[#out + 1] = tonumber(redis.call('HGET', h, 'spent') or '0')
  out[#out + 1] = tonumber(redis.call('HGET', h, 'reserved') or '0')
end
local prefix = ARGV[3]
for _, h in ipairs({KEYS[2], KEYS[3]}) do
  redis.call('HINCRBY', h, prefix .. 'c', cost)
  redis.call('HINCRBY', h, prefix .. 'n', 1)
  redis.call('HINCRBY', h, prefix .. 'i', ARGV[4])
  redis.call('HINCRBY', h, prefix .. 'o', ARGV[5])
  if ARGV[6] == '1' then
    redis.call('HINCRBY', h, prefix .. 'u', 1)
  end
  for k, metric in ipairs({'ci', 'cw', 'r'}) do
    if ARGV[11 + nb + k] ~= '0' then
      redis.call('HINCRBY', h, prefix .. metric, ARGV[11 + nb + k])
    end
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('EXPIRE', KEYS[3], ARGV[9])
if tonumber(ARGV[10]) > 0 then
  local fields = {}
  for j = 15 + nb, #ARGV do
    fields[#fields + 1] = ARGV[j]
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[10], '*', unpack(fields))
end
return out
"""
)

# The time of the Redis server in microseconds, unless the caller gave one (ARGV[1] ~= '').
# Every replica then measures a rate limit on the same clock, at the moment its script runs:
# a timestamp taken by a replica before its call can be older than one already applied (it
# queued behind other calls) or skewed (another host's clock), and a refusal's wait computed
# from it can be shorter than the real one.
_LUA_NOW = """
local function now_us()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

# GCRA over several limits, all or none. KEYS: limit keys.
# ARGV: now_us ('' = the server's time), then per key: period_us, increment_us, oversize(0|1)
_LUA_RATE = (
    _LUA_NOW
    + """
local now = now_us()
local tats = {}
for i = 1, #KEYS do
  local period = tonumber(ARGV[3 * i - 1])
  local increment = tonumber(ARGV[3 * i])
  local oversize = ARGV[3 * i + 1] == '1'
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + increment
  if new_tat - period > now and not (oversize and tat <= now) then
    local wait = new_tat - period - now
    if oversize then wait = tat - now end
    return {0, i, string.format('%.0f', wait)}
  end
  tats[i] = new_tat
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX',
             string.format('%d', math.ceil((tats[i] - now) / 1000) + 1))
end
return {1, 0, '0'}
"""
)

# KEYS: limit keys; ARGV: now_us ('' = the server's time), then per key: decrement_us
_LUA_REFUND = (
    _LUA_NOW
    + """
local now = now_us()
for i = 1, #KEYS do
  local tat = redis.call('GET', KEYS[i])
  if tat then
    tat = tonumber(tat) - tonumber(ARGV[i + 1])
    if tat <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX',
                 string.format('%d', math.ceil((tat - now) / 1000) + 1))
    end
  end
end
return 1
"""
)

_LUA_BREAKER_READ = """
local function read(h, w)
  local st = redis.call('HMGET', h, 'state', 'open_until', 'opened_at', 'consec', 'gen', 'opens')
  return {
    state = st[1] or 'closed', open_until = tonumber(st[2] or '0'), opened_at = st[3] or '',
    consec = tonumber(st[4] or '0'), gen = tonumber(st[5] or '0'), opens = tonumber(st[6] or '0'),
    window = redis.call('LRANGE', w, 0, -1),
  }
end
local function reply(b)
  local out = {b.state, string.format('%.17g', b.open_until), b.opened_at, b.consec, b.gen, b.opens}
  for _, v in ipairs(b.window) do out[#out + 1] = v end
  return out
end
"""

# The breaker rules are `breaker_rules.LUA_RULES` (the port of `apply_breaker_event` that sits next
# to it); this script only reads the record, applies the events in order and writes it back.
# KEYS: hash, window list. ARGV: the rule settings (`lua_rule_arguments`), then the keys' TTL,
# then per event: failed(0|1), at, retry_after ('' = none).
_BREAKER_TTL_ARG = len(RULE_PARAMETERS) + 1
_LUA_BREAKER_EVENTS = (
    _LUA_BREAKER_READ
    + LUA_RULES
    + f"""
local h, w = KEYS[1], KEYS[2]
local b = read(h, w)
for e = {_BREAKER_TTL_ARG + 1}, #ARGV, 3 do
  local generation = b.gen
  if apply_event(b, ARGV[e] == '1', tonumber(ARGV[e + 1]), tonumber(ARGV[e + 2])) then
    redis.call('DEL', h .. ':p:' .. generation)
  end
end
redis.call('HSET', h, 'state', b.state, 'open_until', string.format('%.17g', b.open_until),
           'opened_at', b.opened_at, 'consec', b.consec, 'gen', b.gen, 'opens', b.opens)
redis.call('DEL', w)
if #b.window > 0 then redis.call('RPUSH', w, unpack(b.window)) end
redis.call('EXPIRE', h, ARGV[{_BREAKER_TTL_ARG}])
redis.call('EXPIRE', w, ARGV[{_BREAKER_TTL_ARG}])
return reply(b)
"""
)

_LUA_BREAKER_LOAD = _LUA_BREAKER_READ + "return reply(read(KEYS[1], KEYS[2]))\n"

# KEYS: hash. ARGV: generation, max_probes, now, ttl_ms
_LUA_PROBE_ACQUIRE = """
local st = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'gen')
if st[1] ~= 'open' or tonumber(ARGV[3]) < tonumber(st[2]) or tonumber(st[3]) ~= tonumber(ARGV[1]) then
  return 0
end
local pk = KEYS[1] .. ':p:' .. ARGV[1]
if redis.call('INCR', pk) > tonumber(ARGV[2]) then
  redis.call('DECR', pk)
  return 0
end
redis.call('PEXPIRE', pk, ARGV[4])
return 1
"""

# KEYS: probe counter
_LUA_PROBE_RELEASE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
return 1
"""


def _clean(value: str) -> str:
    """A name safe inside a `\\x1f`-separated hash field."""
    return value.replace(_SEP, "?")


def _ttl(seconds: float) -> str:
    """A relative expiry in whole seconds, at least 1 (EXPIRE with 0 would delete at once)."""
    return str(max(1, int(seconds) + 1))


def _hour_id(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d%H")


def _day_id(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d")


def spend_buckets(start: float, end: float) -> list[tuple[str, str]]:
    """The ("h"|"d", id) buckets answering [start, end): whole days as day buckets, the rest as
    hours, the first hour starting at or before `start` (so the range is rounded outward)."""
    buckets: list[tuple[str, str]] = []
    t = int(start // _HOUR) * _HOUR
    while t < end:
        if t % _DAY == 0 and t + _DAY <= end:
            buckets.append(("d", _day_id(t)))
            t += _DAY
        else:
            buckets.append(("h", _hour_id(t)))
            t += _HOUR
    return buckets


class RedisStore(StateStore):
    """Shared state in Redis with a local fallback; see the module docstring."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis_asyncio.Redis | None = None,
        prefix: str = "sekha",
        timeout_s: float = 0.5,
        reconnect_interval_s: float = 1.0,
        max_pending_ops: int = 10_000,
        spend_log_max_rows: int = 100_000,
        hourly_retention_days: int = 35,
        daily_retention_days: int = 400,
        wall_clock: Callable[[], float] = time.time,
        rate_clock: Literal["redis", "caller"] = "redis",
    ) -> None:
        """`rate_clock` is the clock rate limits are measured on: the Redis server's, shared by
        every replica (the default), or the `now` each call passes (tests that move time)."""
        super().__init__()
        if client is None:
            if url is None:
                raise ValueError("RedisStore needs a url or a client")
            # No client-side retries: a script is not safe to resend blindly (the first try may
            # have run), and a down Redis must turn into local fallback quickly, not after retries.
            client = redis_asyncio.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        self._client = client
        self._p = prefix
        self._reconnect_interval_s = reconnect_interval_s
        self._log_max_rows = spend_log_max_rows
        self._hour_retention_s = hourly_retention_days * _DAY
        self._day_retention_s = daily_retention_days * _DAY
        self._wall_clock = wall_clock
        self._rate_clock = rate_clock
        self._fallback = MemoryStore()
        self._local_reservations: set[str] = set()
        self._last_known: dict[str, tuple[BudgetKey, int]] = {}  # budget key -> spent + reserved
        self._pending: collections.deque[_PENDING] = collections.deque(maxlen=max_pending_ops or None)
        self._max_pending = max_pending_ops
        self.dropped_ops = 0
        self._reconnect_task: asyncio.Task[None] | None = None
        self._recover_lock = asyncio.Lock()
        self._closed = False
        register = client.register_script
        self._reserve_script = register(_LUA_RESERVE)
        self._usage_script = register(_LUA_USAGE)
        self._release_script = register(_LUA_RELEASE)
        self._settle_script = register(_LUA_SETTLE)
        self._rate_script = register(_LUA_RATE)
        self._refund_script = register(_LUA_REFUND)
        self._breaker_events_script = register(_LUA_BREAKER_EVENTS)
        self._breaker_load_script = register(_LUA_BREAKER_LOAD)
        self._probe_acquire_script = register(_LUA_PROBE_ACQUIRE)
        self._probe_release_script = register(_LUA_PROBE_RELEASE)

    @property
    def shared(self) -> bool:
        return True

    @property
    def pending_ops(self) -> int:
        """Spend writes waiting for Redis to come back."""
        return len(self._pending)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Check Redis answers; when it does not, start degraded (local state) and keep trying."""
        try:
            await self._remote(lambda: self._client.ping())
        except StoreUnavailableError:
            pass

    async def close(self) -> None:
        self._closed = True
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._pending:
            await self.try_recover()
        if self._pending:
            logger.warning(
                "state store closed with %d spend writes not replayed to Redis", len(self._pending)
            )
        await self._client.aclose()

    async def try_recover(self) -> bool:
        """Ping Redis and replay the queued writes; True once the store is healthy again."""
        async with self._recover_lock:  # the reconnect task and close() may both get here
            if self._healthy and not self._pending:
                return True
            return await self._recover()

    async def _recover(self) -> bool:
        try:
            await self._client.ping()
            while self._pending:
                kind, rid, budgets, record = self._pending[0]
                if kind == "settle":
                    assert record is not None
                    await self._settle_remote(rid, budgets, record)
                else:
                    await self._release_remote(rid, budgets)
                self._pending.popleft()
        except (RedisError, OSError) as exc:
            logger.debug("redis still unreachable (%s)", type(exc).__name__)
            return False
        # Budget counters of the outage served their purpose; Redis is the authority again.
        self._fallback = MemoryStore()
        self._last_known.clear()
        logger.info(
            "state store: redis reachable again, shared state restored",
            extra={"event": "state_backend_recovered", "backend": "redis"},
        )
        self._set_healthy(True)
        return True

    def _lost(self, exc: BaseException) -> None:
        if self._healthy:
            logger.warning(
                "state store: redis unreachable (%s); serving budgets, limits and breakers on local state",
                type(exc).__name__,
                extra={"event": "state_backend_lost", "backend": "redis", "error": type(exc).__name__},
            )
        self._set_healthy(False)
        if not self._closed and (self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        while not self._closed and not self._healthy:
            await asyncio.sleep(self._reconnect_interval_s)
            if not self._healthy:
                await self.try_recover()

    async def _remote(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis call; any failure marks the store unhealthy and raises StoreUnavailableError."""
        if not self._healthy:
            raise StoreUnavailableError("redis is down")
        try:
            return await call()
        except (RedisError, OSError) as exc:
            self._lost(exc)
            raise StoreUnavailableError("redis is down") from None

    def _enqueue(self, op: _PENDING) -> None:
        if self._max_pending and len(self._pending) == self._max_pending:
            self.dropped_ops += 1
            if self.dropped_ops == 1 or self.dropped_ops % 1000 == 0:
                logger.warning("state store: outage buffer full, %d spend writes dropped", self.dropped_ops)
        if self._max_pending:
            self._pending.append(op)

    # -- keys -----------------------------------------------------------------------------

    def _budget_keys(self, budgets: Sequence[BudgetKey]) -> list[str]:
        keys: list[str] = []
        for budget in budgets:
            base = f"{self._p}:b:{budget.key}"
            keys += [base, base + ":z"]
        return keys

    # -- budgets --------------------------------------------------------------------------

    def _seed_fallback(self, budgets: Sequence[BudgetKey]) -> None:
        for budget in budgets:
            known = self._last_known.get(budget.key)
            self._fallback.seed_spent(budget, known[1] if known else 0)

    def _remember(self, budgets: Sequence[BudgetKey], values: Sequence[Any]) -> list[BudgetUsage]:
        usage = []
        for i, budget in enumerate(budgets):
            spent, reserved = int(values[2 * i]), int(values[2 * i + 1])
            self._last_known[budget.key] = (budget, spent + reserved)
            usage.append(BudgetUsage(budget, spent, reserved))
        if len(self._last_known) > 8192:
            now = self._wall_clock()
            self._last_known = {k: v for k, v in self._last_known.items() if v[0].expires_at > now}
        return usage

    async def reserve(
        self, reservation_id: str, budgets: Sequence[BudgetKey], amount_nanos: int, now: float, ttl_s: float
    ) -> ReserveOutcome:
        if not budgets:
            return ReserveOutcome(True)
        if self._healthy:
            args: list[Any] = [reservation_id, str(amount_nanos), repr(now), repr(now + ttl_s)]
            for budget in budgets:
                args += [str(budget.limit_nanos), _ttl(budget.expires_at - now)]
            try:
                reply = await self._remote(
                    lambda: self._reserve_script(keys=self._budget_keys(budgets), args=args)
                )
            except StoreUnavailableError:
                pass
            else:
                ok, refused_index = int(reply[0]), int(reply[1])
                usage = self._remember(budgets, reply[2:])
                if ok:
                    return ReserveOutcome(True, None, tuple(usage))
                return ReserveOutcome(False, budgets[refused_index - 1], tuple(usage))
        self._seed_fallback(budgets)
        outcome = await self._fallback.reserve(reservation_id, budgets, amount_nanos, now, ttl_s)
        if outcome.ok:
            self._local_reservations.add(reservation_id)
        return outcome

    async def _release_remote(self, reservation_id: str, budgets: Sequence[BudgetKey]) -> None:
        await self._release_script(keys=self._budget_keys(budgets), args=[reservation_id])

    async def release(self, reservation_id: str, budgets: Sequence[BudgetKey]) -> None:
        if not budgets:
            return
        if reservation_id in self._local_reservations:
            self._local_reservations.discard(reservation_id)
            await self._fallback.release(reservation_id, budgets)
            return
        if self._healthy:
            try:
                await self._remote(lambda: self._release_remote(reservation_id, budgets))
                return
            except StoreUnavailableError:
                pass
        self._enqueue(("release", reservation_id, tuple(budgets), None))

    async def _settle_remote(
        self, reservation_id: str, budgets: Sequence[BudgetKey], record: SpendRecord
    ) -> None:
        p = self._p
        ts = record.time
        hour_start = int(ts // _HOUR) * _HOUR
        day_start = int(ts // _DAY) * _DAY
        cost = record.cost_nanos
        keys = [
            f"{p}:s:done:{reservation_id}",
            f"{p}:s:h:{_hour_id(ts)}",
            f"{p}:s:d:{_day_id(ts)}",
            f"{p}:s:log",
            *self._budget_keys(budgets),
        ]
        prefix = _SEP.join(_clean(v) for v in (record.caller, record.provider, record.model)) + _SEP
        args: list[Any] = [
            reservation_id,
            str(cost or 0),
            prefix,
            str(record.input_tokens),
            str(record.output_tokens),
            "1" if cost is None else "0",
            str(_SETTLE_MARKER_TTL_S),
            _ttl(hour_start + _HOUR + self._hour_retention_s - ts),
            _ttl(day_start + _DAY + self._day_retention_s - ts),
            str(self._log_max_rows),
            str(len(budgets)),
            *(_ttl(b.expires_at - ts) for b in budgets),
            str(record.cached_input_tokens),
            str(record.cache_write_input_tokens),
            str(record.reasoning_tokens),
        ]
        args += [
            "ts", repr(ts), "caller", record.caller, "tenant", record.tenant, "provider", record.provider,
            "model", record.model, "op", record.operation, "in", str(record.input_tokens),
            "out", str(record.output_tokens), "cost_nanos", "" if cost is None else str(cost),
            "request_id", record.request_id, "cached_in", str(record.cached_input_tokens),
            "cache_write_in", str(record.cache_write_input_tokens), "reasoning", str(record.reasoning_tokens),
        ]  # fmt: skip
        reply = await self._settle_script(keys=keys, args=args)
        if int(reply[0]):
            self._remember(budgets, reply[1:])

    async def settle(self, reservation_id: str, budgets: Sequence[BudgetKey], record: SpendRecord) -> None:
        local = reservation_id in self._local_reservations
        self._local_reservations.discard(reservation_id)
        if self._healthy:
            try:
                await self._remote(lambda: self._settle_remote(reservation_id, budgets, record))
            except StoreUnavailableError:
                pass
            else:
                if local:
                    await self._fallback.release(reservation_id, budgets)
                return
        # Outage: count it locally now (later reservations of this replica see it) and in Redis
        # once it is back.
        self._seed_fallback(budgets)
        await self._fallback.settle(reservation_id, budgets, record)
        self._enqueue(("settle", reservation_id, tuple(budgets), record))

    async def budget_usage(self, budgets: Sequence[BudgetKey], now: float) -> list[BudgetUsage]:
        if not budgets:
            return []
        if self._healthy:
            try:
                reply = await self._remote(
                    lambda: self._usage_script(keys=self._budget_keys(budgets), args=[repr(now)])
                )
                return self._remember(budgets, reply)
            except StoreUnavailableError:
                pass
        self._seed_fallback(budgets)
        return await self._fallback.budget_usage(budgets, now)

    # -- ledger ---------------------------------------------------------------------------

    async def aggregate_spend(
        self, start: float, end: float, grouping: SpendGrouping, caller: str | None = None
    ) -> list[SpendRow]:
        """Raises StoreUnavailableError during an outage: a partial answer would look complete."""
        oldest = self._wall_clock() - self._day_retention_s - _DAY
        buckets = spend_buckets(max(start, oldest), end)

        async def fetch() -> list[dict[str, str]]:
            async with self._client.pipeline(transaction=False) as pipe:
                for kind, bucket in buckets:
                    pipe.hgetall(f"{self._p}:s:{kind}:{bucket}")
                result: list[dict[str, str]] = await pipe.execute()
                return result

        hashes = await self._remote(fetch)
        rows: dict[str, dict[str, int]] = {}
        for fields in hashes:
            for name, value in fields.items():
                parts = name.split(_SEP)
                if len(parts) != 4:
                    continue
                row_caller, provider, model, metric = parts
                if caller is not None and row_caller != caller:
                    continue
                if grouping is SpendGrouping.PROVIDER:
                    key = provider
                elif grouping is SpendGrouping.MODEL:
                    key = f"{provider}/{model}"
                else:
                    key = row_caller
                totals = rows.setdefault(key, {})
                totals[metric] = totals.get(metric, 0) + int(value)
        return sort_rows(
            {
                key: SpendRow(
                    key,
                    t.get("c", 0),
                    t.get("n", 0),
                    t.get("i", 0),
                    t.get("o", 0),
                    t.get("u", 0),
                    t.get("ci", 0),
                    t.get("cw", 0),
                    t.get("r", 0),
                )
                for key, t in rows.items()
            }
        )

    async def raw_rows(self, count: int = 100) -> list[dict[str, str]]:
        """The newest raw ledger rows, newest first (debugging and audits)."""
        entries: Any = await self._remote(lambda: self._client.xrevrange(f"{self._p}:s:log", count=count))
        return [dict(fields) for _, fields in entries or ()]

    # -- rate limits ----------------------------------------------------------------------

    async def acquire_rate(self, limits: Sequence[RateLimit], now: float) -> RateDecision:
        if not limits:
            return RateDecision(True)
        if self._healthy:
            keys = [f"{self._p}:r:{limit.key}" for limit in limits]
            args: list[Any] = [self._rate_now(now)]
            for limit in limits:
                args += [
                    f"{limit.period_s * 1e6:.0f}",
                    f"{gcra_interval_us(limit) * limit.cost:.0f}",
                    "1" if limit.cost > limit.limit else "0",
                ]
            try:
                reply = await self._remote(lambda: self._rate_script(keys=keys, args=args))
            except StoreUnavailableError:
                pass
            else:
                if int(reply[0]):
                    return RateDecision(True)
                return RateDecision(False, int(reply[2]) / 1e6, limits[int(reply[1]) - 1])
        return await self._fallback.acquire_rate(limits, now)

    def _rate_now(self, now: float) -> str:
        """The scripts' ARGV[1]: '' makes them read the Redis server's clock."""
        return "" if self._rate_clock == "redis" else f"{now * 1e6:.0f}"

    async def refund_rate(self, limits: Sequence[RateLimit], now: float) -> None:
        limits = [limit for limit in limits if limit.cost > 0]
        if not limits:
            return
        if self._healthy:
            keys = [f"{self._p}:r:{limit.key}" for limit in limits]
            args = [self._rate_now(now), *(f"{gcra_interval_us(lim) * lim.cost:.0f}" for lim in limits)]
            try:
                await self._remote(lambda: self._refund_script(keys=keys, args=args))
                return
            except StoreUnavailableError:
                pass
        await self._fallback.refund_rate(limits, now)

    # -- breakers -------------------------------------------------------------------------

    def _breaker_keys(self, name: str) -> list[str]:
        base = f"{self._p}:k:{name}"
        return [base, base + ":w"]

    @staticmethod
    def _breaker_record(reply: Sequence[Any]) -> BreakerRecord:
        state, open_until, opened_at, consec, gen, opens = reply[:6]
        return BreakerRecord(
            state="open" if state == "open" else "closed",
            open_until=float(open_until),
            opened_at=float(opened_at) if opened_at else None,
            consecutive_failures=int(consec),
            window=tuple(v == "1" for v in reply[6:]),
            generation=int(gen),
            opens=int(opens),
        )

    async def breaker_events(
        self, name: str, events: Sequence[BreakerEvent], settings: BreakerSettings
    ) -> BreakerRecord:
        args: list[Any] = [*lua_rule_arguments(settings), str(_BREAKER_KEY_TTL_S)]
        for event in events:
            retry_after = "" if event.retry_after_s is None else repr(float(event.retry_after_s))
            args += ["1" if event.failed else "0", repr(event.at), retry_after]
        reply = await self._remote(
            lambda: self._breaker_events_script(keys=self._breaker_keys(name), args=args)
        )
        return self._breaker_record(reply)

    async def breaker_load(self, name: str) -> BreakerRecord:
        reply = await self._remote(lambda: self._breaker_load_script(keys=self._breaker_keys(name)))
        return self._breaker_record(reply)

    async def breaker_acquire_probe(
        self, name: str, generation: int, max_probes: int, now: float, ttl_s: float
    ) -> bool:
        keys = self._breaker_keys(name)[:1]
        args = [str(generation), str(max_probes), repr(now), str(max(1, int(ttl_s * 1000)))]
        return bool(await self._remote(lambda: self._probe_acquire_script(keys=keys, args=args)))

    async def breaker_release_probe(self, name: str, generation: int) -> None:
        key = f"{self._p}:k:{name}:p:{generation}"
        await self._remote(lambda: self._probe_release_script(keys=[key]))
