"""Run a Sekha service as a real process (`python -m router_service serve --config F`), for tests.

The service listens on port 0; its port is read from its own JSON log line
("... serving on port N"), so there is no race for a "free" port. stderr goes to a
file the test can read (`log_text()`); signals are sent with `signal()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

_SERVING = re.compile(r"serving on port (\d+)")


class ServiceProcess:
    """One service process started from a YAML config file."""

    def __init__(
        self, module: str, config: dict[str, Any] | Path, workdir: Path, name: str | None = None
    ) -> None:
        self.module = module
        self.name = name or module
        self.workdir = workdir
        if isinstance(config, Path):
            self.config_path = config
        else:
            self.config_path = workdir / f"{self.name}.yaml"
            self.write_config(config)
        self.log_path = workdir / f"{self.name}.log"
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        self.config_path.write_text(text)

    async def start(self, within_s: float = 60.0) -> ServiceProcess:
        env = {**os.environ, "SEKHA_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                "serve",
                "--config",
                str(self.config_path),
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
            )
        async with asyncio.timeout(within_s):
            while True:
                if self.process.returncode is not None:
                    code = self.process.returncode
                    raise AssertionError(f"{self.name} exited with {code}:\n{self.log_text()}")
                match = _SERVING.search(self.log_text(since_start=True))
                if match:
                    self.port = int(match.group(1))
                    return self
                await asyncio.sleep(0.05)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        return data[self._log_offset if since_start else 0 :].decode(errors="replace")

    def log_messages(self) -> list[str]:
        """The `message` of every JSON log line so far."""
        messages = []
        for line in self.log_text().splitlines():
            try:
                messages.append(str(json.loads(line).get("message", "")))
            except ValueError:
                messages.append(line)
        return messages

    async def wait_for_log(self, needle: str, within_s: float = 20.0) -> None:
        async with asyncio.timeout(within_s):
            while True:  # the log is another process's file: polling is the only way to watch it
                if any(needle in m for m in self.log_messages()):
                    return
                await asyncio.sleep(0.05)

    async def admin_reload(self) -> int:
        """`python -m <module> reload --pid PID --config FILE`, the operators' command; its exit code."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            "reload",
            "--pid",
            str(self.pid),
            "--config",
            str(self.config_path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(process.wait(), 30)  # a hang guard only

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, within_s: float | None = None) -> int:
        assert self.process is not None
        if within_s is None:
            return await self.process.wait()
        return await asyncio.wait_for(self.process.wait(), within_s)

    async def stop(self) -> None:
        """Make sure the process is gone (SIGKILL after a short SIGTERM grace)."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
