"""`sekha-embedding`: serve the Embedding service, or check a config file.

    sekha-embedding [serve] [--config FILE]
    sekha-embedding check-config FILE

The config comes from --config, else $SEKHA_EMBEDDING_CONFIG, else the
embedded default (embedded Chroma under ./data, router at 127.0.0.1:50051).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from sekha.configloader import ConfigError
from sekha.server.logs import configure_logging, resolve_log_level


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sekha-embedding", description="Sekha Embedding service")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the Embedding service (default)")
    serve.add_argument("--config", dest="serve_config")
    check = sub.add_parser("check-config", help="validate a config file and print every problem")
    check.add_argument("file")
    parser.add_argument("--config", help="YAML config file")
    return parser


def _load(path: str | None):  # type: ignore[no-untyped-def]
    from embedding_service.config import EmbeddingConfig

    return EmbeddingConfig.load(path or os.environ.get("SEKHA_EMBEDDING_CONFIG"))


def check_config_main(path: str) -> int:
    try:
        _load(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    print(f"{path}: OK")
    return 0


async def _serve(path: str | None) -> int:
    from embedding_service.server import EmbeddingDeps, build_server
    from sekha.server.lifecycle import serve_until_signalled
    from sekha.telemetry import setup_telemetry

    try:
        config = _load(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"config error: {line}", file=sys.stderr)
        return 2
    configure_logging(resolve_log_level(config.telemetry.log_level))
    # The process owns its telemetry: exporters from OTEL_* / telemetry.*, Prometheus when a
    # metrics port is configured (build_server serves it), flushed on the way out.
    telemetry = setup_telemetry(
        "sekha-embedding", config.telemetry, prometheus=config.server.metrics_port is not None
    )
    telemetry.set_global()
    try:
        try:
            app = await build_server(config, EmbeddingDeps(telemetry=telemetry))
        except ConfigError as exc:  # found while wiring, e.g. an unreadable TLS certificate
            for line in exc.errors:
                print(f"config error: {line}", file=sys.stderr)
            return 2
        await serve_until_signalled(app.serving, "embedding")
    finally:
        telemetry.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config_main(args.file)
    configure_logging(resolve_log_level())  # until the config is read; it may name another level
    path = getattr(args, "serve_config", None) or args.config
    try:
        import uvloop

        return uvloop.run(_serve(path))
    except ImportError:
        return asyncio.run(_serve(path))


if __name__ == "__main__":
    raise SystemExit(main())
