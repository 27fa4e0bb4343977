"""Leases with fencing tokens: who may take the steps of a base or a migration that must not interleave.

A lease is held by one holder at a time, for a time-to-live that its holder keeps renewing while it
works. Each acquisition gets a fencing token larger than every earlier one. The holder checks the
lease before each irreversible step (`Lease.check()` locally, `Leases.confirm()` against the lease's
home), and the registry refuses a change fenced by a lease that is no longer held, so a holder that
was paused past its TTL cannot act on its stale belief that it still owns the work.

Names in use: `base:<base>` (creating a collection, starting a migration, deleting or adopting a
collection) and `migration:<id>` (the job lease of a migration's backfill, verification and switch).

`LocalLeases` is the one-process implementation (SQLite registry): asyncio locks, never lost.
`embedding_service.redis_state.RedisLeases` is the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from sekha_runtime.errors import UnavailableError

__all__ = ["Lease", "LeaseLostError", "Leases", "LocalLeases", "lease_unavailable"]


class LeaseLostError(UnavailableError):
    """The lease expired or another holder took it: the holder must stop before its next step."""

    reason = "LEASE_LOST"

    def __init__(self, name: str, retry_after_s: float = 1.0) -> None:
        super().__init__(
            f"lost the lease on {name.split(':', 1)[0]} work to another replica; retry",
            retry_after_s=retry_after_s,
        )
        self.name = name


def lease_unavailable(what: str, retry_after_s: float) -> UnavailableError:
    """The refusal of a step that needs a lease the service cannot get now."""
    return UnavailableError(
        f"{what} needs a lease from the shared state, which is unavailable; retry",
        retry_after_s=retry_after_s,
        reason="STATE_UNAVAILABLE",
    )


@dataclass
class Lease:
    """One acquisition of a named lease.

    `value` is what the lease's home stores while this holder owns it (`<token>:<holder>`);
    `deadline` is the monotonic time until which the holder may act, pushed by each renewal
    (measured from when the renewal was sent, so it is never later than the real expiry).
    """

    name: str
    token: int
    value: str
    ttl_s: float
    deadline: float = float("inf")
    lost: bool = False
    on_lost: list[Callable[[], None]] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic

    def valid(self) -> bool:
        return not self.lost and self.clock() < self.deadline

    def still_held(self) -> None:
        """Like `check()` but without telling the watchers: safe to call from a worker thread."""
        if not self.valid():
            raise LeaseLostError(self.name, self.ttl_s)

    def check(self) -> None:
        """Raise LeaseLostError unless the lease is still held (local knowledge, no round trip).

        A deadline found passed counts as a loss: the watchers are told, as for any other."""
        if not self.valid():
            self.mark_lost()
            raise LeaseLostError(self.name, self.ttl_s)

    def mark_lost(self) -> bool:
        """Record the loss and tell the watchers, once; True the first time."""
        if self.lost:
            return False
        self.lost = True
        for callback in self.on_lost:
            callback()
        return True


class Leases(Protocol):
    """Named leases with fencing tokens; see the module docstring."""

    @property
    def shared(self) -> bool:
        """Whether other processes hold leases from the same home (Redis)."""
        ...

    def hold(self, name: str, what: str) -> contextlib.AbstractAsyncContextManager[Lease]:
        """Wait for the lease (bounded), hold and renew it for the block, release it after.

        `what` names the operation for the caller's error. UnavailableError (with retry) when the
        lease's home is down or another holder keeps it past the wait.
        """
        ...

    async def try_acquire(self, name: str) -> Lease | None:
        """The lease if it is free now (renewed until released), else None; raises UnavailableError."""
        ...

    async def confirm(self, lease: Lease) -> None:
        """Check at the lease's home that `lease` is still held; LeaseLostError otherwise.

        Called right before an irreversible step that the registry cannot fence itself (a write
        to Chroma)."""
        ...

    async def release(self, lease: Lease) -> None:
        """Give the lease up (no-op when it was lost)."""
        ...

    async def aclose(self) -> None:
        """Stop renewing and release every lease still held."""
        ...


class LocalLeases:
    """Leases within one process: an asyncio lock per name; a lease is never lost."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._tokens = itertools.count(1)

    @property
    def shared(self) -> bool:
        return False

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _lease(self, name: str) -> Lease:
        token = next(self._tokens)
        return Lease(name=name, token=token, value=f"{token}:local", ttl_s=float("inf"))

    @contextlib.asynccontextmanager
    async def hold(self, name: str, what: str) -> AsyncIterator[Lease]:
        async with self._lock(name):
            yield self._lease(name)

    async def try_acquire(self, name: str) -> Lease | None:
        lock = self._lock(name)
        if lock.locked():
            return None
        await lock.acquire()
        return self._lease(name)

    async def confirm(self, lease: Lease) -> None:
        lease.check()

    async def release(self, lease: Lease) -> None:
        lock = self._locks.get(lease.name)
        if lock is not None and lock.locked():
            lock.release()

    async def aclose(self) -> None:
        return None
