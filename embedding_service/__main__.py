"""`sekha-embedding`: serve the Embedding service, or check a config file.

    sekha-embedding [serve] [--config FILE]
    sekha-embedding check-config FILE
    sekha-embedding reload --pid PID [--config FILE]

The config comes from --config, else $SEKHA_EMBEDDING_CONFIG, else the
embedded default (embedded Chroma under ./data, router at 127.0.0.1:50051).

`kill -HUP <pid>` re-reads the same config file and applies it without dropping a
request (keys, router connection, defaults; `embedding_service.reload`); an invalid
file, or one that changes what needs a restart, is refused (logged) and the running
config keeps serving.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("embedding_service")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sekha-embedding", description="Sekha Embedding service")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the Embedding service (default)")
    serve.add_argument("--config", dest="serve_config")
    check = sub.add_parser("check-config", help="validate a config file and print every problem")
    check.add_argument("file")
    reload = sub.add_parser("reload", help="make a running embedding service re-read its config (SIGHUP)")
    reload.add_argument("--pid", type=int, required=True, help="process id of the running service")
    reload.add_argument(
        "--config", dest="reload_config", help="check this file first; nothing is sent when it is invalid"
    )
    parser.add_argument("--config", help="YAML config file")
    return parser


def _path(path: str | None) -> str | None:
    return path or os.environ.get("SEKHA_EMBEDDING_CONFIG")


def _load(path: str | None):  # type: ignore[no-untyped-def]
    from embedding_service.config import EmbeddingConfig

    return EmbeddingConfig.load(_path(path))


def reload_main(pid: int, config_path: str | None) -> int:
    """The admin side of a reload: validate the new file (when given), then signal the service.

    The service validates again, and also refuses changes that need a restart, keeping its running
    config; checking here first tells the operator about an invalid file at once.
    """
    from embedding_service.check_config import check_config_main
    from sekha_runtime.server.reload import send_sighup

    if config_path is not None and check_config_main(config_path) != 0:
        print(f"not reloading: {config_path} is invalid", file=sys.stderr)
        return 1
    return send_sighup(pid, "embedding service")


async def _serve(path: str | None) -> int:
    from embedding_service.reload import install_sighup
    from embedding_service.server import EmbeddingApp, EmbeddingDeps, build_server
    from sekha_runtime.server.process import serve_service

    def started(app: EmbeddingApp) -> None:
        if app.reloader is not None:
            app.reloader.path = _path(path)  # a reload re-reads the file the service started from
            install_sighup(app.reloader)
        if app.metrics_port is not None:
            log.info(
                "embedding metrics on port %d",
                app.metrics_port,
                extra={"event": "metrics_listening", "port": app.metrics_port},
            )

    return await serve_service(
        "embedding",
        lambda: _load(path),
        lambda config, telemetry: build_server(config, EmbeddingDeps(telemetry=telemetry)),
        started,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "reload":
        return reload_main(args.pid, args.reload_config)
    if args.command == "check-config":
        from embedding_service.check_config import check_config_main

        return check_config_main(args.file)
    from sekha_runtime.server.process import run

    return run(_serve(getattr(args, "serve_config", None) or args.config))


if __name__ == "__main__":
    raise SystemExit(main())
