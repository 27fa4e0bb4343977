"""In-process state backends: `MemoryStore` (gone on exit) and `SqliteStore` (spend survives).

Both serve one router process. Every check-and-change runs without an `await` between the check
and the change, and the server runs on one event loop, so a reservation or a rate-limit decision
is atomic without locks.

`SqliteStore` keeps the same in-memory counters (they are the authority inside the process) and
writes the ledger rows and the budgets' spent totals behind to SQLite (stdlib `sqlite3`, WAL
journal): a settle is acknowledged from memory and queued; a background task writes the queue
every `flush_interval_s` (50 ms) in one transaction per batch of up to 1,000 records, on the event
loop (about 12 us a record; no fsync, since `synchronous=NORMAL` in WAL mode syncs only at
checkpoints). Checkpoints, start-up loads and reports run on one worker thread with its own
connection, so the event loop never waits for the disk. What this promises:
a graceful stop (SIGTERM, SIGINT, reload) writes everything before the file closes, and GetSpend
reads after a flush, so it sees every acknowledged record. A crash (SIGKILL, OOM, power loss) loses
at most the records settled in the last flush interval plus the batch being written; with
`synchronous=NORMAL` a power cut may also lose the last committed batches, never corrupt the file.
Reservations stay in memory on purpose: they belong to requests of this process, and a restart
ends those requests, so a persisted reservation could only leak budget. The SQLite file is meant
for one process; replicas share state through Redis instead.

`MemoryStore` is also the Redis store's fallback during an outage (see `redis_store.py`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from router_service.state.base import (
    CLOSED_RECORD,
    BreakerEvent,
    BreakerRecord,
    BreakerSettings,
    BudgetKey,
    BudgetUsage,
    RateDecision,
    RateLimit,
    ReserveOutcome,
    SpendGrouping,
    SpendRecord,
    SpendRow,
    StateStore,
    apply_breaker_event,
    gcra_interval_us,
    sort_rows,
)

__all__ = ["MemoryStore", "SqliteStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Settled reservation ids remembered for idempotent settles; a settle is never retried later
# than the last few thousand requests.
_SETTLED_IDS_KEPT = 10_000
# Spend batches written between two WAL checkpoints (each on the reader thread).
_BATCHES_PER_CHECKPOINT = 100


@dataclass
class _Budget:
    spent: int = 0
    reserved: int = 0
    reservations: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (amount, expires_at)
    next_expiry: float = float("inf")
    expires_at: float = 0.0

    def purge(self, now: float) -> None:
        if now < self.next_expiry:
            return
        for rid, (amount, expires_at) in list(self.reservations.items()):
            if expires_at <= now:
                del self.reservations[rid]
                self.reserved -= amount
        self.next_expiry = min((e for _, e in self.reservations.values()), default=float("inf"))


class MemoryStore(StateStore):
    """Everything in process memory; the raw ledger keeps the last `max_rows` rows."""

    def __init__(self, max_rows: int = 100_000) -> None:
        super().__init__()
        self._budgets: dict[str, _Budget] = {}
        self._next_sweep = 0.0
        self._rows: collections.deque[SpendRecord] = collections.deque(maxlen=max_rows or None)
        self._settled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._rate_tat: dict[str, float] = {}
        self._breakers: dict[str, BreakerRecord] = {}
        self._probes: dict[tuple[str, int], tuple[int, float]] = {}  # (name, gen) -> (count, expires_at)

    # -- budgets --------------------------------------------------------------------------

    def _budget(self, key: BudgetKey) -> _Budget:
        budget = self._budgets.get(key.key)
        if budget is None:
            budget = self._budgets[key.key] = _Budget(expires_at=key.expires_at)
        return budget

    def seed_spent(self, key: BudgetKey, spent_nanos: int) -> None:
        """Start a counter this store has not seen at a known spent total (last value from Redis)."""
        if key.key not in self._budgets:
            self._budgets[key.key] = _Budget(spent=spent_nanos, expires_at=key.expires_at)

    def has_budget(self, key: BudgetKey) -> bool:
        return key.key in self._budgets

    def _forget_expired(self, now: float) -> None:
        for name in [k for k, b in self._budgets.items() if b.expires_at <= now and not b.reservations]:
            del self._budgets[name]

    def _reserve_now(
        self, reservation_id: str, budgets: Sequence[BudgetKey], amount: int, now: float, ttl_s: float
    ) -> ReserveOutcome:
        if now >= self._next_sweep:  # counters of past periods would otherwise pile up
            self._forget_expired(now)
            self._next_sweep = now + 3600.0
        states = [self._budget(key) for key in budgets]
        usage = []
        for key, budget in zip(budgets, states, strict=True):
            budget.purge(now)
            usage.append(BudgetUsage(key, budget.spent, budget.reserved))
            if budget.spent + budget.reserved + amount > key.limit_nanos:
                return ReserveOutcome(False, key, tuple(usage))
        expires_at = now + ttl_s
        for budget in states:
            budget.reserved += amount
            budget.reservations[reservation_id] = (amount, expires_at)
            budget.next_expiry = min(budget.next_expiry, expires_at)
        return ReserveOutcome(True, None, tuple(usage))

    async def reserve(
        self, reservation_id: str, budgets: Sequence[BudgetKey], amount_nanos: int, now: float, ttl_s: float
    ) -> ReserveOutcome:
        return self._reserve_now(reservation_id, budgets, amount_nanos, now, ttl_s)

    def _release_now(self, reservation_id: str, budgets: Sequence[BudgetKey]) -> None:
        for key in budgets:
            budget = self._budgets.get(key.key)
            if budget is None:
                continue
            held = budget.reservations.pop(reservation_id, None)
            if held is not None:
                budget.reserved -= held[0]

    async def release(self, reservation_id: str, budgets: Sequence[BudgetKey]) -> None:
        self._release_now(reservation_id, budgets)

    def _settle_now(self, reservation_id: str, budgets: Sequence[BudgetKey], record: SpendRecord) -> bool:
        """Apply a settle in memory; False when this id was settled already."""
        if reservation_id in self._settled:
            return False
        self._settled[reservation_id] = None
        if len(self._settled) > _SETTLED_IDS_KEPT:
            self._settled.popitem(last=False)
        self._release_now(reservation_id, budgets)
        cost = record.cost_nanos or 0
        for key in budgets:
            self._budget(key).spent += cost
        self._rows.append(record)
        return True

    async def settle(self, reservation_id: str, budgets: Sequence[BudgetKey], record: SpendRecord) -> None:
        self._settle_now(reservation_id, budgets, record)

    async def budget_usage(self, budgets: Sequence[BudgetKey], now: float) -> list[BudgetUsage]:
        self._forget_expired(now)
        usage = []
        for key in budgets:
            budget = self._budgets.get(key.key)
            if budget is not None:
                budget.purge(now)
            usage.append(BudgetUsage(key, budget.spent if budget else 0, budget.reserved if budget else 0))
        return usage

    # -- ledger ---------------------------------------------------------------------------

    async def aggregate_spend(
        self, start: float, end: float, grouping: SpendGrouping, caller: str | None = None
    ) -> list[SpendRow]:
        return aggregate_records(self._rows, start, end, grouping, caller)

    def records(self) -> list[SpendRecord]:
        """The raw rows held (the Redis store replays these after an outage)."""
        return list(self._rows)

    # -- rate limits ----------------------------------------------------------------------

    async def acquire_rate(self, limits: Sequence[RateLimit], now: float) -> RateDecision:
        now_us = now * 1e6
        updates: list[tuple[str, float]] = []
        for limit in limits:
            period_us = limit.period_s * 1e6
            tat = max(self._rate_tat.get(limit.key, now_us), now_us)
            new_tat = tat + gcra_interval_us(limit) * limit.cost
            if new_tat - period_us > now_us:
                oversize = limit.cost > limit.limit
                if not (oversize and tat <= now_us):
                    wait_us = (tat - now_us) if oversize else (new_tat - period_us - now_us)
                    return RateDecision(False, wait_us / 1e6, limit)
            updates.append((limit.key, new_tat))
        for key, new_tat in updates:
            self._rate_tat[key] = new_tat
        if len(self._rate_tat) > 4 * 1024:
            # Keys whose bucket is empty again carry no information: forget them.
            for key in [k for k, tat in self._rate_tat.items() if tat <= now_us]:
                del self._rate_tat[key]
        return RateDecision(True)

    async def refund_rate(self, limits: Sequence[RateLimit], now: float) -> None:
        now_us = now * 1e6
        for limit in limits:
            tat = self._rate_tat.get(limit.key)
            if tat is None:
                continue
            tat -= gcra_interval_us(limit) * limit.cost
            if tat <= now_us:
                del self._rate_tat[limit.key]
            else:
                self._rate_tat[limit.key] = tat

    # -- breakers -------------------------------------------------------------------------

    async def breaker_events(
        self, name: str, events: Sequence[BreakerEvent], settings: BreakerSettings
    ) -> BreakerRecord:
        record = self._breakers.get(name, CLOSED_RECORD)
        for event in events:
            record = apply_breaker_event(record, event, settings)
        self._breakers[name] = record
        if record.state == "closed":
            self._probes = {k: v for k, v in self._probes.items() if k[0] != name}
        return record

    async def breaker_load(self, name: str) -> BreakerRecord:
        return self._breakers.get(name, CLOSED_RECORD)

    async def breaker_acquire_probe(
        self, name: str, generation: int, max_probes: int, now: float, ttl_s: float
    ) -> bool:
        record = self._breakers.get(name, CLOSED_RECORD)
        if not record.half_open(now) or record.generation != generation:
            return False
        count, expires_at = self._probes.get((name, generation), (0, 0.0))
        if expires_at <= now:
            count = 0
        if count >= max_probes:
            return False
        self._probes[(name, generation)] = (count + 1, now + ttl_s)
        return True

    async def breaker_release_probe(self, name: str, generation: int) -> None:
        held = self._probes.get((name, generation))
        if held is not None and held[0] > 0:
            self._probes[(name, generation)] = (held[0] - 1, held[1])


def aggregate_records(
    records: Sequence[SpendRecord] | collections.deque[SpendRecord],
    start: float,
    end: float,
    grouping: SpendGrouping,
    caller: str | None,
) -> list[SpendRow]:
    rows: dict[str, SpendRow] = {}
    for record in records:
        if not start <= record.time < end or (caller is not None and record.caller != caller):
            continue
        key = record.group_key(grouping)
        row = SpendRow(
            key,
            record.cost_nanos or 0,
            1,
            record.input_tokens,
            record.output_tokens,
            1 if record.price_unknown else 0,
            record.cached_input_tokens,
            record.cache_write_input_tokens,
            record.reasoning_tokens,
        )
        previous = rows.get(key)
        rows[key] = row if previous is None else previous.plus(row)
    return sort_rows(rows)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    id INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    caller TEXT NOT NULL,
    tenant TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    operation TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_nanos INTEGER,            -- NULL: price unknown, never 0
    request_id TEXT NOT NULL,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,       -- parts of input_tokens
    cache_write_input_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0           -- part of output_tokens
);
CREATE INDEX IF NOT EXISTS spend_ts ON spend (ts);
CREATE TABLE IF NOT EXISTS budget_spent (
    key TEXT PRIMARY KEY,
    spent_nanos INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
"""


