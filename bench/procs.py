"""Processes under benchmark: start them on free loopback ports, wait until they serve, measure them.

Every target (fake provider, router, echo server, LiteLLM proxy) and the load generator runs as
its own OS process, so the CPU and memory read from ``/proc`` belong to exactly one program.
A target may fork workers (uvicorn can), so CPU and RSS are summed over its process tree.
Output of each process goes to a log file in the run's work directory, never to a pipe that
could fill up and stall the process mid-benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the OS picks it; the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; fields resume after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children = _children_of()
    tree, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        tree.append(current)
        frontier.extend(children.get(current, []))
    return tree


def cpu_seconds_by_process(pid: int) -> dict[int, float]:
    """utime + stime of ``pid`` and of each of its live descendants, in seconds, by pid."""
    seconds = {}
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{member}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            # utime, stime (fields 14 and 15 of stat)
            seconds[member] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return seconds


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants, in seconds."""
    return sum(cpu_seconds_by_process(pid).values())


def established_connections(pid: int, port: int) -> dict[int, int]:
    """Established TCP connections on local ``port`` held by ``pid`` and each of its descendants.

    Worker processes sharing a port (SO_REUSEPORT) each accept their own connections; this says
    which worker holds how many (sockets matched by inode between ``/proc/net/tcp*`` and fds).
    """
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                    established.add(fields[9])
    counts: dict[int, int] = {}
    for member in process_tree(pid):
        held = 0
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{member}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(fd.path)
                    if link.startswith("socket:[") and link[8:-1] in established:
                        held += 1
        counts[member] = held
    return counts


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` plus its live descendants, in KiB; (0, 0) when it is gone.

    VmHWM is each process's peak resident size; the sum is an upper bound of the tree's peak.
    """
    rss = peak = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak += int(line.split()[1])
    return rss, peak


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` plus its live descendants, in KiB (0 when the process is gone)."""
    return memory_kib(pid)[0]


@dataclass
class ManagedProcess:
    """A started child process with its log file; ``stop()`` ends it (and only it) by pid."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    ready_s: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group this process leads, then SIGKILL it if it lingers."""
        stop_all([self], timeout_s)


def stop_all(processes: Sequence[ManagedProcess], timeout_s: float = 10.0) -> None:
    """Stop several processes at once: all get SIGTERM first, so their grace periods overlap."""
    running = [p for p in processes if p.popen.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in running:
        try:
            process.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait(timeout=5)


def start_process(
    name: str,
    argv: Sequence[str],
    work_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    replace_env: bool = False,
) -> ManagedProcess:
    """Start ``argv`` in its own process group (so stopping it reaches its workers too).

    ``env`` is added to this process's environment, or replaces it when ``replace_env``.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / f"{name}.log"
    full_env = {} if replace_env else dict(os.environ)
    full_env.update(env or {})
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ManagedProcess(name=name, popen=popen, log_path=log_path, started_at=time.perf_counter())


class StartupError(RuntimeError):
    """A process exited or did not become ready in time."""


def wait_ready(
    process: ManagedProcess, probe: Callable[[], bool], timeout_s: float, interval_s: float = 0.02
) -> float:
    """Poll ``probe`` until it returns True; returns seconds from process start to ready."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if not process.alive():
            raise StartupError(
                f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}"
            )
        with contextlib.suppress(Exception):
            if probe():
                process.ready_s = time.perf_counter() - process.started_at
                return process.ready_s
        time.sleep(interval_s)
    raise StartupError(f"{process.name} not ready after {timeout_s:.0f}s:\n{process.log_tail()}")


def tcp_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class LoadGenProcess:
    """The load generator (``python -m bench.loadgen``) driven job by job over its stdin/stdout."""

    def __init__(self, work_dir: Path, name: str = "loadgen") -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = work_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        self._pending = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def submit(self, command: dict[str, Any]) -> None:
        """Send one command; read its answer with ``result()``."""
        assert self.popen.stdin is not None
        if self._pending:
            raise RuntimeError("a job is still running")
        self.popen.stdin.write(json.dumps(command) + "\n")
        self.popen.stdin.flush()
        self._pending = True

    def result(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        self._pending = False
        if not line:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"load generator exited ({self.popen.poll()}):\n{tail}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"load generator: {answer['error']}")
        return answer

    def run(self, **job: Any) -> dict[str, Any]:
        self.submit({"op": "run", **job})
        return self.result()

    def reset(self) -> None:
        self.submit({"op": "reset"})
        self.result()

    def close(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.popen.stdin is not None
                self.popen.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.popen.stdin.flush()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
