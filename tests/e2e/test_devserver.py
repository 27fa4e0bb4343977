"""`make run` (`python -m sekha_runtime.devserver`) as a first-time user meets it.

It serves the config named by SEKHA_CONFIG (`SEKHA_CONFIG=my.yaml make run`, as the README
shows), says where both services listen, and says how to reach the `sekha` command, which
`make` installs into the venv rather than onto PATH. The chat provider is the fake on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import yaml

from testkit.fake_provider import FakeProvider

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _line_with(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> str:
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError(f"devserver ended without printing {needle!r}: {seen}")
        line = raw.decode().rstrip("\n")
        seen.append(line)
        if needle in line:
            return line


async def test_make_run_serves_sekha_config_and_says_how_to_reach_the_cli(tmp_path: Path) -> None:
    router_port, embedding_port = free_port(), free_port()
    async with FakeProvider(text="hello from my own server") as fake:
        config = tmp_path / "my.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "server": {"port": router_port},
                    "providers": [
                        {
                            "id": "myserver",
                            "type": "openai_compatible",
                            "base_url": f"{fake.base_url}/v1",
                            "models": [{"id": "my-model", "tasks": ["chat_small", "chat_smart"]}],
                        }
                    ],
                }
            )
        )
        env = {
            **os.environ,
            "SEKHA_CONFIG": str(config),
            "SEKHA_EMBEDDING__SERVER__PORT": str(embedding_port),
        }
        devserver = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sekha_runtime.devserver",
            env=env,
            cwd=tmp_path,  # the embedding service keeps its state under ./data
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert devserver.stdout is not None
            seen: list[str] = []
            async with asyncio.timeout(180):  # a hang guard: two services start
                serving = await _line_with(devserver.stdout, "router on", seen)
                hint = await _line_with(devserver.stdout, "the CLI is", seen)
            assert f"127.0.0.1:{router_port}" in serving and "my.yaml" in serving
            assert f"127.0.0.1:{embedding_port}" in serving
            sekha = Path(sys.executable).parent / "sekha"
            assert "sekha" in hint and f"source {Path(sys.executable).parent / 'activate'}" in hint
            assert sekha.exists()  # the command the hint names is there

            chat = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sekha_cli",
                "chat",
                "hi",
                "--no-stream",
                env={**os.environ, "SEKHA_ROUTER_TARGET": f"127.0.0.1:{router_port}"},
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(chat.communicate(), 60)
            assert chat.returncode == 0, err.decode()
            assert out.decode().strip() == "hello from my own server"  # my.yaml's provider answered
            assert "myserver/my-model" in err.decode()
        finally:
            if devserver.returncode is None:
                devserver.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(devserver.wait(), 60)
        assert code == 0


@pytest.fixture(autouse=True)
def _no_stray_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test sets SEKHA_CONFIG for the devserver only; an outer one must not leak into the CLI.
    monkeypatch.delenv("SEKHA_CONFIG", raising=False)
