"""The Go client, generated from the same protos and compiled here, against a running router.

The Go test binary (clients/go/sekhaclient) is built before any service starts, then run
against a router on 127.0.0.1:0 with auth on and the fake provider behind it: health, Chat,
StreamChat, and errors whose google.rpc details are decoded in Go.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

import pytest

from testkit.fake_provider import FakeProvider
from testkit.harness import chat_model, openai_provider, router_config, running_router
from tests.go_tools import GO_DIR, run_go

API_KEY = "sk-sekha-go-client-test"
PACKAGE = GO_DIR / "sekhaclient"

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.subprocess]


def _go_test_names() -> set[str]:
    """Every Test function in the package, so a test that silently does not run is caught."""
    names: set[str] = set()
    for source in PACKAGE.glob("*_test.go"):
        names.update(re.findall(r"^func (Test\w+)\(t \*testing\.T\)", source.read_text(), re.MULTILINE))
    return names


def _build_go_programs(out_dir: Path) -> tuple[Path, Path]:
    """The test binary and the sekha-chat command; vet first compiles and checks every package."""
    run_go(["vet", "./..."])
    tests, chat = out_dir / "sekhaclient.test", out_dir / "sekha-chat"
    run_go(["test", "-c", "-o", str(tests), "./sekhaclient"])
    run_go(["build", "-o", str(chat), "./cmd/sekha-chat"])
    return tests, chat


async def _run(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    # asyncio subprocess: the router keeps serving on this loop while the Go program runs.
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode is not None
    return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


# A cold Go build cache compiles grpc-go and protobuf-go from source first (about 30 s on
# two cores); later runs reuse the cache.
@pytest.mark.timeout(600)
async def test_go_client_suite_passes_against_a_running_router(tmp_path: Path) -> None:
    tests_binary, chat_binary = _build_go_programs(tmp_path)
    expected = _go_test_names()
    assert len(expected) >= 8, expected
    key_hash = "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()
    async with FakeProvider() as fake:
        config = router_config(
            [openai_provider("fake", fake.base_url, [chat_model("chatty")])],
            auth={"enabled": True, "keys": [{"id": "go-client", "hash": key_hash}]},
        )
        async with running_router(config) as (router_app, _):
            env = {
                **os.environ,
                "SEKHA_ROUTER_TARGET": f"127.0.0.1:{router_app.port}",
                "SEKHA_API_KEY": API_KEY,
                "SEKHA_PROVIDER_ID": "fake",
                "SEKHA_CHAT_MODEL": "chatty",
            }
            code, output, errors = await _run(
                str(tests_binary), "-test.v", "-test.count=1", "-test.timeout=120s", env=env, cwd=PACKAGE
            )
            chat_args = ["-target", env["SEKHA_ROUTER_TARGET"], "-api-key", API_KEY, "Stream to Go."]
            chat = await _run(str(chat_binary), *chat_args, env=env, cwd=tmp_path)
        # The fake saw the Go client's chat and stream, so the answers came through it.
        prompts = [str(r.json) for r in fake.requests if r.path.endswith("/chat/completions")]
    text = output + errors
    assert code == 0, text
    passed = set(re.findall(r"^--- PASS: (Test\w+)", text, re.MULTILINE))
    assert passed == expected, f"did not pass: {sorted(expected - passed)}\n{text}"
    assert "--- SKIP" not in text and "--- FAIL" not in text, text
    assert any("Say hello from Go." in p for p in prompts), prompts
    assert any("Tell a short story in Go." in p for p in prompts), prompts
    # The command-line example streamed its reply to stdout and named the model on stderr.
    assert chat == (0, "echo: Stream to Go.\n", "[fake/chatty, 3+4 tokens]\n"), chat
