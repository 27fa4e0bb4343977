"""`sekha`: the command line of the Sekha gateway, over the typed gRPC client.

Commands::

    sekha chat "PROMPT"            stream a chat answer; provider, model, tokens and cost on stderr
      --json-schema FILE           print the answer's JSON only when it conforms to the schema
      --tools FILE                 offer tools; print the calls the model makes
    sekha route                    the routing decision for a request, without calling a provider
    sekha models                   every configured model (all pages)
    sekha status                   provider states, breakers, spend
    sekha embed upsert|search|collections|migrate|export|import|adopt
    sekha keys hash [KEY]          the hash of an API key for the servers' config (--generate: a new key)
    sekha config check FILE        validate a router or embedding config file
    sekha config migrate OLD NEW   convert v1 settings (.env / TOML) to a v2 router YAML
    sekha mcp                      an MCP server (stdio or streamable HTTP) with the gateway's tools

Connection flags (before or after the command): ``--router`` (env ``SEKHA_ROUTER_TARGET``, default
127.0.0.1:50051), ``--embedding`` (``SEKHA_EMBEDDING_TARGET``, 127.0.0.1:50052), ``--api-key``
(``SEKHA_API_KEY``), ``--tls``, ``--ca-cert``, ``--client-cert``, ``--client-key``, ``--timeout``.

Exit codes (one per kind of failure, so scripts can branch on them):

    0  ok
    1  usage or configuration error (bad flags, unreadable file, invalid config)
    2  INVALID_ARGUMENT / OUT_OF_RANGE: the server refused the request's content
    3  NOT_FOUND: model, collection or migration unknown
    4  FAILED_PRECONDITION / ALREADY_EXISTS / ABORTED: no model fits, cost limit, dimension clash
    5  RESOURCE_EXHAUSTED: budget used up or server at its limit
    6  UNAUTHENTICATED / PERMISSION_DENIED: missing, wrong or insufficient API key
    7  UNAVAILABLE: service down or every provider failed
    8  DEADLINE_EXCEEDED: --timeout passed
    9  anything else (INTERNAL, UNIMPLEMENTED, a failed migration, an unexpected error)
  130  interrupted (Ctrl-C)

Expected failures print one line on stderr (``error: UNAVAILABLE: ... (retry after 2.0s)``), never a
traceback. Heavy modules (grpc, the services, LiteLLM, the MCP SDK) are imported only by the
command that needs them, so ``sekha --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["EXIT_CODES", "CliError", "build_parser", "main"]

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_OTHER = 9
EXIT_INTERRUPTED = 130

# gRPC status name -> exit code (see the table in the module docstring).
EXIT_CODES: dict[str, int] = {
    "INVALID_ARGUMENT": 2,
    "OUT_OF_RANGE": 2,
    "NOT_FOUND": 3,
    "FAILED_PRECONDITION": 4,
    "ALREADY_EXISTS": 4,
    "ABORTED": 4,
    "RESOURCE_EXHAUSTED": 5,
    "UNAUTHENTICATED": 6,
    "PERMISSION_DENIED": 6,
    "UNAVAILABLE": 7,
    "DEADLINE_EXCEEDED": 8,
}

DEFAULT_ROUTER_TARGET = "127.0.0.1:50051"
DEFAULT_EMBEDDING_TARGET = "127.0.0.1:50052"
TASKS = ("embedding", "chat_small", "chat_smart", "chat_large", "vision", "audio")
CAPABILITIES = ("vision", "audio", "tools")


class CliError(Exception):
    """An expected failure: printed as one `error:` line, exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit with 1 (argparse's own 2 would read as INVALID_ARGUMENT)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"error: {message}\n")


def _connection_flags() -> _Parser:
    # SUPPRESS defaults let the flags appear before or after the command without the
    # subcommand's defaults overwriting a value given at the top level.
    flags = _Parser(add_help=False)
    group = flags.add_argument_group("connection")
    group.add_argument(
        "--router",
        metavar="HOST:PORT",
        default=argparse.SUPPRESS,
        help=f"router target (env SEKHA_ROUTER_TARGET, default {DEFAULT_ROUTER_TARGET})",
    )
    group.add_argument(
        "--embedding",
        metavar="HOST:PORT",
        default=argparse.SUPPRESS,
        help=f"embedding target (env SEKHA_EMBEDDING_TARGET, default {DEFAULT_EMBEDDING_TARGET})",
    )
    group.add_argument("--api-key", default=argparse.SUPPRESS, help="API key (env SEKHA_API_KEY)")
    group.add_argument(
        "--tls",
        action="store_true",
        default=argparse.SUPPRESS,
        help="use TLS with the system's root certificates",
    )
    group.add_argument(
        "--ca-cert",
        metavar="PEM",
        default=argparse.SUPPRESS,
        help="root certificate(s) to trust (turns TLS on)",
    )
    group.add_argument(
        "--client-cert", metavar="PEM", default=argparse.SUPPRESS, help="client certificate for mutual TLS"
    )
    group.add_argument(
        "--client-key", metavar="PEM", default=argparse.SUPPRESS, help="client private key for mutual TLS"
    )
    group.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help="deadline of each call (default 30; chat 300)",
    )
    return flags


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _routing_flags(parser: argparse.ArgumentParser, default_task: str | None) -> None:
    parser.add_argument(
        "--task",
        choices=TASKS,
        default=default_task,
        help="task to route for" + (f" (default {default_task})" if default_task else ""),
    )
    parser.add_argument("--model", help="preferred model: MODEL or PROVIDER/MODEL")
    parser.add_argument("--max-cost", type=float, metavar="USD", help="refuse models estimated above this")
    parser.add_argument(
        "--capability",
        action="append",
        choices=CAPABILITIES,
        default=[],
        help="required capability (repeatable)",
    )
    parser.add_argument("--max-tokens", type=int, metavar="N", help="maximum output tokens")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; handlers are named as 'module:function' and imported on use."""
    conn = _connection_flags()
    parser = _Parser(
        prog="sekha",
        description="Command line of the Sekha LLM gateway (router and embedding services).",
        epilog="Exit codes: 0 ok, 1 usage/config, 2 invalid argument, 3 not found, 4 failed precondition, "
        "5 resource exhausted, 6 unauthenticated/permission denied, 7 unavailable, 8 deadline exceeded, "
        "9 other, 130 interrupted.",
        parents=[conn],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    chat = commands.add_parser("chat", parents=[conn], help="chat with the routed model (streamed)")
    chat.add_argument("prompt", nargs="?", default="-", help="the prompt; '-' or nothing reads stdin")
    _routing_flags(chat, None)
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--temperature", type=float)
    chat.add_argument(
        "--no-stream", action="store_true", help="wait for the whole answer (Chat, not StreamChat)"
    )
    chat.add_argument("--no-fallback", action="store_true", help="try only the first candidate")
    chat.add_argument(
        "--json-schema",
        metavar="FILE",
        type=Path,
        help="answer as JSON valid against this JSON Schema file; prints the JSON when it conforms, "
        "fails (exit 9) naming the violation when it does not",
    )
    chat.add_argument(
        "--tools",
        metavar="FILE",
        type=Path,
        help="offer the tools in this JSON file (a list of {name, description, parameters}, or OpenAI's "
        '{"type": "function", "function": {...}} entries); prints the calls the model makes, one per line',
    )
    _json_flag(chat)
    chat.set_defaults(handler="sekha_cli.commands:chat", default_timeout=300.0)

    route = commands.add_parser("route", parents=[conn], help="show the routing decision for a request")
    _routing_flags(route, "chat_smart")
    route.add_argument("--prompt", help="prompt text for the token estimate")
    _json_flag(route)
    route.set_defaults(handler="sekha_cli.commands:route")

    models = commands.add_parser("models", parents=[conn], help="list the configured models")
    models.add_argument("--task", choices=TASKS, help="only models serving this task")
    models.add_argument("--provider", help="only this provider's models")
    models.add_argument("--page-size", type=int, default=100, help="models per ListModels call")
    _json_flag(models)
    models.set_defaults(handler="sekha_cli.commands:models")

    status = commands.add_parser("status", parents=[conn], help="providers, breakers, health and spend")
    _json_flag(status)
    status.set_defaults(handler="sekha_cli.commands:status")

    embed = commands.add_parser("embed", help="documents in the embedding service")
    embed_commands = embed.add_subparsers(dest="embed_command", metavar="SUBCOMMAND", required=True)

    upsert = embed_commands.add_parser("upsert", parents=[conn], help="embed and store documents from JSONL")
    upsert.add_argument("base", help="collection base, e.g. notes")
    upsert.add_argument(
        "--file", required=True, help='JSONL, one {"id", "text", "metadata"?} per line; - reads stdin'
    )
    upsert.add_argument("--model", help="embedding model (default: the base's current one)")
    upsert.add_argument("--batch", type=int, default=256, help="documents per request (default 256)")
    _json_flag(upsert)
    upsert.set_defaults(handler="sekha_cli.commands:embed_upsert")

    search = embed_commands.add_parser("search", parents=[conn], help="search a base")
    search.add_argument("base")
    search.add_argument("query")
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument(
        "--dimension",
        type=int,
        action="append",
        default=[],
        help="search only this dimension's collection (repeatable)",
    )
    search.add_argument("--fusion", choices=("rrf", "minmax"), default="rrf")
    search.add_argument("--rrf-k", type=int, default=0, help="reciprocal rank fusion constant (default 60)")
    search.add_argument("--filter", metavar="JSON", help='Chroma where filter, e.g. \'{"topic": "t0"}\'')
    _json_flag(search)
    search.set_defaults(handler="sekha_cli.commands:embed_search")

    collections = embed_commands.add_parser("collections", parents=[conn], help="list dimension collections")
    collections.add_argument("--base", default="", help="only this base")
    collections.add_argument("--page-size", type=int, default=100, help="collections per call")
    _json_flag(collections)
    collections.set_defaults(handler="sekha_cli.commands:embed_collections")

    migrate = embed_commands.add_parser(
        "migrate", parents=[conn], help="move a base to a new embedding model"
    )
    migrate.add_argument("base")
    migrate.add_argument("--model", required=True, help="the new embedding model")
    migrate.add_argument("--batch-size", type=int, default=0, help="documents per backfill batch")
    migrate.add_argument("--wait", action="store_true", help="follow the migration until it ends")
    migrate.add_argument("--poll-interval", type=float, default=1.0, metavar="SECONDS")
    _json_flag(migrate)
    migrate.set_defaults(handler="sekha_cli.commands:embed_migrate")

    export = embed_commands.add_parser("export", parents=[conn], help="write a base's documents as JSONL")
    export.add_argument("base")
    export.add_argument("--out", help="output file (default stdout)")
    export.add_argument(
        "--with-vectors",
        action="store_true",
        help="include the stored vectors (for backup/inspection; import re-embeds)",
    )
    export.add_argument("--dimension", type=int, default=0, help="read this dimension's collection")
    export.add_argument("--page-size", type=int, default=500)
    export.set_defaults(handler="sekha_cli.commands:embed_export")

    imp = embed_commands.add_parser(
        "import",
        parents=[conn],
        help="re-upsert an export; texts are re-embedded by the service, vectors in the file are ignored",
    )
    imp.add_argument("base")
    imp.add_argument("--file", required=True, help="a JSONL export; - reads stdin")
    imp.add_argument("--model", help="embedding model (default: the base's current one)")
    imp.add_argument("--batch", type=int, default=256)
    _json_flag(imp)
    imp.set_defaults(handler="sekha_cli.commands:embed_import")

    adopt = embed_commands.add_parser(
        "adopt", parents=[conn], help="register a v1 Chroma collection (no dimension suffix) in a base"
    )
    adopt.add_argument("source_collection")
    adopt.add_argument("--base", required=True)
    adopt.add_argument("--model", required=True, help="the model that wrote its vectors (PROVIDER/MODEL)")
    _json_flag(adopt)
    adopt.set_defaults(handler="sekha_cli.commands:embed_adopt")

    keys = commands.add_parser("keys", help="API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    key_hash = keys_commands.add_parser(
        "hash",
        help="print the sha256 hash of an API key for the server config",
        description="Prints sha256:<hex> for KEY (read from stdin when not given: a key on the "
        "command line lands in the shell history). --generate makes a new random key.",
    )
    key_hash.add_argument("key", nargs="?", help="the key; read from stdin when omitted")
    key_hash.add_argument(
        "--generate", action="store_true", help="generate a new key and print it with its hash"
    )
    _json_flag(key_hash)
    key_hash.set_defaults(handler="sekha_cli.admin:keys_hash")

    config = commands.add_parser("config", help="configuration files")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = config_commands.add_parser("check", help="validate a router or embedding config file")
    check.add_argument("file")
    check.add_argument(
        "--kind",
        choices=("auto", "router", "embedding"),
        default="auto",
        help="which service's config (default: detected from the top-level keys)",
    )
    check.set_defaults(handler="sekha_cli.admin:config_check")
    config_migrate = config_commands.add_parser(
        "migrate",
        help="convert v1 settings (.env or controller TOML) to a v2 router YAML",
        description="Reads the v1 bridge's .env or the v1 controller's TOML, writes a v2 router YAML "
        "(and an embedding YAML next to it when Chroma is configured), backs the original up "
        "first, and prints what was mapped and what was not. API keys are written as ${VAR} "
        "references, never as values.",
    )
    config_migrate.add_argument("old", help="the v1 file")
    config_migrate.add_argument("new", help="the v2 router YAML to write")
    config_migrate.add_argument(
        "--embedding-out", help="embedding YAML path (default NEW_STEM.embedding.yaml)"
    )
    config_migrate.add_argument("--force", action="store_true", help="overwrite existing output files")
    config_migrate.add_argument("--format", choices=("auto", "env", "toml", "yaml"), default="auto")
    config_migrate.set_defaults(handler="sekha_cli.admin:config_migrate")

    mcp = commands.add_parser("mcp", parents=[conn], help="run an MCP server with the gateway's tools")
    mcp.add_argument(
        "--transport",
        choices=("stdio", "http"),
        default="stdio",
        help="stdio for desktop clients, http (streamable HTTP at /mcp) for remote ones",
    )
    mcp.add_argument("--host", default="127.0.0.1", help="http: interface to listen on")
    mcp.add_argument(
        "--port", type=int, default=8765, help="http: port (0 picks a free one, printed on stderr)"
    )
    mcp.add_argument(
        "--token-hash",
        action="append",
        metavar="SHA256",
        help="http: accept bearer tokens with this hash (repeatable; env SEKHA_MCP_TOKEN_HASH, "
        "comma-separated); required to listen beyond loopback",
    )
    mcp.set_defaults(handler="sekha_cli.admin:mcp")
    return parser


def connection_settings(args: argparse.Namespace, service: str) -> Any:
    """The ConnectionConfig for `service` ('router' or 'embedding') from flags, env and defaults."""
    from pathlib import Path

    from sekha.client import ConnectionConfig

    if service == "router":
        target = (
            getattr(args, "router", None) or os.environ.get("SEKHA_ROUTER_TARGET") or DEFAULT_ROUTER_TARGET
        )
    else:
        target = (
            getattr(args, "embedding", None)
            or os.environ.get("SEKHA_EMBEDDING_TARGET")
            or DEFAULT_EMBEDDING_TARGET
        )
    paths: dict[str, Path | None] = {}
    for flag in ("ca_cert", "client_cert", "client_key"):
        value = getattr(args, flag, None)
        if value is not None and not Path(value).is_file():
            raise CliError(f"--{flag.replace('_', '-')}: {value}: file not found")
        paths[flag] = Path(value) if value is not None else None
    if (paths["client_cert"] is None) != (paths["client_key"] is None):
        raise CliError("--client-cert and --client-key go together")
    given: float | None = getattr(args, "timeout", None)
    timeout: float = given if given is not None else getattr(args, "default_timeout", 30.0)
    if timeout <= 0:
        raise CliError("--timeout must be positive")
    return ConnectionConfig(
        target=target,
        tls=bool(getattr(args, "tls", False)),
        root_certificates=paths["ca_cert"],
        client_certificate=paths["client_cert"],
        client_key=paths["client_key"],
        api_key=getattr(args, "api_key", None) or os.environ.get("SEKHA_API_KEY") or None,
        default_timeout_s=timeout,
    )


# What an attempt's error kind means, in the words of someone who has to fix it.
_ATTEMPT_CAUSES = {
    "connect": "connection refused or host unreachable",
    "reset": "connection reset",
    "timeout": "timed out",
    "rate_limited": "rate limited (429)",
    "auth": "key rejected (401/403)",
    "model_not_found": "model not found (404)",
    "bad_response": "malformed answer",
    "breaker_open": "skipped: circuit breaker open",
    "provider_disabled": "skipped: provider disabled",
    "budget": "skipped: over budget",
}


def _attempt_cause(kind: str) -> str:
    if kind.startswith("http_"):
        return f"HTTP {kind[5:]}"
    return _ATTEMPT_CAUSES.get(kind, kind)


def format_attempts(listing: str) -> str:
    """`primary/llama3.2:3b:connect,backup/gpt-4o:http_503` (the attempts an UNAVAILABLE carries)
    as `primary/llama3.2:3b: connection refused or host unreachable; backup/gpt-4o: HTTP 503`,
    repeats of one attempt counted instead of listed."""
    shown: list[list[Any]] = []
    for entry in filter(None, listing.split(",")):
        target, _, kind = entry.rpartition(":")  # the kind has no ':'; a model name may
        line = f"{target or entry}: {_attempt_cause(kind)}" if target else entry
        if shown and shown[-1][0] == line:
            shown[-1][1] += 1
        else:
            shown.append([line, 1])
    return "; ".join(line if count == 1 else f"{line} (x{count})" for line, count in shown)


def format_error(exc: Any) -> str:
    """One line for a SekhaError: code, message, then what the details add."""
    parts = [f"{exc.code.name}: {exc.message}"]
    details = exc.details
    if details.field_violations:
        parts.append("[" + "; ".join(f"{f}: {d}" for f, d in details.field_violations) + "]")
    if details.precondition_violations:
        parts.append(
            "[" + "; ".join(f"{s}: {d}" if s else d for _, s, d in details.precondition_violations) + "]"
        )
    if details.quota_violations:
        parts.append("[" + "; ".join(f"{s}: {d}" for s, d in details.quota_violations) + "]")
    attempts = details.metadata.get("attempts", "")
    if attempts:
        parts.append(f"[attempts: {format_attempts(attempts)}]")
    if details.reason and details.reason not in exc.message:
        parts.append(f"(reason {details.reason})")
    if details.retry_after_s is not None:
        parts.append(f"(retry after {details.retry_after_s:.1f}s)")
    return " ".join(parts)


def _run(args: argparse.Namespace) -> int:
    module_name, function_name = args.handler.split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    result = handler(args)
    if hasattr(result, "__await__"):
        import asyncio

        result = asyncio.run(result)
    return int(result or EXIT_OK)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sekha` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; say nothing more on a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        client = sys.modules.get("sekha.client")
        if client is not None and isinstance(exc, client.SekhaError):
            print(f"error: {format_error(exc)}", file=sys.stderr)
            return EXIT_CODES.get(exc.code.name, EXIT_OTHER)
        if os.environ.get("SEKHA_DEBUG"):
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (set SEKHA_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_OTHER
