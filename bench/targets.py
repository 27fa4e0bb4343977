"""Starting each benchmark target as its own process and timing how long it takes to serve.

* the fake provider (``testkit.fake_provider``): the upstream of everything, and the
  "direct" floor when the load generator calls it itself;
* our router (``python -m router_service serve --config <generated yaml>``) with one
  ``openai_compatible`` provider at the fake's ``/v1`` (transport ``auto``: the lean path), in
  the shipped default state backend (SQLite) with a daily budget and a per-caller rate limit, so
  every request reserves and settles spend and books the limiter as in production; and its
  variants (``ROUTER_VARIANTS``), each differing from the router it is compared with in one
  setting: memory state, telemetry on (Prometheus metrics and 10% of traces over OTLP to a
  loopback collector), Redis state, two worker processes;
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
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import litellm_venv, portkey_gateway
from bench.loadgen import MAX_TOKENS, SYSTEM_TEXT, USER_TEXT
from bench.procs import ROOT, ManagedProcess, free_port, start_process, stop_all, tcp_open, wait_ready
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
    channels: int = 1  # gRPC connections the load generator spreads its calls over
    workers: int = 1  # router processes sharing the port
    # Processes the target needs and that count towards its CPU (a router's own redis-server).
    companions: list[ManagedProcess] = field(default_factory=list)


@dataclass(frozen=True)
class RouterVariant:
    """How one router target is configured; see ``ROUTER_VARIANTS``."""

    state: str = "sqlite"  # memory | sqlite | redis
    telemetry: bool = False  # Prometheus metrics + OTLP traces sampled at TRACE_SAMPLE_RATIO
    workers: int = 1
    channels: int = 1


# Each variant differs in exactly one setting from the target its ratio is taken against
# (``bench.compare.VARIANT_COMPARISONS``). The Redis pair uses several connections because
# worker processes sharing a port with SO_REUSEPORT receive whole connections, never calls.
ROUTER_VARIANTS: dict[str, RouterVariant] = {
    "router": RouterVariant(),
    "router_memory": RouterVariant(state="memory"),
    "router_telemetry": RouterVariant(telemetry=True),
    "router_redis": RouterVariant(state="redis", channels=8),
    "router_workers2": RouterVariant(state="redis", workers=2, channels=8),
}
TRACE_SAMPLE_RATIO = "0.1"
# Limits that never bite in a benchmark but make every request do the bookkeeping.
DAILY_BUDGET_USD = 1_000_000
REQUESTS_PER_MINUTE = 10_000_000


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


def with_state(
    config: dict[str, Any], backend: str, work_dir: Path, name: str, redis_url: str | None = None
) -> dict[str, Any]:
    """``config`` with a state backend, a daily budget and a per-caller rate limit (as production)."""
    state: dict[str, Any] = {"backend": backend}
    if backend == "sqlite":
        state["sqlite_path"] = str(work_dir / f"{name}-state.sqlite3")
    elif backend == "redis":
        state["redis_url"] = redis_url
        state["key_prefix"] = f"bench-{name}"
    return {
        **config,
        "state": state,
        "budgets": {"default_caller": {"daily_usd": DAILY_BUDGET_USD}},
        "rate_limits": {"default_caller": {"requests_per_minute": REQUESTS_PER_MINUTE}},
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


def _router_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without OTEL_* (a router without telemetry must have none)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    env.update(extra)
    return env


def _serving_lines(process: ManagedProcess) -> int:
    try:
        return process.log_path.read_text(errors="replace").count(" serving on port ")
    except OSError:
        return 0


def start_router(
    work_dir: Path,
    config: dict[str, Any],
    name: str = "router",
    check_chat: bool = True,
    source: Path | None = None,
    env: dict[str, str] | None = None,
    workers: int = 1,
) -> Target:
    """``python -m router_service serve --config <yaml>``; JSON is valid YAML, so the file is JSON.

    ``source`` runs the router from another checkout of this repository (A/B of a patch): its
    ``router_service`` and ``clients/python`` come first on the import path. With ``workers``
    > 1 it is ready once every worker has logged that it serves: a worker that binds the shared
    port late would get none of the connections the load generator opened before.
    """
    port = int(config["server"]["port"])
    argv, launch_env, cwd = router_launch(work_dir, config, name, source)
    process = start_process(
        name,
        argv,
        work_dir,
        env=_router_environment({**launch_env, **(env or {})}),
        cwd=cwd,
        replace_env=True,
    )
    target = Target(name=name, kind="grpc", address=f"127.0.0.1:{port}", process=process)
    target.startup_s = wait_ready(
        process, lambda: _grpc_serving(port) and _serving_lines(process) >= workers, STARTUP_TIMEOUT_S
    )
    if check_chat:
        target.first_success_s = _first_success(process, lambda: grpc_chat(port), STARTUP_TIMEOUT_S)
    return target


def start_redis(work_dir: Path, name: str) -> tuple[ManagedProcess, str]:
    """A redis-server of the target's own on a free loopback port, no persistence; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = start_process(name, argv, work_dir, cwd=work_dir)
    wait_ready(process, lambda: tcp_open(port), STARTUP_TIMEOUT_S)
    return process, f"redis://127.0.0.1:{port}/0"


