"""Start-up and first request: how long a gateway takes to serve, and what its first chat costs.

Each target is started as a fresh process ``runs`` times in a row (nothing else of the
benchmark runs meanwhile but the fake provider). Per run:

* **serving**: seconds from ``Popen`` to the process's own "I serve" signal: the router's
  ``serving on port N`` log line (logged once the gRPC server listens and health says
  SERVING), the reference server's identical line, and for Portkey the first 200 answer of
  ``GET /`` (its console banner comes a fixed second later, after a spinner animation, so the
  HTTP answer is the fair signal). The signal is polled every 5 ms.
* **first chat**: milliseconds for one unary chat issued right after that signal, over a new
  connection (a new gRPC channel; a new HTTP connection), to the complete answer. It includes
  the connection set-up, about a millisecond on loopback, the same for every target.

The process is then stopped (SIGTERM to its group) before the next run. Medians and the
per-run values go into the results; the first run of a target may pay for cold OS caches.

The router's own source is byte-compiled before its runs, as ``pip install`` does for an
installed router (the container image has its bytecode too): a checkout run with
PYTHONDONTWRITEBYTECODE set would otherwise compile every router module from source on every
start, 0.3-0.5 s that no deployment pays. The other targets' code is installed, hence compiled.
"""

from __future__ import annotations

import compileall
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import portkey_gateway, targets
from bench.procs import ManagedProcess, free_port, start_process, wait_ready
from bench.stats import method_text

SERVING_LINE = re.compile(r"serving on port (\d+)")
POLL_INTERVAL_S = 0.005
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Launch:
    """How to start one target and recognise that it serves; ``first_chat(port)`` sends the chat."""

    name: str
    argv: Callable[[int], list[str]]  # the command line for a port (0: the process picks one)
    cwd: Path
    env: dict[str, str] | None
    signal: str  # what "serving" means for this target, for the report
    first_chat: Callable[[int], None]
    log_announces_port: bool  # the serving log line carries the bound port


def _port_from_log(process: ManagedProcess) -> int | None:
    try:
        match = SERVING_LINE.search(process.log_path.read_text(errors="replace"))
    except OSError:
        return None
    return int(match.group(1)) if match else None


def one_run(launch: Launch, work_dir: Path, index: int) -> dict[str, float]:
    """Start, wait for the serving signal, send one chat, stop; the two durations."""
    port = 0 if launch.log_announces_port else free_port()
    process = start_process(
        f"startup_{launch.name}_{index}", launch.argv(port), work_dir, env=launch.env, cwd=launch.cwd
    )
    try:
        if launch.log_announces_port:
            serving_s = wait_ready(
                process, lambda: _port_from_log(process) is not None, TIMEOUT_S, POLL_INTERVAL_S
            )
            port = _port_from_log(process) or 0
        else:
            serving_s = wait_ready(process, lambda: targets.portkey_serving(port), TIMEOUT_S, POLL_INTERVAL_S)
        began = time.perf_counter()
        launch.first_chat(port)
        first_chat_ms = (time.perf_counter() - began) * 1000
    finally:
        process.stop()
    return {"serving_s": round(serving_s, 4), "first_chat_ms": round(first_chat_ms, 2)}


def measure(launch: Launch, runs: int, work_dir: Path) -> dict[str, Any]:
    """``runs`` fresh starts of one target; per-run values, medians, and any failure."""
    per_run: list[dict[str, float]] = []
    failure = None
    for index in range(runs):
        try:
            per_run.append(one_run(launch, work_dir, index))
        except Exception as exc:  # no start, or a failed first chat: recorded, the others go on
            failure = f"run {index}: {type(exc).__name__}: {str(exc)[:400]}"
            break
    result: dict[str, Any] = {"signal": launch.signal, "runs": per_run, "failure": failure}
    for key in ("serving_s", "first_chat_ms"):
        values = [run[key] for run in per_run]
        result[f"{key}_median"] = round(statistics.median(values), 4) if values else None
        result[f"{key}_min"] = min(values) if values else None
        result[f"{key}_max"] = max(values) if values else None
    return result


def router_launch(
    work_dir: Path, fake_base_url: str, source: Path | None = None, config: dict[str, Any] | None = None
) -> Launch:
    """The router with the benchmark's config, on port 0 (its log line names the port)."""
    config = config or targets.router_config(0, [targets.fake_provider_entry(fake_base_url)])
    argv, env, cwd = targets.router_launch(work_dir, config, "startup_router", source)
    compile_router_source(cwd)
    return Launch(
        name="router",
        argv=lambda port: argv,
        cwd=cwd,
        env=env,
        signal="log line 'serving on port N'",
        first_chat=targets.grpc_chat,
        log_announces_port=True,
    )


def compile_router_source(root: Path) -> None:
    """Write the bytecode of the router's packages under ``root`` (``__pycache__``, git-ignored)."""
    for package in ("router_service", "sekha_runtime", "clients/python/sekha"):
        if not compileall.compile_dir(root / package, quiet=1):
            raise RuntimeError(f"byte-compiling {root / package} failed")


def reference_launch(fake_base_url: str) -> Launch:
    return Launch(
        name="reference",
        argv=lambda port: targets.reference_argv(port, fake_base_url),
        cwd=targets.ROOT,
        env=None,
        signal="log line 'reference serving on port N'",
        first_chat=targets.grpc_chat,
        log_announces_port=True,
    )


def portkey_launch(install: portkey_gateway.PortkeyInstall, fake_base_url: str) -> Launch:
    headers = portkey_gateway.request_headers(fake_base_url)
    return Launch(
        name="portkey",
        argv=install.command,
        cwd=install.directory,
        env=None,
        signal="first 200 answer to GET /",
        first_chat=lambda port: targets.http_chat(f"http://127.0.0.1:{port}/v1", "sk-fake", headers),
        log_announces_port=False,
    )


def measure_all(launches: list[Launch], runs: int, work_dir: Path) -> dict[str, Any]:
    """Every launch ``runs`` times; the section of the gateway results."""
    results: dict[str, Any] = {"runs_per_target": runs, "method": method_text(__doc__), "targets": {}}
    for launch in launches:
        measured = measure(launch, runs, work_dir)
        results["targets"][launch.name] = measured
        failed = f"  FAILED: {measured['failure']}" if measured["failure"] else ""
        print(
            f"  startup {launch.name:<10} serving {measured['serving_s_median'] or float('nan'):7.3f} s  "
            f"first chat {measured['first_chat_ms_median'] or float('nan'):8.2f} ms  "
            f"(median of {len(measured['runs'])}){failed}",
            flush=True,
        )
    return results
