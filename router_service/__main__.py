"""`sekha-router`: serve the Router service, or check a config file.

    sekha-router [serve] [--config FILE] [--workers N]
    sekha-router check-config FILE
    sekha-router reload --pid PID [--config FILE]

The command line owns process setup (logging, event loop); `build_server`
owns wiring. The config comes from --config, else $SEKHA_CONFIG, else the
embedded default (local embedding model + Ollama).

`kill -HUP <pid>` re-reads the same config file and swaps it in without dropping
a request; an invalid file is refused (logged) and the running config keeps serving.
SIGTERM stops gracefully: health NOT_SERVING first, then in-flight calls get the
grace period.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

log = logging.getLogger("router_service")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sekha-router", description="Sekha Router service")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the Router service (default)")
    serve.add_argument("--config", dest="serve_config", help="YAML config file")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="router processes sharing the ports (default: server.workers, 1); >1 needs Redis state",
    )
    check = sub.add_parser("check-config", help="validate a config file and print every problem")
    check.add_argument("file")
    reload = sub.add_parser("reload", help="make a running router re-read its config (SIGHUP)")
    reload.add_argument("--pid", type=int, required=True, help="process id of the running router")
    reload.add_argument(
        "--config", dest="reload_config", help="check this file first; nothing is sent when it is invalid"
    )
    parser.add_argument("--config", help="YAML config file (default: $SEKHA_CONFIG or the embedded default)")
    return parser


def reload_main(pid: int, config_path: str | None) -> int:
    """The admin side of a reload: validate the new file (when given), then signal the router.

    The router validates again and keeps its running config if the file is invalid; checking
    here first tells the operator at once instead of only in the router's log.
    """
    from sekha_runtime.server.reload import send_sighup

    if config_path is not None:
        from router_service.check_config import check_config_main

        if check_config_main(config_path) != 0:
            print(f"not reloading: {config_path} is invalid", file=sys.stderr)
            return 1
    return send_sighup(pid, "router")


async def _serve(config_path: str | None) -> int:
    from router_service.config import RouterConfig
    from router_service.reload import install_sighup
    from router_service.server import RouterApp, RouterDeps, build_server
    from sekha_runtime.server.process import serve_service

    def started(app: RouterApp) -> None:
        if app.reloader is not None:
            app.reloader.path = config_path
            install_sighup(app.reloader)
        if app.metrics_port is not None:
            log.info(
                "router metrics on port %d",
                app.metrics_port,
                extra={"event": "metrics_listening", "port": app.metrics_port},
            )

    # The model loads before the server listens, so serve_service's gc.freeze() covers it too.
    return await serve_service(
        "router",
        lambda: RouterConfig.load(config_path),
        lambda config, telemetry: build_server(
            config, RouterDeps(telemetry=telemetry, preload_local_model=True)
        ),
        started,
    )


def _configured_workers(config_path: str | None) -> int | None:
    """`server.workers` as the config asks for it, read without validating (serving validates).

    A plain YAML read, not RouterConfig.load: a single-process start should not pay for loading
    the config twice.
    """
    import yaml

    from router_service.config import CONFIG_PATH_ENV

    override = os.environ.get("SEKHA_ROUTER__SERVER__WORKERS")
    if override is not None:
        return int(override) if override.strip().isdigit() else None
    path = config_path or os.environ.get(CONFIG_PATH_ENV)
    if not path:
        return None  # the embedded default runs one process
    try:
        with open(path, encoding="utf-8") as file:
            data = yaml.safe_load(file)
        workers = data["server"]["workers"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return workers if isinstance(workers, int) else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "reload":
        return reload_main(args.pid, args.reload_config)
    if args.command == "check-config":
        from router_service.check_config import check_config_main

        return check_config_main(args.file)
    # Start-up allocates a lot and frees little: the collector's passes over the growing heap
    # (about 70 ms in all) find next to nothing. serve_service collects once, freezes what is
    # left, and turns the collector back on once the server is built.
    gc.disable()
    config_path = getattr(args, "serve_config", None) or args.config
    workers = getattr(args, "workers", None)
    if workers is None and os.environ.get("SEKHA_WORKER_INDEX") is None:
        workers = _configured_workers(config_path)
    if workers is not None and workers > 1:
        from router_service.workers import supervise
        from sekha_runtime.server.logs import configure_logging, resolve_log_level

        gc.enable()  # the supervisor lives as long as its workers
        configure_logging(resolve_log_level())
        return supervise(config_path, workers)
    from sekha_runtime.server.process import run

    code = run(_serve(config_path))
    # The server has stopped and telemetry is flushed. Finalizing LiteLLM's module graph at
    # interpreter exit takes about a second and runs nothing we need, while the process must be
    # gone within the grace period plus one second: flush the logs and leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
