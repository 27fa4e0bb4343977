"""Starting each benchmark target as its own process and timing how long it takes to serve.

* the fake provider (``testkit.fake_provider``): the upstream of everything, and the
  "direct" floor when the load generator calls it itself;
* our router (``python -m router_service serve --config <generated yaml>``) with one
  ``openai_compatible`` provider at the fake's ``/v1`` (transport ``auto``: the lean path);
* the bare grpc.aio echo server (``bench.echo_server``): the ceiling of Python gRPC;
* the reference gateway (``bench.reference_server``): grpc.aio forwarding to the same fake over
  one pooled aiohttp session and nothing else, the ceiling of a Python gRPC gateway;
* the LiteLLM proxy from its own venv, configured for the same fake provider;
* the Portkey AI gateway (Node) from its own npm directory, told the fake in request headers.

Startup is measured from ``Popen`` to the first positive readiness answer (gRPC health
SERVING for gRPC servers, ``/health/liveliness`` for the proxy, ``GET /`` for Portkey,
``/v1/models`` for the fake), and separately to the first successful chat request.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import litellm_venv, portkey_gateway
from bench.loadgen import MAX_TOKENS, SYSTEM_TEXT, USER_TEXT
from bench.procs import ROOT, ManagedProcess, free_port, start_process, wait_ready
from sekha.router.v1 import router_service_pb2 as pb
from sekha.router.v1 import router_service_pb2_grpc as pb_grpc

CHAT_MODEL = "bench-chat"
EMBED_MODEL = "emb-384"
STARTUP_TIMEOUT_S = 180.0


@dataclass
class Target:
    """A target the load generator can drive, and the process whose counters are read."""

    name: str
    kind: str  # "grpc" or "http"
    address: str
    process: ManagedProcess
    api_key: str | None = None
    headers: dict[str, str] | None = None  # extra HTTP headers on every request
    startup_s: float | None = None
    first_success_s: float | None = None
    owns_process: bool = True  # False for "direct": the fake provider outlives it


def _http_ok(url: str, timeout_s: float = 1.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return bool(response.status == 200)


def _post_json(
    url: str,
    body: dict[str, Any],
    api_key: str | None,
    timeout_s: float = 30.0,
    extra_headers: dict[str, str] | None = None,
) -> Any:
    headers = {"Content-Type": "application/json", **(extra_headers or {})}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def _grpc_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1.0
        )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def grpc_chat(port: int) -> None:
    """One unary Chat over a new channel; raises unless the answer has text."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = pb.ChatRequest(
            messages=[
                pb.ChatMessage(role=pb.ROLE_SYSTEM, parts=[pb.ContentPart(text=SYSTEM_TEXT)]),
                pb.ChatMessage(role=pb.ROLE_USER, parts=[pb.ContentPart(text=USER_TEXT)]),
            ],
            generation=pb.GenerationConfig(max_tokens=MAX_TOKENS),
        )
        reply = pb_grpc.RouterServiceStub(channel).Chat(request, timeout=30.0)
        if not reply.text:
            raise RuntimeError("empty reply")


def http_chat(base_url: str, api_key: str | None, headers: dict[str, str] | None = None) -> None:
    """One OpenAI chat completion over a new connection; raises unless the answer has text."""
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "system", "content": SYSTEM_TEXT}, {"role": "user", "content": USER_TEXT}],
        "max_tokens": MAX_TOKENS,
    }
    reply = _post_json(f"{base_url}/chat/completions", body, api_key, extra_headers=headers)
    if not reply["choices"][0]["message"]["content"]:
        raise RuntimeError("empty reply")


def _first_success(process: ManagedProcess, attempt: Callable[[], None], timeout_s: float) -> float:
    deadline = time.perf_counter() + timeout_s
    last: Exception | None = None
    while time.perf_counter() < deadline:
        try:
            attempt()
            return time.perf_counter() - process.started_at
        except Exception as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(
        f"{process.name}: no successful request within {timeout_s:.0f}s ({type(last).__name__})"
    )


