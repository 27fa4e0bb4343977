"""A real Chroma server (`chroma run`, the CLI of the installed chromadb) on 127.0.0.1 for tests.

`ChromaServer(path).start()` launches it on a free port with its data under `path` and waits
until its heartbeat answers (blocking: start it from a fixture); `stop()` terminates it.
`chroma_server_or_skip()` skips the calling test only when the CLI is not installed next to
the interpreter.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

__all__ = ["CHROMA_BINARY", "ChromaServer", "chroma_server_or_skip"]

CHROMA_BINARY = Path(sys.executable).with_name("chroma")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChromaServer:
    """One `chroma run` process owned by a test (or a module of tests)."""

    def __init__(self, path: Path, port: int | None = None) -> None:
        self.path = path
        self.port = port or _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.path.parent / f"{self.path.name}.log"

    def start(self, within_s: float = 60.0) -> ChromaServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(CHROMA_BINARY),
                    "run",
                    "--path",
                    str(self.path),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
            )
        deadline = time.monotonic() + within_s
        while True:  # another process: polling its heartbeat is the only way to know it serves
            if self.process.poll() is not None:
                raise AssertionError(f"chroma run exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat", timeout=1).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"chroma run did not answer: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def chroma_server_or_skip(path: Path) -> ChromaServer:
    """A server (not started yet); skips the test when the chroma CLI is not installed (only then)."""
    if not CHROMA_BINARY.exists():
        pytest.skip(f"the chroma CLI is not installed ({CHROMA_BINARY})")
    return ChromaServer(path)
