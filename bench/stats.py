"""Summary statistics shared by the benchmarks (nearest-rank percentiles, in milliseconds)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in [0, 1]); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """p50/p90/p99/mean/min/max of durations given in seconds, reported in milliseconds."""
    values = sorted(seconds)
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50": round(percentile(values, 0.50) * 1000, 3),
        "p90": round(percentile(values, 0.90) * 1000, 3),
        "p99": round(percentile(values, 0.99) * 1000, 3),
        "mean": round(sum(values) / len(values) * 1000, 3),
        "min": round(values[0] * 1000, 3),
        "max": round(values[-1] * 1000, 3),
    }


def method_text(docstring: str | None) -> str:
    """A module docstring's body as one paragraph of prose: title and usage lines dropped."""
    if not docstring:
        return ""
    paragraphs = [p.strip() for p in docstring.strip().split("\n\n")[1:]]
    prose = [p for p in paragraphs if not p.lstrip().startswith(("python -m", ".venv/"))]
    return " ".join(" ".join(p.split()) for p in prose)