# Columns added after the first release: a ledger file written by an older router gains them
# (zero for its old rows) when it is opened.
_ADDED_COLUMNS = {
    "cached_input_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cache_write_input_tokens": "INTEGER NOT NULL DEFAULT 0",
    "reasoning_tokens": "INTEGER NOT NULL DEFAULT 0",
}


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    present = {row[1] for row in connection.execute("PRAGMA table_info(spend)")}
    for name, definition in _ADDED_COLUMNS.items():
        if name not in present:
            connection.execute(f"ALTER TABLE spend ADD COLUMN {name} {definition}")


class SqliteStore(MemoryStore):
    """MemoryStore whose ledger and budget spent totals live in a SQLite file."""

    def __init__(self, path: str | Path, flush_interval_s: float = 0.05, max_batch: int = 1000) -> None:
        super().__init__(max_rows=1)  # rows are read back from SQLite, not kept in memory
        self._path = str(path)
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._loading: dict[str, asyncio.Future[None]] = {}
        # Write-behind: settles are acknowledged from memory (the authority inside the process)
        # and written in batches, one transaction each, by `_flush_loop`. See the module docstring
        # for what a crash can lose.
        self._flush_interval_s = flush_interval_s
        self._max_batch = max_batch
        self._pending: list[tuple[str, Sequence[BudgetKey], SpendRecord]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._writer: sqlite3.Connection | None = None
        self._batches_since_checkpoint = 0
        if self._path == ":memory:":
            # Two connections (the writer here, the reader thread's) must see one database.
            self._path = f"file:sekha-{uuid.uuid4().hex}?mode=memory&cache=shared"

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None, uri=self._path.startswith("file:"))
        connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last commits but never corrupts the file.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        # Checkpoints (the only step that fsyncs) run on the reader thread, never inside a commit
        # on the event loop.
        connection.execute("PRAGMA wal_autocheckpoint=0")
        return connection

    async def start(self) -> None:
        if self._executor is not None:
            return
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # One thread, one connection: sqlite3 connections are not shared across threads, and a
        # single writer is all SQLite allows anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sekha-sqlite")
        await self._run(self._open)
        self._writer = self._connect()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="sekha-sqlite-flush")

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.flush()  # a graceful stop loses no acknowledged record
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        await self._run(self._checkpoint)
        await self._run(self._close_connection)
        self._executor = None
        executor.shutdown(wait=True)

    async def flush(self) -> None:
        """Write every settled record not yet in SQLite, in one transaction per batch."""
        async with self._flush_lock:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                try:
                    # On the event loop, on purpose: a batch is a few hundred microseconds of
                    # SQLite work, while handing it to a thread made the two threads trade the
                    # GIL on every statement, which cost more CPU per request than the writes
                    # (bench/state_cost.py; docs/PERFORMANCE.md, "State backends").
                    self._write_batch(batch)
                except Exception as exc:
                    # Keep the rows for the next flush: the ledger must not lose what it acknowledged.
                    self._pending[:0] = batch
                    log.warning("sqlite spend ledger write failed (%s); will retry", type(exc).__name__)
                    raise
                self._batches_since_checkpoint += 1
            if self._batches_since_checkpoint >= _BATCHES_PER_CHECKPOINT:
                self._batches_since_checkpoint = 0
                await self._run(self._checkpoint)

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            # Gather what arrives within the interval into the same transaction.
            await asyncio.sleep(self._flush_interval_s)
            self._wake.clear()
            with contextlib.suppress(Exception):  # logged by flush; retried on the next wake
                await self.flush()
            if self._pending:
                self._wake.set()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            await self.start()
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        connection = self._connect()
        connection.executescript(_SCHEMA)
        _add_missing_columns(connection)
        self._local.connection = connection

    def _checkpoint(self) -> None:
        # PASSIVE: copies what it can without waiting for the writer; the WAL stays bounded.
        self._db().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _close_connection(self) -> None:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _db(self) -> sqlite3.Connection:
        connection: sqlite3.Connection = self._local.connection
        return connection

    # -- budgets: load the persisted spent total before the first check --------------------

    async def _ensure_loaded(self, budgets: Sequence[BudgetKey]) -> None:
        for key in budgets:
            if self.has_budget(key):
                continue
            pending = self._loading.get(key.key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._loading[key.key] = pending
                try:
                    spent = await self._run(self._load_spent, key.key)
                    self.seed_spent(key, spent)
                    pending.set_result(None)
                except BaseException as exc:
                    pending.set_exception(exc)
                    raise
                finally:
                    self._loading.pop(key.key, None)
            else:
                await pending

    def _load_spent(self, key: str) -> int:
        row = self._db().execute("SELECT spent_nanos FROM budget_spent WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    async def reserve(
        self, reservation_id: str, budgets: Sequence[BudgetKey], amount_nanos: int, now: float, ttl_s: float
    ) -> ReserveOutcome:
        await self._ensure_loaded(budgets)
        return self._reserve_now(reservation_id, budgets, amount_nanos, now, ttl_s)

    async def settle(self, reservation_id: str, budgets: Sequence[BudgetKey], record: SpendRecord) -> None:
        await self._ensure_loaded(budgets)
        if self._settle_now(reservation_id, budgets, record):
            self._pending.append((reservation_id, budgets, record))
            if len(self._pending) == 1:
                self._wake.set()

    def _write_batch(self, batch: Sequence[tuple[str, Sequence[BudgetKey], SpendRecord]]) -> None:
        db = self._writer
        assert db is not None, "SqliteStore.start() opens the writer"
        db.execute("BEGIN IMMEDIATE")
        try:
            for record_id, budgets, record in batch:
                inserted = db.execute(
                    "INSERT OR IGNORE INTO spend (record_id, ts, caller, tenant, provider, model, operation, "
                    "input_tokens, output_tokens, cost_nanos, request_id, cached_input_tokens, "
                    "cache_write_input_tokens, reasoning_tokens) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        record_id,
                        record.time,
                        record.caller,
                        record.tenant,
                        record.provider,
                        record.model,
                        record.operation,
                        record.input_tokens,
                        record.output_tokens,
                        record.cost_nanos,
                        record.request_id,
                        record.cached_input_tokens,
                        record.cache_write_input_tokens,
                        record.reasoning_tokens,
                    ),
                ).rowcount
                cost = record.cost_nanos or 0
                # INSERT OR IGNORE makes a replayed record (same id) count once, budgets included.
                if inserted and cost:
                    db.executemany(
                        "INSERT INTO budget_spent (key, spent_nanos, expires_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET spent_nanos = spent_nanos + excluded.spent_nanos",
                        [(key.key, cost, key.expires_at) for key in budgets],
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def budget_usage(self, budgets: Sequence[BudgetKey], now: float) -> list[BudgetUsage]:
        await self._ensure_loaded(budgets)
        usage = []
        for key in budgets:
            budget = self._budget(key)
            budget.purge(now)
            usage.append(BudgetUsage(key, budget.spent, budget.reserved))
        await self._run(self._forget_expired_rows, now)
        return usage

    def _forget_expired_rows(self, now: float) -> None:
        self._db().execute("DELETE FROM budget_spent WHERE expires_at <= ?", (now,))

    # -- ledger ---------------------------------------------------------------------------

    async def aggregate_spend(
        self, start: float, end: float, grouping: SpendGrouping, caller: str | None = None
    ) -> list[SpendRow]:
        await self.flush()  # a report includes every record already acknowledged
        return await self._run(self._aggregate, start, end, grouping, caller)

    def _aggregate(
        self, start: float, end: float, grouping: SpendGrouping, caller: str | None
    ) -> list[SpendRow]:
        group_sql = {
            SpendGrouping.CALLER: "caller",
            SpendGrouping.PROVIDER: "provider",
            SpendGrouping.MODEL: "provider || '/' || model",
        }[grouping]
        where = "ts >= ? AND ts < ?"
        params: list[Any] = [start, end]
        if caller is not None:
            where += " AND caller = ?"
            params.append(caller)
        query = (
            f"SELECT {group_sql} AS k, COALESCE(SUM(cost_nanos), 0), COUNT(*), SUM(input_tokens), "
            f"SUM(output_tokens), SUM(cost_nanos IS NULL), SUM(cached_input_tokens), "
            f"SUM(cache_write_input_tokens), SUM(reasoning_tokens) FROM spend WHERE {where} GROUP BY k"
        )
        rows = {
            str(k): SpendRow(str(k), *(int(v) for v in values))
            for k, *values in self._db().execute(query, params)
        }
        return sort_rows(rows)

    def records(self) -> list[SpendRecord]:
        raise NotImplementedError("SqliteStore keeps its rows in SQLite; use aggregate_spend")
