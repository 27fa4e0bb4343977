"""The client distribution installs alone: its wheel in a fresh venv talks to a real router.

What a team that only calls the Router gets from `pip install sekha-client`: the generated stubs,
the typed async client and its errors, on grpcio, protobuf, grpcio-status and
googleapis-common-protos alone (no LiteLLM, Chroma, Redis, OpenTelemetry SDK or MCP).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from testkit.fake_provider import FakeProvider
from testkit.harness import chat_model, openai_provider, router_config, running_router

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

# The distributions a venv holds after `pip install sekha-client`: what a new venv starts with
# (pip, setuptools), the client, its four dependencies and what grpcio itself requires.
ALLOWED = {
    "setuptools",
    "sekha-client",
    "grpcio",
    "grpcio-status",
    "protobuf",
    "googleapis-common-protos",
    "pip",
    "typing-extensions",
}

CALLER = """
import asyncio, sys
from sekha.client import ConnectionConfig, RouterClient, InvalidArgumentError, user
from sekha.router.v1 import router_service_pb2 as rt

async def main() -> None:
    async with RouterClient(ConnectionConfig(sys.argv[1])) as router:
        print("health", await router.health())
        reply = await router.chat(rt.ChatRequest(messages=[user("hello from a wheel")]))
        print("text", reply.text)
        try:
            await router.chat(rt.ChatRequest())
        except InvalidArgumentError as exc:
            print("error", exc.details.field_violations[0][0])

asyncio.run(main())

from sekha.sync import SyncRouterClient

with SyncRouterClient(ConnectionConfig(sys.argv[1])) as router:
    print("sync", router.chat(rt.ChatRequest(messages=[user("hello again")])).text)
"""


def _build_client_venv(tmp_path: Path) -> tuple[Path, set[str]]:
    """A fresh venv holding the client wheel: its python, and the distributions installed."""
    # Built from a copy: an in-place setuptools build would leave build/ in the checkout.
    source = shutil.copytree(
        REPO / "clients" / "python", tmp_path / "src", ignore=shutil.ignore_patterns("build")
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("sekha_client-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True)
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"], check=True, capture_output=True, text=True
    )
    return python, {entry["name"].lower().replace("_", "-") for entry in json.loads(listed.stdout)}


async def test_client_wheel_installs_alone_and_chats_with_a_running_router(tmp_path: Path) -> None:
    python, installed = await asyncio.to_thread(_build_client_venv, tmp_path)
    assert "sekha-client" in installed
    assert installed <= ALLOWED, f"the client pulled in {sorted(installed - ALLOWED)}"

    async with FakeProvider(text="hi from the fake") as fake:
        config = router_config([openai_provider("fake", fake.base_url, [chat_model("chatty")])])
        async with running_router(config) as (router_app, _):
            # Run from tmp_path so the checkout's own sources can never be imported instead.
            process = await asyncio.create_subprocess_exec(
                str(python),
                "-c",
                CALLER,
                f"127.0.0.1:{router_app.port}",
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    text = output.decode()
    assert process.returncode == 0, text
    assert "health SERVING" in text
    assert "text hi from the fake" in text
    assert "error messages" in text
    assert "sync hi from the fake" in text
