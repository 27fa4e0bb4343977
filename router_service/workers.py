"""`sekha-router serve --workers N`: N router processes on one port, for all of a machine's cores.

One Python process serves one core. The supervisor (this module, no event loop of its own)
starts N ordinary `sekha-router serve` processes that bind the same gRPC and HTTP ports with
SO_REUSEPORT, so the kernel spreads new connections over them. Everything that must hold across
the processes (budgets, rate limits, spend, breakers) lives in the Redis state backend, which
is why the config refuses `workers > 1` with memory or sqlite state.

Ports: a port of 0 is resolved here, once, so every worker binds the same one. Each worker's
Prometheus endpoint gets its own port (metrics_port + index) because a scrape must reach every
process, not a random one. Signals: SIGTERM and SIGINT stop the workers gracefully (each drains
within its grace period); SIGHUP is passed on, so every worker reloads its config. A worker that
dies is restarted after a pause, unless workers keep dying (then the supervisor stops them all
and exits non-zero, so the orchestrator sees it). See docs/ARCHITECTURE.md, "Processes".
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("router_service.workers")

RESTART_PAUSE_S = 1.0
# More deaths than this within the window means something is wrong with the config or host.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


@dataclass(frozen=True)
class WorkerPlan:
    """What every worker binds: fixed ports, so N processes share them."""

    workers: int
    port: int
    http_port: int | None
    metrics_port: int | None

    def environment(self, index: int) -> dict[str, str]:
        """The config overrides of worker `index` (SEKHA_ROUTER__... variables)."""
        env = {
            "SEKHA_ROUTER__SERVER__WORKERS": "1",
            "SEKHA_ROUTER__SERVER__REUSE_PORT": "true",
            "SEKHA_ROUTER__SERVER__PORT": str(self.port),
            "SEKHA_WORKER_INDEX": str(index),
        }
        if self.http_port is not None:
            env["SEKHA_ROUTER__SERVER__HTTP_PORT"] = str(self.http_port)
        if self.metrics_port is not None:
            env["SEKHA_ROUTER__SERVER__METRICS_PORT"] = str(
                self.metrics_port + index if self.metrics_port else 0
            )
        return env


def _reserve_port(host: str, port: int) -> tuple[int, socket.socket]:
    """A concrete port for `port` (0: a free one), held by a bound, non-listening SO_REUSEPORT socket
    until the workers have bound it too (a listening-free socket never receives connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    return holder.getsockname()[1], holder


@dataclass
class Supervisor:
    """Starts, watches and stops the worker processes."""

    plan: WorkerPlan
    command: Sequence[str]
    base_env: Mapping[str, str]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopping: bool = False
    restarts: list[float] = field(default_factory=list)

    def start(self, index: int) -> None:
        env = {**self.base_env, **self.plan.environment(index)}
        process = subprocess.Popen(list(self.command), env=env)
        self.processes[index] = process
        log.info("router worker %d started (pid %d)", index, process.pid)

    def signal_all(self, signum: int) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signum)

    def on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            log.info("passing SIGHUP to %d router workers", len(self.processes))
            self.signal_all(signum)
            return
        if not self.stopping:
            log.info("stopping %d router workers (%s)", len(self.processes), signal.Signals(signum).name)
        self.stopping = True
        self.signal_all(signal.SIGTERM)

    def watch(self, poll_s: float = 0.2) -> int:
        """Restart workers that die until asked to stop; return the exit code."""
        while True:
            for index, process in list(self.processes.items()):
                code = process.poll()
                if code is None or self.stopping:
                    continue
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
                if len(self.restarts) > MAX_RESTARTS:
                    log.error(
                        "router worker %d exited with code %d; %d restarts within %.0f s, stopping all",
                        index,
                        code,
                        MAX_RESTARTS,
                        RESTART_WINDOW_S,
                    )
                    self.stopping = True
                    self.signal_all(signal.SIGTERM)
                    self.wait_all()
                    return 1
                log.warning(
                    "router worker %d (pid %d) exited with code %d; restarting", index, process.pid, code
                )
                time.sleep(RESTART_PAUSE_S)
                self.start(index)
            if self.stopping:
                return self.wait_all()
            time.sleep(poll_s)

    def wait_all(self) -> int:
        worst = 0
        for process in self.processes.values():
            code = process.wait()
            if code not in (0, -signal.SIGTERM):
                worst = worst or 1
        return worst


def supervise(config_path: str | None, workers: int) -> int:
    """Serve with `workers` processes; the config decides ports and state (checked here first)."""
    from router_service.config import RouterConfig
    from sekha_runtime.configloader import ConfigError

    environ = {**os.environ, "SEKHA_ROUTER__SERVER__WORKERS": str(workers)}
    try:
        config = RouterConfig.load(config_path, environ=environ)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"config error: {line}", file=sys.stderr)
        return 2
    server = config.server
    port, grpc_holder = _reserve_port(server.host, server.port)
    holders = [grpc_holder]
    http_port = None
    if server.http_port is not None:
        http_port, http_holder = _reserve_port(server.http_host or server.host, server.http_port)
        holders.append(http_holder)
    plan = WorkerPlan(workers, port, http_port, server.metrics_port)
    command = [sys.executable, "-m", "router_service", "serve"]
    if config_path is not None:
        command += ["--config", config_path]
    supervisor = Supervisor(plan, command, environ)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, supervisor.on_signal)
    log.info("router supervising %d workers on port %d", workers, port)
    try:
        for index in range(workers):
            supervisor.start(index)
        # The workers bind with SO_REUSEPORT themselves; the holders only kept port 0's choice.
        time.sleep(0.5)
    finally:
        for holder in holders:
            holder.close()
    return supervisor.watch()