def start_router_variant(
    name: str,
    work_dir: Path,
    fake_base_url: str,
    collector_port: int | None = None,
    source: Path | None = None,
) -> Target:
    """The router target ``name`` of ``ROUTER_VARIANTS`` (its redis-server too, when it needs one).

    Telemetry as production turns it on: ``server.metrics_port`` (Prometheus) and
    ``telemetry.otlp_endpoint`` (traces, OTLP metrics and logs to the collector on
    ``collector_port``), with the SDK's standard sampler variables asking for 10% of traces.
    """
    variant = ROUTER_VARIANTS[name]
    companions: list[ManagedProcess] = []
    redis_url = None
    if variant.state == "redis":
        redis, redis_url = start_redis(work_dir, f"{name}_redis")
        companions.append(redis)
    try:
        config = with_state(
            router_config(free_port(), [fake_provider_entry(fake_base_url)]),
            variant.state,
            work_dir,
            name,
            redis_url,
        )
        env: dict[str, str] = {}
        if variant.workers > 1:
            config["server"]["workers"] = variant.workers
        if variant.telemetry:
            if collector_port is None:
                raise RuntimeError("no OTLP collector")
            config["server"]["metrics_port"] = free_port()
            config["telemetry"] = {"otlp_endpoint": f"http://127.0.0.1:{collector_port}"}
            env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            env["OTEL_TRACES_SAMPLER_ARG"] = TRACE_SAMPLE_RATIO
        target = start_router(work_dir, config, name, source=source, env=env, workers=variant.workers)
    except BaseException:
        stop_all(companions)
        raise
    target.channels = variant.channels
    target.workers = variant.workers
    target.companions = companions
    if variant.telemetry:
        metrics = f"http://127.0.0.1:{config['server']['metrics_port']}/metrics"
        if not _http_ok(metrics):
            raise RuntimeError(f"{name}: no Prometheus metrics at {metrics}")
    return target


def start_router_http(work_dir: Path, fake_base_url: str, source: Path | None = None) -> Target:
    """The router target's config, driven through its OpenAI-compatible HTTP door (server.http_port)."""
    port, http_port = free_port(), free_port()
    config = with_state(
        router_config(port, [fake_provider_entry(fake_base_url)]), "sqlite", work_dir, "router_http"
    )
    config["server"]["http_port"] = http_port
    argv, env, cwd = router_launch(work_dir, config, "router_http", source)
    process = start_process(
        "router_http", argv, work_dir, env=_router_environment(env), cwd=cwd, replace_env=True
    )
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
