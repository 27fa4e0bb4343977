"""`sekha-embedding`: serve the Embedding service, or check a config file.

    sekha-embedding [serve] [--config FILE]
    sekha-embedding check-config FILE

The config comes from --config, else $SEKHA_EMBEDDING_CONFIG, else the
embedded default (embedded Chroma under ./data, router at 127.0.0.1:50051).
"""

from __future__ import annotations

import argparse
import os
import sys

from sekha.configloader import ConfigError


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
    from sekha.server.process import serve_service

    return await serve_service(
        "embedding",
        lambda: _load(path),
        lambda config, telemetry: build_server(config, EmbeddingDeps(telemetry=telemetry)),
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config_main(args.file)
    from sekha.server.process import run

    return run(_serve(getattr(args, "serve_config", None) or args.config))


if __name__ == "__main__":
    raise SystemExit(main())
