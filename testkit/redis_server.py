"""A real `redis-server` on 127.0.0.1 for tests: started on a free port, no persistence by default.

`RedisServer.start()` launches `redis-server --port <free> --save "" --appendonly no` in a
temporary directory and waits until it answers PING; `stop()` terminates it and `restart()`
starts it again on the same port (an outage test stops it mid-test and brings it back).
`RedisServer(binary, persistent=True)` writes an append-only file (fsync always) in that
directory, so a restart comes back with its data, as the deployed Redis does.
`redis_server_or_skip()` skips the calling test only when the binary is not installed.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["REDIS_SERVER_BINARY", "RedisServer", "redis_server_or_skip"]

REDIS_SERVER_BINARY = "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary() -> str | None:
    if Path(REDIS_SERVER_BINARY).exists():
        return REDIS_SERVER_BINARY
    return shutil.which("redis-server")


class RedisServer:
    """One redis-server process owned by a test."""

    def __init__(self, binary: str, port: int | None = None, *, persistent: bool = False) -> None:
        self.binary = binary
        self.port = port or _free_port()
        self.persistent = persistent
        self._dir = tempfile.TemporaryDirectory(prefix="sekha-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        if self._process is not None:
            return
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes" if self.persistent else "no",
                "--appendfsync", "always",
                "--dir", self._dir.name,
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                self._process = None
                raise RuntimeError(f"redis-server exited at start: {error.strip()[:500]}")
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()
        # The port must be free again before a restart binds it.
        deadline = time.monotonic() + 5
        while self._ping() and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self._dir.cleanup()


def redis_server_or_skip(*, persistent: bool = False) -> RedisServer:
    """A started server; skips the test when redis-server is not installed (and only then)."""
    binary = _binary()
    if binary is None:
        pytest.skip(f"redis-server is not installed ({REDIS_SERVER_BINARY} missing and not on PATH)")
    server = RedisServer(binary, persistent=persistent)
    server.start()
    return server
