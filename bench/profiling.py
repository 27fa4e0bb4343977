"""Where the router's CPU goes under load: py-spy samples, folded stacks summarised.

py-spy attaches to the running router (``--nonblocking``: the process is never paused, so the
profile does not slow it down beyond the cost of reading its memory) and records twice for
the same number of seconds: once as an SVG flame graph for people, once as folded stacks
("raw") that are summarised here into the top functions by self and by inclusive samples, and
into coarse buckets (gRPC, protobuf, aiohttp, the router's own code, ...). Idle samples (the
event loop waiting in epoll) are excluded by py-spy, so percentages are shares of the time the
process was running Python or native code called from it.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")

# Leaf-frame file substrings -> bucket, first match wins.
BUCKETS: tuple[tuple[str, str], ...] = (
    ("router_service/rpc/", "router: servicer + convert"),
    ("router_service/providers/", "router: provider client (lean HTTP)"),
    ("router_service/", "router: gateway, routing, pricing"),
    ("sekha_runtime/server/", "sekha_runtime.server: error guard, handler layers"),
    ("sekha_runtime/", "sekha_runtime: telemetry, aggregation, events"),
    ("litellm/", "litellm"),
    ("tiktoken", "token counting (tiktoken)"),
    ("tokenizers", "token counting (tiktoken)"),
    ("google/protobuf", "protobuf"),
    ("grpc/", "grpc (python + cython)"),
    ("aiohttp/", "aiohttp client"),
    ("yarl/", "aiohttp client"),
    ("multidict/", "aiohttp client"),
    ("json/", "json"),
    ("asyncio/", "event loop"),
    ("uvloop", "event loop"),
)


def py_spy_path() -> str | None:
    """py-spy next to this interpreter (installed in the venv), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


@dataclass(frozen=True)
class Frame:
    name: str
    file: str

    @property
    def key(self) -> str:
        return f"{self.name} ({self.file})"


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text.strip())
    if match is None:
        return Frame(text.strip(), "")
    return Frame(match.group("name"), match.group("file"))


def bucket_of(frame: Frame) -> str:
    for needle, bucket in BUCKETS:
        if needle in frame.file:
            return bucket
    return "other"


def summarize_folded(text: str, top: int = 20) -> dict[str, Any]:
    """Top self and inclusive functions and bucket shares from py-spy's raw (folded) output."""
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    ours_inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack_text, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [parse_frame(f) for f in stack_text.split(";") if f]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        self_counts[leaf.key] += count
        buckets[bucket_of(leaf)] += count
        for key in {f.key for f in frames}:
            inclusive[key] += count
        # Our functions' shares including what they call (each counted once per stack).
        ours = [f.key for f in frames if "router_service/" in f.file or "sekha/server/" in f.file]
        for key in set(ours):
            ours_inclusive[key] += count

    def share(counter: collections.Counter[str], limit: int) -> list[dict[str, Any]]:
        return [
            {"frame": key, "samples": n, "percent": round(100.0 * n / total, 1) if total else 0.0}
            for key, n in counter.most_common(limit)
            if n
        ]

    return {
        "samples": total,
        "top_self": share(self_counts, top),
        "top_inclusive": share(inclusive, top),
        "our_code_inclusive": share(ours_inclusive, top),
        "buckets_self": share(buckets, len(BUCKETS) + 1),
    }


def record(pid: int, seconds: float, svg_path: Path, folded_path: Path, rate: int = 100) -> dict[str, Any]:
    """Record an SVG, then folded stacks, each for ``seconds``; returns the folded summary."""
    spy = py_spy_path()
    if spy is None:
        return {"available": False, "reason": "py-spy not installed (pip install py-spy)"}
    duration = str(max(1, round(seconds)))
    common = ["record", "--nonblocking", "--pid", str(pid), "--duration", duration, "--rate", str(rate)]
    errors = []
    for output, fmt in ((svg_path, "flamegraph"), (folded_path, "raw")):
        completed = subprocess.run(
            [spy, *common, "--format", fmt, "--output", str(output)],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        if completed.returncode != 0:
            errors.append(f"py-spy {fmt} exited {completed.returncode}: {completed.stderr.strip()[-500:]}")
    if not folded_path.exists():
        return {"available": False, "reason": "; ".join(errors) or "py-spy wrote nothing"}
    summary = summarize_folded(folded_path.read_text(encoding="utf-8", errors="replace"))
    return {
        "available": True,
        "tool": "py-spy",
        "seconds_each": float(duration),
        "rate_hz": rate,
        "svg": svg_path.name if svg_path.exists() else None,
        "folded": folded_path.name,
        "errors": errors,
        **summary,
    }
