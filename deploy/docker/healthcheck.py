"""Container health check over the standard gRPC health protocol (grpc.health.v1).

Used by the images' HEALTHCHECK and by the compose health checks, because neither
`grpc_health_probe` nor curl is in the images; grpcio-health-checking is already in the
service's virtualenv. Exits 0 when the server reports SERVING and 1 otherwise, printing
one line that names the target and what went wrong.

    python healthcheck.py [TARGET] [--service NAME] [--timeout SECONDS]

TARGET defaults to $SEKHA_HEALTHCHECK_TARGET, then 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Exit 0 when a gRPC server reports SERVING.")
    parser.add_argument(
        "target",
        nargs="?",
        default=os.environ.get("SEKHA_HEALTHCHECK_TARGET", DEFAULT_TARGET),
        help="host:port of the gRPC server",
    )
    parser.add_argument("--service", default="", help="service name to check; empty means the whole server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    return parser.parse_args(argv)


def check(target: str, service: str, timeout_s: float) -> tuple[bool, str]:
    """Returns (serving, a one-line description of the outcome)."""
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s)
        except grpc.RpcError as error:
            # Only the status code: details may carry server-side text that has no place in logs.
            return False, f"{target}: health check failed with {error.code().name}"
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    return serving, f"{target}: {status_name}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    serving, description = check(args.target, args.service, args.timeout)
    print(description, file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
