"""Per-base write locks.

Every write to a base's collections (upserts, deletes, backfill batches, the migration switch)
holds its base's lock, so a backfill batch can compare the source text with what it embedded
and write in one step: a concurrent upsert is never overwritten by stale backfill data, and
an upsert always sees the current set of write collections. Embedding happens outside the lock.
The locks are per process: one service instance owns a Chroma database and state file.
"""

from __future__ import annotations

import asyncio


class BaseLocks:
    """One asyncio lock per base name, created on first use."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def __call__(self, base: str) -> asyncio.Lock:
        lock = self._locks.get(base)
        if lock is None:
            lock = self._locks[base] = asyncio.Lock()
        return lock
