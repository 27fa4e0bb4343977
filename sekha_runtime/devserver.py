"""`make run`: both services on their embedded default configs, stopped together.

The router starts first and the embedding service once the router answers its
health check, since the embedding service gets its vectors from the router.
Ctrl-C (SIGINT) or SIGTERM stops both gracefully: each flips its health to
NOT_SERVING and drains within its grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


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


def main() -> int:
    env = dict(os.environ)
    router_port = env.get("SEKHA_ROUTER__SERVER__PORT", "50051")
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
        if not _wait_serving(f"127.0.0.1:{router_port}", 120.0, router):
            print("router did not become SERVING", file=sys.stderr)
            return 1
        embedding = subprocess.Popen([sys.executable, "-m", "embedding_service", "serve"], env=env)
        processes.append(embedding)
        if not _wait_serving(f"127.0.0.1:{embedding_port}", 120.0, embedding):
            print("embedding service did not become SERVING", file=sys.stderr)
            return 1
        print(
            f"sekha: router on 127.0.0.1:{router_port}, embedding on 127.0.0.1:{embedding_port}; Ctrl-C stops"
        )
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
