"""Side by side: our router, a reference gateway, the LiteLLM proxy, Portkey, the fake direct, a gRPC echo.

The targets (``bench.targets``): ``direct`` (the fake provider called by the load generator:
the floor), ``echo`` (bare grpc.aio answering from the request: the ceiling of gRPC alone),
``reference`` (grpc.aio forwarding to the same fake over one pooled aiohttp session and
nothing else: the ceiling of a Python gRPC gateway), ``router`` (ours: SQLite state, the
shipped default, with a budget and a rate limit as in production), ``litellm_proxy`` and
``portkey`` (the peers, HTTP). The router's variants each differ in one setting from the
target they are compared with (``VARIANT_COMPARISONS``): ``router_memory`` (memory state),
``router_telemetry`` (Prometheus metrics and 10% of traces to a loopback OTLP collector),
``router_redis`` (Redis state) and ``router_workers2`` (Redis state, two worker processes).
They run only on the cells their ratios are read from (``VARIANT_CELLS``), which bounds the
time of the full run. Before any of them starts, ``bench.startup`` times fresh starts
of the router, the reference and Portkey: process start to serving, and the first chat.

All targets are started one after the other (each timed to SERVING while nothing else runs),
then driven by the same load generator process, cell by cell: for every workload (unary
chat, streaming chat, embeddings) and concurrency, each target in turn gets a warm-up job and
then the measured job. Interleaving the targets within a cell means a burst of noise from
other work on the machine hits every target's cell at about the same time, and the ratios
(ours vs the proxy, ours vs the echo ceiling) compare numbers measured minutes apart, not an
hour apart.

Per cell the target's CPU (utime + stime of its process tree, from ``/proc``) is read around
the measured job only, and its RSS right after. "Added latency" is the target's percentile
minus the direct call's percentile for the same workload and concurrency. For streams, CPU per
text chunk is the CPU around the measured job divided by the chunks the load generator received.
A router with worker processes is one process tree (supervisor and workers); its own
redis-server counts too, reported apart as well (``companion_cpu_ms_per_request``). The OTLP
collector's CPU does not count: in production it runs elsewhere.
Portkey's stream handler waits 25 ms before its first chunk by design, so its time to first
token carries those 25 ms.

    python -m bench.compare [--quick] [--skip-proxy] [--skip-portkey] [--output bench/results/gateway.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import litellm_venv, portkey_gateway, profiling, startup, targets, tracing_overhead
from bench.machine import machine_info
from bench.procs import (
    LoadGenProcess,
    ManagedProcess,
    cpu_seconds,
    cpu_seconds_by_process,
    established_connections,
    memory_kib,
    stop_all,
)
from bench.stats import method_text

RESULTS = Path(__file__).parent / "results"
TARGET_ORDER = (
    "direct",
    "echo",
    "reference",
    "router",
    "router_memory",
    "router_telemetry",
    "router_redis",
    "router_workers2",
    "router_http",
    "litellm_proxy",
    "portkey",
)
STARTUP_TARGETS = ("router", "reference", "portkey")
# Where each variant runs: (workloads, concurrencies); no concurrencies means every one of the
# run. A variant whose concurrencies are all outside the run gets the run's highest.
VARIANT_CELLS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "router_memory": (("chat",), ()),
    "router_telemetry": (("chat", "stream"), (1, 32)),
    "router_redis": (("chat",), (32, 128)),
    "router_workers2": (("chat",), (32, 128)),
}
# (name, target, baseline): each ratio is target over baseline, two routers that differ in
# exactly one setting (bench.targets.ROUTER_VARIANTS).
VARIANT_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("sqlite_over_memory", "router", "router_memory"),
    ("telemetry_over_none", "router_telemetry", "router"),
    ("workers2_over_workers1", "router_workers2", "router_redis"),
)


@dataclass(frozen=True)
class GatewaySettings:
    concurrencies: tuple[int, ...] = (1, 8, 32, 128)
    workloads: tuple[str, ...] = ("chat", "stream", "embed")
    requests: int = 4000
    max_duration_s: float = 10.0
    warmup_requests: int = 100
    warmup_per_worker: int = 4
    warmup_max_s: float = 3.0
    upstream_latency_ms: float = 0.0
    include_proxy: bool = True
    install_proxy: bool = True
    include_portkey: bool = True
    install_portkey: bool = True
    startup_runs: int = 5  # fresh starts per target for start-up and first request (0: skip)
    quick_install: bool = False  # npm gives up fast without a registry (the quick run)
    profile_seconds: float = 0.0
    profile_concurrency: int = 32
    targets: tuple[str, ...] = TARGET_ORDER
    router_source: str | None = None  # another checkout to take the router from (A/B of a patch)
    target_cells: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = field(
        default_factory=lambda: dict(VARIANT_CELLS)
    )

    def cells_for(self, name: str) -> list[tuple[str, int]]:
        """The (workload, concurrency) cells target ``name`` runs: every cell unless restricted."""
        if name not in self.target_cells:
            return [(w, c) for w in self.workloads for c in self.concurrencies]
        workloads, wanted = self.target_cells[name]
        concurrencies = [c for c in self.concurrencies if not wanted or c in wanted]
        if not concurrencies and self.concurrencies:
            concurrencies = [max(self.concurrencies)]
        return [(w, c) for w in self.workloads if w in workloads for c in concurrencies]

    @classmethod
    def quick(cls, **overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "concurrencies": (1, 8),
            "requests": 40,
            "max_duration_s": 3.0,
            "warmup_requests": 8,
            "warmup_per_worker": 1,
            "warmup_max_s": 2.0,
            "startup_runs": 2,
            "quick_install": True,
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class Running:
    target: targets.Target
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)


def _job(target: targets.Target, workload: str, concurrency: int) -> dict[str, Any]:
    http = target.kind == "http"
    return {
        "kind": target.kind,
        "address": target.address,
        "workload": workload,
        "concurrency": concurrency,
        "chat_model": targets.CHAT_MODEL if http else "",
        "embed_model": targets.EMBED_MODEL if http else "",
        "api_key": target.api_key,
        "headers": target.headers,
        "channels": target.channels,
    }


BALANCE_ATTEMPTS = 40  # an even 4/4 split comes once in about 4 tries


def _balance_connections(
    loadgen: LoadGenProcess,
    target: targets.Target,
    warm_up: Callable[[], dict[str, Any]],
    warmup: dict[str, Any],
) -> tuple[dict[str, Any], dict[int, int]]:
    """Reconnect until the workers hold the load generator's connections evenly (or give up).

    The kernel hands each new connection to a worker by a hash of its addresses, so 8 channels
    may well land 6 on one worker and 2 on the other, and the calls (spread evenly over the
    channels) would follow. Many clients even that out in production; one load generator
    does not, so it reconnects (new source ports) until the split is even.
    """
    port = int(target.address.rsplit(":", 1)[1])
    counts: dict[int, int] = {}
    for _ in range(BALANCE_ATTEMPTS):
        counts = {p: n for p, n in established_connections(target.process.pid, port).items() if n}
        if len(counts) == target.workers and max(counts.values()) - min(counts.values()) <= 1:
            break
        loadgen.reset()  # closes every channel; other targets reconnect in their own warm-up
        warmup = warm_up()
    return warmup, counts


def measure_cell(
    loadgen: LoadGenProcess,
    target: targets.Target,
    workload: str,
    concurrency: int,
    settings: GatewaySettings,
    upstream: ManagedProcess,
) -> dict[str, Any]:
    """Warm up, then one measured closed-loop job; CPU read around the measured job only."""
    job = _job(target, workload, concurrency)

    def warm_up() -> dict[str, Any]:
        return loadgen.run(
            **job,
            requests=max(settings.warmup_requests, settings.warmup_per_worker * concurrency),
            max_duration_s=settings.warmup_max_s,
        )

    warmup = warm_up()
    connections = None
    if target.workers > 1:
        warmup, connections = _balance_connections(loadgen, target, warm_up, warmup)
    pid = target.process.pid
    companions = [c.pid for c in target.companions]
    by_process_before, upstream_before = cpu_seconds_by_process(pid), cpu_seconds(upstream.pid)
    companion_before = sum(cpu_seconds(c) for c in companions)
    result = loadgen.run(**job, requests=settings.requests, max_duration_s=settings.max_duration_s)
    by_process = cpu_seconds_by_process(pid)
    upstream_used = cpu_seconds(upstream.pid) - upstream_before
    companion_used = sum(cpu_seconds(c) for c in companions) - companion_before
    # A process of the tree that ended meanwhile takes its counted time with it; one that
    # started meanwhile counts from zero.
    per_process = {p: by_process[p] - by_process_before.get(p, 0.0) for p in by_process}
    cpu_used = sum(per_process.values())
    rss, peak = memory_kib(pid)
    done = max(result["ok"] + result["errors"], 1)
    chunks = result.get("chunks") or 0
    elapsed = result["elapsed_s"]
    result.update(
        {
            "warmup_errors": warmup["errors"],
            "target_cpu_s": round(cpu_used, 3),
            "target_cpu_ms_per_request": round(cpu_used / done * 1000, 4),
            "target_cpu_ms_per_chunk": round(cpu_used / chunks * 1000, 4) if chunks else None,
            "target_cpu_cores": round(cpu_used / elapsed, 3) if elapsed else None,
            "upstream_cpu_ms_per_request": round(upstream_used / done * 1000, 4),
            "client_cpu_ms_per_request": round(result["client_cpu_s"] / done * 1000, 4),
            "target_rss_kib": rss,
            "target_peak_rss_kib": peak,
        }
    )
    if len(per_process) > 1:
        # Supervisor and workers: how evenly the connections spread the work.
        result["target_cpu_s_by_process"] = {str(p): round(v, 3) for p, v in sorted(per_process.items())}
    if connections is not None:
        result["connections_by_process"] = {str(p): n for p, n in sorted(connections.items())}
    if companions:
        result["companion_cpu_ms_per_request"] = round(companion_used / done * 1000, 4)
        result["companion_cpu_cores"] = round(companion_used / elapsed, 3) if elapsed else None
    return result


def _start(
    name: str,
    work_dir: Path,
    fake: ManagedProcess,
    fake_url: str,
    settings: GatewaySettings,
    report: dict[str, Any],
    portkey: portkey_gateway.PortkeyInstall | None,
    collector_port: int | None = None,
) -> targets.Target | None:
    if name == "direct":
        target = targets.direct_target(fake, fake_url)
        targets.first_success_direct(target)
        return target
    if name == "echo":
        return targets.start_echo(work_dir)
    if name == "reference":
        return targets.start_reference(work_dir, fake_url)
    if name in targets.ROUTER_VARIANTS:
        source = Path(settings.router_source) if settings.router_source else None
        return targets.start_router_variant(name, work_dir, fake_url, collector_port, source)
    if name == "router_http":
        source = Path(settings.router_source) if settings.router_source else None
        return targets.start_router_http(work_dir, fake_url, source=source)
    if name == "litellm_proxy":
        if not settings.include_proxy:
            report["unavailable"][name] = "skipped (--skip-proxy)"
            return None
        install = litellm_venv.ensure_litellm(
            work_dir / "litellm_install.log", allow_install=settings.install_proxy
        )
        report["litellm_install"] = {
            "venv": str(install.venv),
            "version": install.version,
            "installed_now": install.installed_now,
            "install_s": install.install_s,
            "reason": install.reason,
        }
        if not install.available:
            report["unavailable"][name] = install.reason
            return None
        return targets.start_proxy(work_dir, install, fake_url)
    if name == "portkey":
        return None if portkey is None else targets.start_portkey(work_dir, portkey, fake_url)
    raise ValueError(name)


def prepare_portkey(
    work_dir: Path, settings: GatewaySettings, report: dict[str, Any]
) -> portkey_gateway.PortkeyInstall | None:
    """The installed gateway (installed now if allowed), or None with the reason in the report."""
    if "portkey" not in settings.targets:
        return None
    if not settings.include_portkey:
        report["unavailable"]["portkey"] = "skipped (--skip-portkey)"
        return None
    install = portkey_gateway.ensure_portkey(
        work_dir / "portkey_install.log", allow_install=settings.install_portkey, quick=settings.quick_install
    )
    report["portkey_install"] = {
        "directory": str(install.directory),
        "version": install.version,
        "node": install.node_version,
        "pinned_dependencies": portkey_gateway.PINNED_DEPENDENCIES,
        "installed_now": install.installed_now,
        "install_s": install.install_s,
        "reason": install.reason,
    }
    if not install.available:
        # A quick run goes on without it (offline machines); a full run reports it missing.
        prefix = "skipped in the quick run" if settings.quick_install else "MISSING"
        report["unavailable"]["portkey"] = f"{prefix}: {install.reason}"
        print(f"  portkey {report['unavailable']['portkey']}", flush=True)
        return None
    return install


def measure_startup(
    work_dir: Path, fake_url: str, settings: GatewaySettings, portkey: portkey_gateway.PortkeyInstall | None
) -> dict[str, Any]:
    """Fresh starts of the router, the reference and Portkey (those selected and available)."""
    launches = []
    wanted = [name for name in STARTUP_TARGETS if name in settings.targets]
    for name in wanted:
        if name == "router":
            source = Path(settings.router_source) if settings.router_source else None
            launches.append(startup.router_launch(work_dir / "startup", fake_url, source))
        elif name == "reference":
            launches.append(startup.reference_launch(fake_url))
        elif portkey is not None:
            launches.append(startup.portkey_launch(portkey, fake_url))
    return startup.measure_all(launches, settings.startup_runs, work_dir / "startup")


def run_gateway(settings: GatewaySettings, work_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Start every target, run every cell, derive added latency and ratios; returns the report."""
    report: dict[str, Any] = {
        "section": "gateway",
        "method": method_text(__doc__),
        "settings": asdict(settings),
        "targets": {},
        "unavailable": {},
    }
    fake, fake_url = targets.start_fake(work_dir, settings.upstream_latency_ms)
    report["upstream"] = {
        "fake_provider_startup_s": round(fake.ready_s or 0.0, 3),
        "latency_ms": settings.upstream_latency_ms,
    }
    loadgen = LoadGenProcess(work_dir)
    running: dict[str, Running] = {}
    collector: subprocess.Popen[str] | None = None
    collector_port: int | None = None
    try:
        portkey: portkey_gateway.PortkeyInstall | None = None
        if any(targets.ROUTER_VARIANTS.get(n, targets.RouterVariant()).telemetry for n in settings.targets):
            collector, collector_port = tracing_overhead.start_collector()

        def start(name: str) -> None:
            try:
                target = _start(name, work_dir, fake, fake_url, settings, report, portkey, collector_port)
            except Exception as exc:
                report["unavailable"][name] = f"failed to start: {exc}"
                return
            if target is not None:
                running[name] = Running(target)

        # "direct" is the fake itself, its first answer timed from the fake's start: before any
        # install and the start-up runs; the other targets after them, so none runs meanwhile.
        if "direct" in settings.targets:
            start("direct")
        portkey = prepare_portkey(work_dir, settings, report)
        if settings.startup_runs > 0:
            report["startup"] = measure_startup(work_dir, fake_url, settings, portkey)
        for name in settings.targets:
            if name != "direct":
                start(name)
        for workload in settings.workloads:
            for concurrency in settings.concurrencies:
                for name, run in running.items():
                    if not run.target.process.alive() or (workload, concurrency) not in settings.cells_for(
                        name
                    ):
                        continue
                    cell = measure_cell(loadgen, run.target, workload, concurrency, settings, fake)
                    run.cells[f"{workload}/c{concurrency}"] = cell
                    print(
                        f"  {name:<14} {workload:<6} c={concurrency:<4} "
                        f"{cell['throughput_rps']:>9.1f} req/s  "
                        f"p50 {cell['latency_ms'].get('p50', float('nan')):8.2f} ms  "
                        f"p99 {cell['latency_ms'].get('p99', float('nan')):8.2f} ms  errors {cell['errors']}",
                        flush=True,
                    )
        if "router" in running and settings.profile_seconds > 0:
            report["profile"] = profile_router(loadgen, running["router"].target, settings, out_dir)
        for name, run in running.items():
            rss, peak = memory_kib(run.target.process.pid)
            report["targets"][name] = {
                "kind": run.target.kind,
                "pid": run.target.process.pid,
                "alive_at_end": run.target.process.alive(),
                "startup_s": _round(run.target.startup_s),
                "first_success_s": _round(run.target.first_success_s),
                "rss_kib_after_run": rss,
                "peak_rss_kib": peak,
                "cells": run.cells,
            }
    finally:
        loadgen.close()
        # Routers before their redis-servers; all routers at once, so their grace periods overlap.
        stop_all([run.target.process for run in running.values() if run.target.owns_process])
        stop_all([c for run in running.values() for c in run.target.companions])
        fake.stop()
        if collector is not None:
            report["otlp_collector_received"] = tracing_overhead.stop_collector(collector)
    report["derived"] = derive(report, settings)
    report["machine"] = machine_info(
        litellm_proxy_version=(report.get("litellm_install") or {}).get("version")
    )
    return report


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def profile_router(
    loadgen: LoadGenProcess, router: targets.Target, settings: GatewaySettings, out_dir: Path
) -> dict[str, Any]:
    """py-spy on the router while the load generator keeps it busy with unary chat."""
    seconds = settings.profile_seconds
    job = _job(router, "chat", settings.profile_concurrency)
    loadgen.submit({"op": "run", **job, "requests": 10**9, "max_duration_s": 2 * seconds + 4})
    time.sleep(1.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = profiling.record(
        router.process.pid, seconds, out_dir / "profile.svg", out_dir / "profile.folded"
    )
    load = loadgen.result()
    summary["load"] = {
        "workload": "chat",
        "concurrency": settings.profile_concurrency,
        "throughput_rps_while_profiling": load["throughput_rps"],
        "errors": load["errors"],
    }
    return summary


def _p(cell: dict[str, Any] | None, metric: str, q: str) -> float | None:
    if not cell:
        return None
    value = (cell.get(metric) or {}).get(q)
    return float(value) if value is not None else None


def _ratio(ours: float | None, theirs: float | None, digits: int = 2) -> float | None:
    return round(ours / theirs, digits) if ours is not None and theirs else None


def _over_reference(
    key: str, router: dict[str, Any], reference: dict[str, Any], added: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Router over the reference gateway: server CPU per request (per chunk for streams), added TTFT."""
    entry: dict[str, Any] = {
        "throughput_vs_reference": _ratio(router["throughput_rps"], reference["throughput_rps"], 3),
        "cpu_per_request_over_reference": _ratio(
            router["target_cpu_ms_per_request"], reference["target_cpu_ms_per_request"]
        ),
    }
    if key.startswith("stream/"):
        entry["cpu_per_chunk_over_reference"] = _ratio(
            router.get("target_cpu_ms_per_chunk"), reference.get("target_cpu_ms_per_chunk")
        )
        ours = added.get("router", {}).get(key, {}).get("ttft_p50")
        theirs = added.get("reference", {}).get(key, {}).get("ttft_p50")
        # The reference's added TTFT is a fraction of a millisecond and may come out at or below
        # zero, where a ratio means nothing: the difference is reported too.
        entry["added_ttft_p50_over_reference"] = _ratio(ours, theirs) if theirs and theirs > 0 else None
        entry["added_ttft_p50_minus_reference_ms"] = (
            round(ours - theirs, 3) if ours is not None and theirs is not None else None
        )
    return entry


def _with_companions(cell: dict[str, Any]) -> float:
    return float(cell["target_cpu_ms_per_request"]) + float(cell.get("companion_cpu_ms_per_request") or 0.0)


def _worker_shares(cell: dict[str, Any], root_pid: int | None) -> list[float] | None:
    """Each worker's share of the workers' CPU (the supervisor left out), largest first."""
    by_process = cell.get("target_cpu_s_by_process")
    if not by_process:
        return None
    workers = [v for p, v in by_process.items() if int(p) != root_pid]
    total = sum(workers)
    return sorted((round(v / total, 3) for v in workers), reverse=True) if total else None


def variant_ratios(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each variant over the router it differs from in one setting, cell by cell (both measured)."""
    nproc = os.cpu_count() or 1
    found: dict[str, dict[str, Any]] = {}
    for comparison, name, base in VARIANT_COMPARISONS:
        ours_target, base_target = report["targets"].get(name), report["targets"].get(base)
        if not ours_target or not base_target:
            continue
        entries = {}
        for key, cell in ours_target["cells"].items():
            other = base_target["cells"].get(key)
            if not other:
                continue
            entry: dict[str, Any] = {
                "throughput_rps": cell["throughput_rps"],
                "baseline_throughput_rps": other["throughput_rps"],
                "throughput_ratio": _ratio(cell["throughput_rps"], other["throughput_rps"], 3),
                "cpu_ms_per_request": cell["target_cpu_ms_per_request"],
                "baseline_cpu_ms_per_request": other["target_cpu_ms_per_request"],
                "cpu_per_request_ratio": _ratio(
                    cell["target_cpu_ms_per_request"], other["target_cpu_ms_per_request"], 3
                ),
                # The router's share of the machine while it ran the cell (CPU seconds / wall / cores).
                "machine_share": _ratio(cell["target_cpu_cores"], nproc, 3),
                "baseline_machine_share": _ratio(other["target_cpu_cores"], nproc, 3),
                "p50_ms": _p(cell, "latency_ms", "p50"),
                "baseline_p50_ms": _p(other, "latency_ms", "p50"),
            }
            if key.startswith("stream/"):
                entry["cpu_per_chunk_ratio"] = _ratio(
                    cell.get("target_cpu_ms_per_chunk"), other.get("target_cpu_ms_per_chunk"), 3
                )
                entry["cpu_ms_per_chunk"] = cell.get("target_cpu_ms_per_chunk")
                entry["baseline_cpu_ms_per_chunk"] = other.get("target_cpu_ms_per_chunk")
                entry["ttft_p50_ms"] = _p(cell, "ttft_ms", "p50")
                entry["baseline_ttft_p50_ms"] = _p(other, "ttft_ms", "p50")
            if "companion_cpu_ms_per_request" in cell or "companion_cpu_ms_per_request" in other:
                entry["cpu_with_redis_ms_per_request"] = round(_with_companions(cell), 4)
                entry["baseline_cpu_with_redis_ms_per_request"] = round(_with_companions(other), 4)
                entry["cpu_with_redis_ratio"] = _ratio(_with_companions(cell), _with_companions(other), 3)
            shares = _worker_shares(cell, ours_target.get("pid"))
            if shares:
                entry["worker_cpu_shares"] = shares
            entries[key] = entry
        if entries:
            found[comparison] = {"target": name, "baseline": base, "cells": entries}
    return found


def derive(report: dict[str, Any], settings: GatewaySettings) -> dict[str, Any]:
    """Added latency over the direct floor, and the ratios the goals are stated in."""
    cells = {name: t["cells"] for name, t in report["targets"].items()}
    direct = cells.get("direct", {})
    added: dict[str, dict[str, Any]] = {}
    for name, target_cells in cells.items():
        if name == "direct":
            continue
        for key, cell in target_cells.items():
            floor = direct.get(key)
            entry: dict[str, Any] = {}
            for q in ("p50", "p90", "p99"):
                value, base = _p(cell, "latency_ms", q), _p(floor, "latency_ms", q)
                entry[q] = round(value - base, 3) if value is not None and base is not None else None
                if key.startswith("stream/"):
                    t, b = _p(cell, "ttft_ms", q), _p(floor, "ttft_ms", q)
                    entry[f"ttft_{q}"] = round(t - b, 3) if t is not None and b is not None else None
            added.setdefault(name, {})[key] = entry
    ratios: dict[str, dict[str, Any]] = {}
    router, echo, reference = cells.get("router", {}), cells.get("echo", {}), cells.get("reference", {})
    for key, cell in router.items():
        entry: dict[str, Any] = {}
        # Peers: how many times our throughput, and their added latency and CPU over ours.
        for peer, label in (("litellm_proxy", "proxy"), ("portkey", "portkey"), ("router_http", "http_door")):
            theirs_cell = cells.get(peer, {}).get(key)
            if not theirs_cell or not theirs_cell["throughput_rps"]:
                continue
            entry[f"throughput_vs_{label}"] = round(cell["throughput_rps"] / theirs_cell["throughput_rps"], 2)
            ours, theirs = added["router"][key]["p50"], added.get(peer, {}).get(key, {}).get("p50")
            if ours is not None and theirs is not None and ours > 0:
                entry[f"{label}_added_p50_over_ours"] = round(theirs / ours, 2)
            if cell["target_cpu_ms_per_request"]:
                entry[f"{label}_cpu_per_request_over_ours"] = round(
                    theirs_cell["target_cpu_ms_per_request"] / cell["target_cpu_ms_per_request"], 2
                )
        if key in echo and echo[key]["throughput_rps"]:
            entry["throughput_vs_echo"] = round(cell["throughput_rps"] / echo[key]["throughput_rps"], 3)
        if key in reference:
            entry.update(_over_reference(key, cell, reference[key], added))
            # The unary goal holds for the default (SQLite) state and for memory state alike.
            memory_cell = cells.get("router_memory", {}).get(key)
            if memory_cell:
                entry["memory_state_cpu_per_request_over_reference"] = _ratio(
                    memory_cell["target_cpu_ms_per_request"], reference[key]["target_cpu_ms_per_request"]
                )
        ratios[key] = entry
    memory = {name: t["rss_kib_after_run"] for name, t in report["targets"].items()}
    errors = {name: sum(c["errors"] for c in t["cells"].values()) for name, t in report["targets"].items()}
    return {
        "added_latency_ms": added,
        "router_ratios": ratios,
        "variant_ratios": variant_ratios(report),
        "rss_kib_after_run": memory,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-proxy", action="store_true")
    parser.add_argument("--skip-portkey", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "gateway.json")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    import tempfile

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="sekha-bench-"))
    settings = GatewaySettings.quick() if args.quick else GatewaySettings()
    if args.skip_proxy:
        settings = replace(settings, include_proxy=False)
    if args.skip_portkey:
        settings = replace(settings, include_portkey=False)
    report = run_gateway(settings, work, args.output.parent)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
