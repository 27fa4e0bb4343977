"""The `sekha` commands that work on local files and keys: `keys hash`, `config check|migrate`, `mcp`.

`config check` runs the services' own checks (`router_service.check_config`,
`embedding_service.check_config`: each service owns its check, so `sekha config check` and
`sekha-router check-config` say the same); `config migrate` loads the services' config models
(and, for router files, LiteLLM's bundled model map). Both import the gateway only when they run,
and say what to install when it is missing: the CLI's own distribution does not depend on it.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sekha_cli.main import EXIT_OK, CliError, connection_settings
from sekha_cli.output import print_json

__all__ = ["config_check", "config_migrate", "detect_config_kind", "keys_hash", "mcp"]

# Top-level sections only the embedding service's config has.
_EMBEDDING_ONLY_KEYS = frozenset({"chroma", "state_path", "defaults", "migration", "router"})
# The packages of the `sekha-gateway` distribution (the extra `sekha-cli[admin]` installs it).
_GATEWAY_PACKAGES = frozenset({"router_service", "embedding_service", "sekha_runtime"})
GATEWAY_MISSING = (
    "`sekha config {command}` needs the gateway installed next to the CLI: "
    "pip install 'sekha-cli[admin]' (or pip install sekha-gateway)"
)


@contextlib.contextmanager
def _needs_gateway(command: str) -> Iterator[None]:
    """A missing gateway becomes one `error:` line naming what to install, not a traceback."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _GATEWAY_PACKAGES:
            raise
        raise CliError(GATEWAY_MISSING.format(command=command)) from None


def keys_hash(args: argparse.Namespace) -> int:
    from sekha.keys import generate_api_key, hash_api_key

    if args.generate:
        if args.key:
            raise CliError("give a KEY or --generate, not both")
        key = generate_api_key()
        if args.json:
            print_json({"api_key": key, "hash": hash_api_key(key)})
        else:
            print(f"api_key: {key}")
            print(f"hash:    {hash_api_key(key)}")
            print(
                "Give the key to the client (SEKHA_API_KEY); put only the hash in the server config.",
                file=sys.stderr,
            )
        return EXIT_OK
    key = args.key
    if key is None:
        key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
        key = key.rstrip("\r\n")
    if not key.strip():
        raise CliError("empty API key")
    if args.json:
        print_json({"hash": hash_api_key(key)})
    else:
        print(hash_api_key(key))
    return EXIT_OK


def detect_config_kind(path: Path) -> str | None:
    """'router' or 'embedding' from a config file's top-level keys; None when it cannot tell."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    keys = set(data)
    if "providers" in keys:
        return "router"
    if keys & _EMBEDDING_ONLY_KEYS:
        return "embedding"
    return None


def config_check(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path}: file not found")
    kind = args.kind if args.kind != "auto" else detect_config_kind(path)
    if kind is None:
        # A broken or ambiguous file: the router's loader prints YAML syntax errors with positions,
        # and a file with neither `providers` nor an embedding section is most likely a router file
        # missing its providers.
        kind = "router"
    with _needs_gateway("check"):
        if kind == "router":
            from router_service.check_config import check_config_main as check_router

            return check_router(path)
        from embedding_service.check_config import check_config_main as check_embedding

        return check_embedding(path)


def config_migrate(args: argparse.Namespace) -> int:
    from sekha_cli.config_migrate import MigrationError, migrate_file

    try:
        with _needs_gateway("migrate"):
            report = migrate_file(
                Path(args.old),
                Path(args.new),
                embedding_out=Path(args.embedding_out) if args.embedding_out else None,
                force=args.force,
                fmt=args.format,
            )
    except MigrationError as exc:
        raise CliError(str(exc)) from None
    print(report.render())
    return EXIT_OK


def mcp(args: argparse.Namespace) -> Any:
    from sekha_cli.mcp_server import run_mcp, token_hashes_for

    if not 0 <= args.port <= 65535:
        raise CliError("--port must be 0..65535")
    token_hashes = args.token_hash or [h for h in os.environ.get("SEKHA_MCP_TOKEN_HASH", "").split(",") if h]
    if args.transport == "http":
        try:
            token_hashes_for(token_hashes, args.host)  # fail here, with a one-line error, not in the server
        except ValueError as exc:
            raise CliError(str(exc)) from None
    return run_mcp(
        transport=args.transport,
        host=args.host,
        port=args.port,
        token_hashes=token_hashes,
        router=connection_settings(args, "router"),
        embedding=connection_settings(args, "embedding"),
    )
