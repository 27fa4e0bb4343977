"""`sekha-router`: serve the Router service, or check a config file.

    sekha-router [serve] [--config FILE]
    sekha-router check-config FILE

The command line owns process setup (logging, event loop); `build_server`
owns wiring. The config comes from --config, else $SEKHA_CONFIG, else the
embedded default (local embedding model + Ollama).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from sekha.configloader import ConfigError
from sekha.server.logs import configure_logging

log = logging.getLogger("router_service")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sekha-router", description="Sekha Router service")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the Router service (default)")
    serve.add_argument("--config", dest="serve_config", help="YAML config file")
    check = sub.add_parser("check-config", help="validate a config file and print every problem")
    check.add_argument("file")
    parser.add_argument("--config", help="YAML config file (default: $SEKHA_CONFIG or the embedded default)")
    return parser


async def _serve(config_path: str | None) -> int:
    from router_service.config import RouterConfig
    from router_service.server import build_server
    from sekha.server.lifecycle import serve_until_signalled

    try:
        config = RouterConfig.load(config_path)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"config error: {line}", file=sys.stderr)
        return 2
    app = await build_server(config)
    await serve_until_signalled(app.serving, "router")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        from router_service.check_config import check_config_main

        return check_config_main(args.file)
    configure_logging(os.environ.get("SEKHA_LOG_LEVEL", "INFO"))
    path = getattr(args, "serve_config", None) or args.config
    try:
        import uvloop

        return uvloop.run(_serve(path))
    except ImportError:
        return asyncio.run(_serve(path))


if __name__ == "__main__":
    raise SystemExit(main())
