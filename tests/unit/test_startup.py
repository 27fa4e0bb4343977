"""What the router's start-up leaves out, and the faster tokenizer load it relies on.

Start-up time is measured in bench/ (bench.startup); these tests pin what makes it short:
the modules a default router never uses stay unimported, and the encoding built by
`router_service.tokens.load_encoding` is exactly tiktoken's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from router_service import tokens

ROOT = Path(__file__).resolve().parents[2]

# Imported only by the features that need them: response_format schemas, metrics and OTLP
# export, the HTTP door, the LiteLLM transport, a local embedding model.
NOT_AT_START = (
    "jsonschema",
    "referencing",
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "prometheus_client",
    "aiohttp.web",
    "router_service.http",
    "litellm",
    "torch",
    "sentence_transformers",
)

_PROBE = """
import json, sys
import router_service.__main__
import router_service.server
from router_service.config import RouterConfig
from sekha_runtime.telemetry import setup_telemetry

config = RouterConfig.load(None)
setup_telemetry("sekha-router", config.telemetry, prometheus=False, environ={})
print(json.dumps(sorted(sys.modules)))
"""


def test_a_default_router_does_not_import_what_it_does_not_use() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEKHA_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "clients" / "python"), env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = json.loads(done.stdout)
    unexpected = sorted(m for m in loaded if m.startswith(NOT_AT_START))
    assert unexpected == []


@pytest.fixture
def bundled_encodings(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken reads LiteLLM's bundled files (never the network); the variable is restored after."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", os.environ.get("TIKTOKEN_CACHE_DIR", "unset"))
    tokens._use_bundled_tiktoken_files()


@pytest.mark.parametrize("name", sorted(set(tokens.TiktokenCounter.ENCODINGS.values())))
@pytest.mark.usefixtures("bundled_encodings")
def test_the_fast_rank_reader_builds_tiktokens_own_encoding_arguments(name: str) -> None:
    from tiktoken_ext import openai_public

    assert tokens._encoding_arguments(name) == openai_public.ENCODING_CONSTRUCTORS[name]()


@pytest.mark.usefixtures("bundled_encodings")
def test_load_encoding_builds_once_for_concurrent_callers_and_shares_tiktokens_registry() -> None:
    import tiktoken

    name = tokens.TiktokenCounter.ENCODINGS["gpt-4o"]
    results: list[object] = []
    callers = [threading.Thread(target=lambda: results.append(tokens.load_encoding(name))) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    encoding = tokens.load_encoding(name)
    assert all(result is encoding for result in results)
    assert tiktoken.get_encoding(name) is encoding
    assert encoding.encode_ordinary("hello world") == [24912, 2375]  # o200k_base's ids
