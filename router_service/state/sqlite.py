"""The SQLite state backend: `SqliteStore`, one router process, spend survives a restart.

`SqliteStore` keeps the in-memory counters of `MemoryStore` (they are the authority inside the
process) and writes the ledger rows and the budgets' spent totals through to SQLite (stdlib
`sqlite3`, WAL journal, one connection used from one worker thread so the event loop never blocks
on disk). Reservations stay in memory on purpose: they belong to requests of this process, and a
restart ends those requests, so a persisted reservation could only leak budget. The SQLite file is
meant for one process; replicas share state through Redis instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from router_service.state.base import (
    BudgetKey,
    BudgetUsage,
    ReserveOutcome,
    SpendGrouping,
    SpendRecord,
    SpendRow,
    sort_rows,
)
from router_service.state.memory import MemoryStore

__all__ = ["SqliteStore"]

T = TypeVar("T")

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
    request_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_ts ON spend (ts);
CREATE TABLE IF NOT EXISTS budget_spent (
    key TEXT PRIMARY KEY,
    spent_nanos INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
"""


class SqliteStore(MemoryStore):
    """MemoryStore whose ledger and budget spent totals live in a SQLite file."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(max_rows=1)  # rows are read back from SQLite, not kept in memory
        self._path = str(path)
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._loading: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        if self._executor is not None:
            return
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # One thread, one connection: sqlite3 connections are not shared across threads, and a
        # single writer is all SQLite allows anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sekha-sqlite")
        await self._run(self._open)

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        await self._run(self._close_connection)
        self._executor = None
        executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            await self.start()
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last commits but never corrupts the file.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.executescript(_SCHEMA)
        self._local.connection = connection

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
            await self._run(self._write_settle, reservation_id, budgets, record)

    def _write_settle(self, record_id: str, budgets: Sequence[BudgetKey], record: SpendRecord) -> None:
        db = self._db()
        cost = record.cost_nanos or 0
        db.execute("BEGIN IMMEDIATE")
        try:
            inserted = db.execute(
                "INSERT OR IGNORE INTO spend (record_id, ts, caller, tenant, provider, model, operation, "
                "input_tokens, output_tokens, cost_nanos, request_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
                ),
            ).rowcount
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
        params: list[float | str] = [start, end]
        if caller is not None:
            where += " AND caller = ?"
            params.append(caller)
        query = (
            f"SELECT {group_sql} AS k, COALESCE(SUM(cost_nanos), 0), COUNT(*), SUM(input_tokens), "
            f"SUM(output_tokens), SUM(cost_nanos IS NULL) FROM spend WHERE {where} GROUP BY k"
        )
        rows = {
            str(k): SpendRow(str(k), int(cost), int(count), int(inp), int(out), int(unknown))
            for k, cost, count, inp, out, unknown in self._db().execute(query, params)
        }
        return sort_rows(rows)

    def records(self) -> list[SpendRecord]:
        raise NotImplementedError("SqliteStore keeps its rows in SQLite; use aggregate_spend")