def start_fake(work_dir: Path, latency_ms: float) -> tuple[ManagedProcess, str]:
    """The fake provider; returns the process and its base URL (without /v1)."""
    port = free_port()
    process = start_process(
        "fake_provider",
        [
            sys.executable,
            "-m",
            "testkit.fake_provider",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
        ],
        work_dir,
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_ready(process, lambda: _http_ok(f"{base_url}/v1/models"), STARTUP_TIMEOUT_S)
    return process, base_url


def direct_target(fake: ManagedProcess, fake_base_url: str) -> Target:
    return Target(
        name="direct",
        kind="http",
        address=f"{fake_base_url}/v1",
        process=fake,
        startup_s=fake.ready_s,
        owns_process=False,
    )


def router_config(port: int, providers: list[dict[str, Any]]) -> dict[str, Any]:
    """A router config on ``port`` with the given providers and production defaults otherwise."""
    return {
        "server": {"host": "127.0.0.1", "port": port, "grace_period_s": 1, "max_concurrent_rpcs": 1024},
        "providers": providers,
    }


def fake_provider_entry(fake_base_url: str) -> dict[str, Any]:
    """The fake as an ``openai_compatible`` provider (transport auto: the lean HTTP path)."""
    return {
        "id": "fake",
        "type": "openai_compatible",
        "base_url": f"{fake_base_url}/v1",
        "api_key": "sk-fake",
        "models": [
            {
                "id": CHAT_MODEL,
                "tasks": ["chat_small", "chat_smart"],
                "context_window": 8192,
                "price": {"input_per_million": 1.0, "output_per_million": 2.0},
            },
            {
                "id": EMBED_MODEL,
                "tasks": ["embedding"],
                "embedding_dimension": 384,
                "price": {"input_per_million": 0.02, "output_per_million": 0},
            },
        ],
    }


def router_launch(
    work_dir: Path, config: dict[str, Any], name: str = "router", source: Path | None = None
) -> tuple[list[str], dict[str, str], Path]:
    """Write ``config`` to ``<work_dir>/<name>.yaml``; the router's argv, extra env and cwd."""
    config_path = work_dir / f"{name}.yaml"
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    if source is not None:
        env["PYTHONPATH"] = f"{source}{os.pathsep}{source / 'clients' / 'python'}"
    argv = [sys.executable, "-m", "router_service", "serve", "--config", str(config_path)]
    return argv, env, source or ROOT


def start_router(
    work_dir: Path,
    config: dict[str, Any],
    name: str = "router",
    check_chat: bool = True,
    source: Path | None = None,
) -> Target:
    """``python -m router_service serve --config <yaml>``; JSON is valid YAML, so the file is JSON.

    ``source`` runs the router from another checkout of this repository (A/B of a patch): its
    ``router_service`` and ``clients/python`` come first on the import path.
    """
    port = int(config["server"]["port"])
    argv, env, cwd = router_launch(work_dir, config, name, source)
    process = start_process(name, argv, work_dir, env=env, cwd=cwd)
    target = Target(name=name, kind="grpc", address=f"127.0.0.1:{port}", process=process)
    target.startup_s = wait_ready(process, lambda: _grpc_serving(port), STARTUP_TIMEOUT_S)
    if check_chat:
        target.first_success_s = _first_success(process, lambda: grpc_chat(port), STARTUP_TIMEOUT_S)
    return target


def start_router_http(work_dir: Path, fake_base_url: str, source: Path | None = None) -> Target:
    """The same router, driven through its OpenAI-compatible HTTP door (server.http_port)."""
    port, http_port = free_port(), free_port()
    config = router_config(port, [fake_provider_entry(fake_base_url)])
    config["server"]["http_port"] = http_port
    argv, env, cwd = router_launch(work_dir, config, "router_http", source)
    process = start_process("router_http", argv, work_dir, env=env, cwd=cwd)
    target = Target(
        name="router_http",
        kind="http",
        address=f"http://127.0.0.1:{http_port}/v1",
        process=process,
        api_key="unused",
    )
    target.startup_s = wait_ready(process, lambda: _grpc_serving(port), STARTUP_TIMEOUT_S)
    target.first_success_s = _first_success(
        process, lambda: http_chat(target.address, "unused"), STARTUP_TIMEOUT_S
    )
    return target


def reference_argv(port: int, fake_base_url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.reference_server",
        "--port",
        str(port),
        "--upstream",
        f"{fake_base_url}/v1",
        "--api-key",
        "sk-fake",
        "--chat-model",
        CHAT_MODEL,
        "--embed-model",
        EMBED_MODEL,
    ]


def start_reference(work_dir: Path, fake_base_url: str) -> Target:
    """The minimal grpc.aio gateway in front of the same fake (``bench.reference_server``)."""
    port = free_port()
    process = start_process("reference", reference_argv(port, fake_base_url), work_dir)
    target = Target(name="reference", kind="grpc", address=f"127.0.0.1:{port}", process=process)
    target.startup_s = wait_ready(process, lambda: _grpc_serving(port), STARTUP_TIMEOUT_S)
    target.first_success_s = _first_success(process, lambda: grpc_chat(port), STARTUP_TIMEOUT_S)
    return target


def portkey_serving(port: int) -> bool:
    """Portkey's root route answers 200 once its HTTP server listens."""
    return _http_ok(f"http://127.0.0.1:{port}/")


def start_portkey(work_dir: Path, install: portkey_gateway.PortkeyInstall, fake_base_url: str) -> Target:
    """The Portkey gateway (Node, headless) on a free port; requests name the fake in headers."""
    port = free_port()
    process = start_process("portkey", install.command(port), work_dir, cwd=install.directory)
    headers = portkey_gateway.request_headers(fake_base_url)
    target = Target(
        name="portkey",
        kind="http",
        address=f"http://127.0.0.1:{port}/v1",
        process=process,
        api_key="sk-fake",  # forwarded to the provider as its bearer token
        headers=headers,
    )
    target.startup_s = wait_ready(process, lambda: portkey_serving(port), STARTUP_TIMEOUT_S)
    target.first_success_s = _first_success(
        process, lambda: http_chat(target.address, "sk-fake", headers), STARTUP_TIMEOUT_S
    )
    return target


def start_echo(work_dir: Path) -> Target:
    port = free_port()
    process = start_process(
        "echo_server", [sys.executable, "-m", "bench.echo_server", "--port", str(port)], work_dir
    )
    target = Target(name="echo", kind="grpc", address=f"127.0.0.1:{port}", process=process)
    target.startup_s = wait_ready(process, lambda: _grpc_serving(port), STARTUP_TIMEOUT_S)
    target.first_success_s = _first_success(process, lambda: grpc_chat(port), STARTUP_TIMEOUT_S)
    return target


def start_proxy(work_dir: Path, install: litellm_venv.LitellmInstall, fake_base_url: str) -> Target:
    """The LiteLLM proxy (its default logging, one uvicorn worker by its default), master key set."""
    port = free_port()
    config_path = work_dir / "litellm_proxy.yaml"
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        json.dumps(litellm_venv.proxy_config(fake_base_url, CHAT_MODEL, EMBED_MODEL), indent=2),
        encoding="utf-8",
    )
    process = start_process(
        "litellm_proxy",
        [
            str(install.proxy_command),
            "--config",
            str(config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        work_dir,
        env=litellm_venv.proxy_env(),
        cwd=work_dir,  # the proxy reads a .env from its working directory: give it an empty one
        replace_env=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    target = Target(
        name="litellm_proxy",
        kind="http",
        address=f"{base_url}/v1",
        process=process,
        api_key=litellm_venv.MASTER_KEY,
    )
    target.startup_s = wait_ready(
        process, lambda: _http_ok(f"{base_url}/health/liveliness"), STARTUP_TIMEOUT_S
    )
    target.first_success_s = _first_success(
        process, lambda: http_chat(target.address, litellm_venv.MASTER_KEY), STARTUP_TIMEOUT_S
    )
    return target


def first_success_direct(target: Target) -> None:
    target.first_success_s = _first_success(target.process, lambda: http_chat(target.address, None), 30.0)
