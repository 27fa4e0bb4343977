"""How much work is using something a config reload replaced, so it is closed once that work ends.

Both services swap parts on a reload (the router its gateway, the embedding service its router
connection) while requests keep running on the old one; each counts its users with `InUse`.
"""

from __future__ import annotations

import asyncio

__all__ = ["InUse"]


class InUse:
    """`with in_use:` around each use; `await in_use.drained()` returns once none is running."""

    def __init__(self) -> None:
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> InUse:
        self.active += 1
        self._idle.clear()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def drained(self) -> None:
        """Return once nothing uses it (after it was replaced, nothing new will)."""
        await self._idle.wait()
