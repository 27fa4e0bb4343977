"""Terminal output of the `sekha` CLI: plain tables, JSON, a small progress bar, error lines.

Only the standard library: the CLI must start fast and work in a bare environment.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["ProgressBar", "format_cost", "print_json", "render_table"]


def print_json(data: Any, out: TextIO | None = None) -> None:
    """Pretty JSON on stdout (or `out`)."""
    stream = out or sys.stdout
    stream.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def format_cost(cost_usd: float | None, price_unknown: bool = False) -> str:
    """`$0.000011`; tiny amounts in scientific notation so they never print as `$0`."""
    if price_unknown or cost_usd is None:
        return "unknown"
    if cost_usd == 0:
        return "$0"
    if abs(cost_usd) < 1e-6:
        return f"${cost_usd:.2e}"
    return "$" + f"{cost_usd:.6f}".rstrip("0").rstrip(".")


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; None renders as '-'."""
    cells = [[("-" if value is None else str(value)) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], len(value))
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in cells:
        lines.append("  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip())
    return "\n".join(lines)


class ProgressBar:
    """`[#####-----] 512/1000 docs` on stderr, redrawn in place; silent when stderr is not a terminal.

    When not a terminal only the final line is written, so logs get the outcome without a
    thousand carriage returns.
    """

    def __init__(
        self, total: int | None, unit: str, *, stream: TextIO | None = None, width: int = 30
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.width = width
        self.done = 0
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self.interactive:
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def finish(self, message: str = "") -> None:
        line = self._line() + (f" {message}" if message else "")
        self.stream.write(("\r" if self.interactive else "") + line + "\n")
        self.stream.flush()

    def _line(self) -> str:
        if self.total:
            filled = min(self.width, self.width * self.done // self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            return f"[{bar}] {self.done}/{self.total} {self.unit}"
        return f"{self.done} {self.unit}"
