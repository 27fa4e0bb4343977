"""`make run`: both services, stopped together.

The router serves `$SEKHA_CONFIG` when it is set (`SEKHA_CONFIG=my.yaml make run`), else its
embedded default; the embedding service its own default, pointed at that router. The router
starts first and the embedding service once the router answers its health check, since the
embedding service gets its vectors from the router. Once both serve, it prints where they
listen and how to reach the `sekha` command (the venv's, not on PATH until activated).
Ctrl-C (SIGINT) or SIGTERM stops both gracefully: each flips its health to NOT_SERVING and
drains within its grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict

from sekha_runtime.configloader import ConfigError, load_config


def _wait_serving(target: str, timeout_s: float, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                time.sleep(0.2)
    return False


class _Listener(BaseModel):
    """The part of a router config that says where it listens (the rest is the router's to check)."""

    model_config = ConfigDict(extra="ignore")
    host: str = "127.0.0.1"
    port: int = 50051


class _RouterListener(BaseModel):
    model_config = ConfigDict(extra="ignore")
    server: _Listener = _Listener()


def _router_target(env: dict[str, str]) -> str:
    """Where the router will listen, as a loopback-reachable address: `server` of $SEKHA_CONFIG
    (or of the built-in default, 127.0.0.1:50051) with the SEKHA_ROUTER__* overrides. A config
    that cannot be read is the router's to report: the default address is assumed meanwhile."""
    try:
        server = load_config(
            _RouterListener, env.get("SEKHA_CONFIG") or None, env_prefix="SEKHA_ROUTER__", environ=env
        ).server
        host, port = server.host, server.port
    except ConfigError:
        host, port = "127.0.0.1", 50051
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cli_hint() -> str:
    """How to run `sekha` from this checkout: make installed it into the venv, not on PATH."""
    bin_dir = Path(sys.executable).parent
    try:
        shown = bin_dir.relative_to(Path.cwd())
    except ValueError:
        shown = bin_dir
    return (
        f"sekha: the CLI is {shown / 'sekha'}; in another terminal run `source {shown / 'activate'}`, "
        'then `sekha chat "hello"`'
    )


def main() -> int:
    env = dict(os.environ)
    router_target = _router_target(env)
    # The embedding service calls the router wherever this run's config put it.
    env.setdefault("SEKHA_EMBEDDING__ROUTER__TARGET", router_target)
    embedding_port = env.get("SEKHA_EMBEDDING__SERVER__PORT", "50052")
    processes: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        router = subprocess.Popen([sys.executable, "-m", "router_service", "serve"], env=env)
        processes.append(router)
        if not _wait_serving(router_target, 120.0, router):
            print("router did not become SERVING", file=sys.stderr)
            return 1
        embedding = subprocess.Popen([sys.executable, "-m", "embedding_service", "serve"], env=env)
        processes.append(embedding)
        if not _wait_serving(f"127.0.0.1:{embedding_port}", 120.0, embedding):
            print("embedding service did not become SERVING", file=sys.stderr)
            return 1
        config = env.get("SEKHA_CONFIG") or "the built-in default config"
        print(
            f"sekha: router on {router_target} ({config}), embedding on 127.0.0.1:{embedding_port}; "
            "Ctrl-C stops",
            flush=True,
        )
        print(_cli_hint(), flush=True)
        while not stopping and all(p.poll() is None for p in processes):
            time.sleep(0.2)
    finally:
        # Embedding first: it may still be calling the router while it drains.
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
    return 0 if stopping else 1


if __name__ == "__main__":
    raise SystemExit(main())
