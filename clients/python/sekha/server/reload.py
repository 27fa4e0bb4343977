"""Config reload plumbing shared by both services: the SIGHUP hook, the restart check, the admin signal.

Each service owns what a reload swaps (`router_service.reload`, `embedding_service.reload`); what
is the same for both lives here: which settings changed that only a restart can apply, how SIGHUP
is wired to a reload, and the admin command's last step (`sekha-router reload`,
`sekha-embedding reload`), which signals the running process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["changed_settings", "on_sighup", "send_sighup"]

_MISSING = object()


def _setting(config: Any, path: str) -> Any:
    value = config
    for name in path.split("."):
        # A section a config class does not have compares as absent on both sides.
        value = getattr(value, name, _MISSING)
        if value is _MISSING:
            return None
    return value


def changed_settings(running: Any, new: Any, paths: Sequence[str]) -> str | None:
    """The dotted `paths` (e.g. `server`, `auth.enabled`) whose values differ, comma separated, or None."""
    changed = [path for path in paths if _setting(running, path) != _setting(new, path)]
    return ", ".join(changed) if changed else None


def on_sighup(reload_soon: Callable[[], None]) -> None:
    """Call `reload_soon` (it must not block: it schedules the reload) on SIGHUP, where there are signals."""
    with contextlib.suppress(NotImplementedError, AttributeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_soon)


def send_sighup(pid: int, service: str) -> int:
    """The admin command's last step: SIGHUP to `pid`; the exit code (1 when there is no such process)."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"no process {pid}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to {pid}; the {service} logs 'config reloaded' or 'config reload refused'")
    return 0
