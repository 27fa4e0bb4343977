"""The `sekha` commands that talk to the services: chat, route, models, status and `embed ...`.

Each handler takes the parsed arguments and returns an exit code; failed calls raise the typed
`sekha.client.SekhaError`, which `sekha.cli.main` turns into one error line and an exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from sekha.client import (
    EmbeddingClient,
    RouterClient,
    SekhaError,
    UnimplementedError,
    json_schema_format,
    system,
    tool,
    user,
)
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.router.v1 import router_service_pb2 as rt
from sekha_cli.main import EXIT_OK, EXIT_OTHER, CliError, connection_settings
from sekha_cli.output import ProgressBar, format_cost, print_json, render_table
from sekha_cli.views import (
    FUSION_NAMES,
    capability_from_name,
    chat_result_view,
    collection_view,
    decision_view,
    document_view,
    hit_view,
    metadata_from_json,
    migration_view,
    model_view,
    provider_status_view,
    spend_view,
    state_backend_view,
    task_from_name,
)

__all__ = [
    "chat",
    "embed_adopt",
    "embed_collections",
    "embed_export",
    "embed_import",
    "embed_migrate",
    "embed_search",
    "embed_upsert",
    "gather_status",
    "list_all_models",
    "models",
    "read_documents",
    "route",
    "status",
]

# How long `status` waits for the embedding service, which may legitimately not be running.
_PEER_HEALTH_TIMEOUT_S = 3.0
_MAX_SHOWN_TEXT = 60


def routing_from_args(args: argparse.Namespace) -> rt.RoutingPreferences:
    routing = rt.RoutingPreferences(
        preferred_model=args.model or "",
        required_capabilities=[capability_from_name(c) for c in args.capability],
        disable_fallback=bool(getattr(args, "no_fallback", False)),
    )
    if args.task:
        routing.task = task_from_name(args.task)
    if args.max_cost is not None:
        if args.max_cost < 0:
            raise CliError("--max-cost must not be negative")
        routing.max_cost_usd = args.max_cost
    return routing


def _check_max_tokens(args: argparse.Namespace) -> None:
    if args.max_tokens is not None and args.max_tokens <= 0:
        raise CliError("--max-tokens must be positive")


# ------------------------------------------------------------------------------------ router


def _prompt_text(prompt: str) -> str:
    if prompt != "-":
        return prompt
    if sys.stdin.isatty():
        print("(reading the prompt from stdin; end with Ctrl-D)", file=sys.stderr)
    text = sys.stdin.read()
    if not text.strip():
        raise CliError("empty prompt")
    return text


def _schema_name(path: Path) -> str:
    """A schema name providers accept (letters, digits, `_`, `-`) from the file's name."""
    name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in path.stem)[:64]
    return name or "response"


def _footer(view: dict[str, Any]) -> str:
    parts = [
        f"-- {view['provider_id']}/{view['model']}",
        f"tokens {view['input_tokens']} in, {view['output_tokens']} out",
        f"cost {format_cost(view['cost_usd'], view['price_unknown'])}",
        f"finish {view['finish_reason']}",
    ]
    if len(view["attempts"]) > 1:
        parts.append(f"attempts {len(view['attempts'])}")
    return " | ".join(parts)


def _json_file(path: Path, flag: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"{flag} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CliError(f"{flag} {path}: not JSON ({exc})") from None


def _tools_from_file(path: Path) -> list[rt.Tool]:
    """Tools from a JSON list of `{name, description, parameters}` or OpenAI `{type, function}` entries."""
    entries = _json_file(path, "--tools")
    if not isinstance(entries, list) or not entries:
        raise CliError(f"--tools {path}: expected a non-empty JSON list of tools")
    tools = []
    for index, entry in enumerate(entries):
        spec = entry.get("function", entry) if isinstance(entry, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise CliError(f"--tools {path}: entry {index} has no name")
        parameters = spec.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise CliError(f"--tools {path}: entry {index}: parameters must be a JSON Schema object")
        tools.append(
            tool(spec["name"], parameters, str(spec.get("description", "")), strict=bool(spec.get("strict")))
        )
    return tools


def _print_chat_reply(args: argparse.Namespace, reply: rt.ChatResponse) -> int:
    view = chat_result_view(reply)
    nonconforming = reply.HasField("conformance") and not reply.conformance.conforms
    if args.json:
        print_json(view)
    else:
        if not nonconforming:  # a wrong answer is never printed as if it were the JSON asked for
            if reply.text:
                print(reply.text)
            for call in reply.tool_calls:
                print(f"{call.name} {call.arguments}")
        print(_footer(view), file=sys.stderr)
    if nonconforming:
        raise CliError(
            f"the answer does not conform to {args.json_schema}: {reply.conformance.reason}", EXIT_OTHER
        )
    return EXIT_OK


async def chat(args: argparse.Namespace) -> int:
    _check_max_tokens(args)
    messages = [system(args.system)] if args.system else []
    tools = _tools_from_file(args.tools) if args.tools is not None else []
    response_format = None
    if args.json_schema is not None:
        schema = _json_file(args.json_schema, "--json-schema")
        if not isinstance(schema, dict):
            raise CliError(f"--json-schema {args.json_schema}: expected a JSON Schema object")
        response_format = json_schema_format(schema, _schema_name(args.json_schema))
    messages.append(user(_prompt_text(args.prompt)))
    generation = rt.GenerationConfig()
    if args.max_tokens is not None:
        generation.max_tokens = args.max_tokens
    if args.temperature is not None:
        generation.temperature = args.temperature
    routing = routing_from_args(args)
    async with RouterClient(connection_settings(args, "router")) as router:
        # A JSON answer is checked whole and tool calls print whole: no streaming for either.
        if args.no_stream or tools or response_format is not None:
            request = rt.ChatRequest(routing=routing, messages=messages, generation=generation, tools=tools)
            if response_format is not None:
                request.response_format.CopyFrom(response_format)
            return _print_chat_reply(args, await router.chat(request))
        pieces: list[str] = []
        summary: rt.ChatSummary | None = None
        request = rt.StreamChatRequest(routing=routing, messages=messages, generation=generation)
        try:
            async for event in router.stream_chat(request):
                if event.HasField("delta"):
                    pieces.append(event.delta.text)
                    if not args.json:
                        sys.stdout.write(event.delta.text)
                        sys.stdout.flush()
                elif event.HasField("summary"):
                    summary = event.summary
        finally:
            if pieces and not args.json:
                sys.stdout.write("\n")
                sys.stdout.flush()
    if summary is None:
        raise CliError("the stream ended without its summary", EXIT_OTHER)
    view = chat_result_view(summary, "".join(pieces))
    if args.json:
        print_json(view)
    else:
        print(_footer(view), file=sys.stderr)
    return EXIT_OK


def _candidate_line(candidate: dict[str, Any]) -> str:
    cost = format_cost(candidate["estimated_cost_usd"], candidate["price_unknown"])
    return f"{candidate['key']}  est. {cost}  priority {candidate['priority']}"


async def route(args: argparse.Namespace) -> int:
    _check_max_tokens(args)
    request = rt.RouteRequest(routing=routing_from_args(args))
    if args.prompt:
        request.messages.append(user(args.prompt))
    if args.max_tokens is not None:
        request.max_tokens = args.max_tokens
    async with RouterClient(connection_settings(args, "router")) as router:
        reply = await router.route(request)
    view = decision_view(reply.decision)
    if args.json:
        print_json(view)
        return EXIT_OK
    lines = [
        f"task       {view['task']}",
        f"chosen     {_candidate_line(view['chosen']) if view['chosen'] else '-'}",
        f"reason     {view['reason']}",
        f"estimate   {view['estimated_input_tokens']} input + "
        f"{view['estimated_output_tokens']} output tokens",
    ]
    for index, candidate in enumerate(view["fallbacks"]):
        lines.append(f"{'fallbacks' if index == 0 else '':<10} {_candidate_line(candidate)}")
    if not view["fallbacks"]:
        lines.append("fallbacks  -")
    for index, rejected in enumerate(view["rejected"]):
        label = "rejected" if index == 0 else ""
        lines.append(f"{label:<10} {rejected['provider_id']}/{rejected['model']}: {rejected['reason']}")
    print("\n".join(lines))
    return EXIT_OK


async def list_all_models(
    router: RouterClient, task: str | None, provider: str | None, page_size: int = 100
) -> list[rt.Model]:
    """Every page of ListModels."""
    found: list[rt.Model] = []
    token = ""
    while True:
        request = rt.ListModelsRequest(page_size=page_size, page_token=token, provider_id=provider or "")
        if task:
            request.task = task_from_name(task)
        page = await router.list_models(request)
        found.extend(page.models)
        token = page.next_page_token
        if not token:
            return found


def _price_text(view: dict[str, Any]) -> str:
    price = view["price"]
    if price is None:
        return "unknown"
    return f"{price['input_usd_per_million_tokens']:g}/{price['output_usd_per_million_tokens']:g}"


async def models(args: argparse.Namespace) -> int:
    if args.page_size < 1:
        raise CliError("--page-size must be at least 1")
    async with RouterClient(connection_settings(args, "router")) as router:
        found = await list_all_models(router, args.task, args.provider, args.page_size)
    views = [model_view(m) for m in found]
    if args.json:
        print_json({"models": views})
        return EXIT_OK
    rows = [
        (
            v["key"],
            ",".join(v["tasks"]),
            ",".join(v["capabilities"]) or None,
            v["context_window"],
            v["embedding_dimension"],
            _price_text(v),
            v["breaker_state"],
            "yes" if v["available"] else "no",
        )
        for v in views
    ]
    headers = ("model", "tasks", "capabilities", "context", "dim", "$/M in/out", "breaker", "available")
    print(render_table(headers, rows))
    return EXIT_OK


async def _spend(router: RouterClient) -> dict[str, Any]:
    try:
        return spend_view(await router.get_spend())
    except UnimplementedError:
        return {"available": False, "reason": "UNIMPLEMENTED"}
    except SekhaError as exc:
        # Spend is an extra on the status page: a key without the right to read it, or a
        # router whose spend ledger (Redis) is down, still gives the provider states.
        if exc.code.name in ("PERMISSION_DENIED", "UNAUTHENTICATED", "FAILED_PRECONDITION", "UNAVAILABLE"):
            return {"available": False, "reason": exc.code.name}
        raise


async def _health(client: RouterClient | EmbeddingClient, timeout_s: float | None) -> str:
    try:
        return await client.health(timeout_s=timeout_s)
    except SekhaError as exc:
        return f"unreachable ({exc.code.name})"


async def gather_status(router: RouterClient, embedding: EmbeddingClient | None) -> dict[str, Any]:
    """Everything `sekha status` and the MCP `llm_status` tool report."""
    reply = await router.get_provider_status()
    result: dict[str, Any] = {
        "router": {"target": router.config.target, "health": await _health(router, None)},
        "state_backend": state_backend_view(reply),
        "providers": [provider_status_view(p) for p in reply.providers],
        "spend": await _spend(router),
    }
    if embedding is not None:
        result["embedding"] = {
            "target": embedding.config.target,
            "health": await _health(embedding, _PEER_HEALTH_TIMEOUT_S),
        }
    return result


async def status(args: argparse.Namespace) -> int:
    async with (
        RouterClient(connection_settings(args, "router")) as router,
        EmbeddingClient(connection_settings(args, "embedding")) as embedding,
    ):
        report = await gather_status(router, embedding)
    if args.json:
        print_json(report)
        return EXIT_OK
    print(f"router     {report['router']['target']}: {report['router']['health']}")
    if report["state_backend"] is not None:
        print(f"state      {report['state_backend']['message']}")
    print(f"embedding  {report['embedding']['target']}: {report['embedding']['health']}")
    print()
    rows = []
    for p in report["providers"]:
        probe = p["last_probe"]
        rows.append(
            (
                p["provider_id"],
                p["type"],
                "yes" if p["enabled"] else f"no ({p['disabled_reason']})",
                p["priority"],
                p["model_count"],
                p["breaker"]["state"],
                p["breaker"]["consecutive_failures"],
                f"{p['breaker']['window_failure_rate']:.0%}",
                None if probe is None else ("ok" if probe["healthy"] else probe["error_kind"] or "failed"),
            )
        )
    headers = (
        "provider",
        "type",
        "enabled",
        "priority",
        "models",
        "breaker",
        "failures",
        "fail rate",
        "probe",
    )
    print(render_table(headers, rows))
    print()
    spend = report["spend"]
    if not spend["available"]:
        print(f"spend: not available ({spend['reason']})")
    else:
        print(f"spend today: ${spend['total_cost_usd']:.6f}")
        if spend["rows"]:
            print(
                render_table(
                    ("key", "cost usd", "requests", "input tokens", "output tokens"),
                    [
                        (
                            r["key"],
                            f"{r['cost_usd']:.6f}",
                            r["request_count"],
                            r["input_tokens"],
                            r["output_tokens"],
                        )
                        for r in spend["rows"]
                    ],
                )
            )
        for budget in spend["budgets"]:
            print(
                f"budget {budget['scope']} ({budget['period']}): ${budget['spent_usd']:.4f} spent, "
                f"${budget['reserved_usd']:.4f} reserved of ${budget['limit_usd']:.2f}"
            )
    return EXIT_OK


# ---------------------------------------------------------------------------------- embedding


def _open_input(path: str) -> TextIO:
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None


def read_documents(path: str) -> tuple[list[emb.Document], int]:
    """Documents from a JSONL file (id, text, metadata?, embedding? per line) and how many had vectors.

    Every line is checked before anything is sent, so a bad line 900 does not leave a half import.
    """
    documents: list[emb.Document] = []
    with_vectors = 0
    first_line: dict[str, int] = {}
    stream = _open_input(path)
    try:
        for number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise CliError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(entry, dict):
                raise CliError(f"{where}: expected a JSON object")
            unknown = sorted(set(entry) - {"id", "text", "metadata", "embedding"})
            if unknown:
                raise CliError(
                    f"{where}: unknown field(s) {', '.join(unknown)} (expected id, text, metadata)"
                )
            doc_id, text, metadata = entry.get("id"), entry.get("text"), entry.get("metadata") or {}
            if not isinstance(doc_id, str) or not doc_id:
                raise CliError(f"{where}: 'id' must be a non-empty string")
            if not isinstance(text, str):
                raise CliError(f"{where}: 'text' must be a string")
            if not isinstance(metadata, dict):
                raise CliError(f"{where}: 'metadata' must be an object")
            if doc_id in first_line:
                raise CliError(f"{where}: duplicate id {doc_id!r} (first on line {first_line[doc_id]})")
            first_line[doc_id] = number
            try:
                converted = metadata_from_json(metadata)
            except ValueError as exc:
                raise CliError(f"{where}: {exc}") from None
            if entry.get("embedding"):
                with_vectors += 1
            documents.append(emb.Document(id=doc_id, text=text, metadata=converted))
    finally:
        if stream is not sys.stdin:
            stream.close()
    if not documents:
        raise CliError(f"{path}: no documents")
    return documents, with_vectors


def _batches(items: list[emb.Document], size: int) -> Iterator[list[emb.Document]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _upload(args: argparse.Namespace, documents: list[emb.Document]) -> int:
    if args.batch < 1:
        raise CliError("--batch must be at least 1")
    written = 0
    collections: dict[str, emb.CollectionInfo] = {}
    progress = ProgressBar(len(documents), "docs") if len(documents) > args.batch else None
    async with EmbeddingClient(connection_settings(args, "embedding")) as client:
        for batch in _batches(documents, args.batch):
            try:
                reply = await client.upsert_documents(
                    emb.UpsertDocumentsRequest(base=args.base, documents=batch, model=args.model or "")
                )
            except SekhaError:
                if written:
                    print(
                        f"note: {written} of {len(documents)} documents were written before the error",
                        file=sys.stderr,
                    )
                raise
            written += len(batch)
            for info in reply.collections:
                collections[info.name] = info
            if progress is not None:
                progress.update(written)
    if progress is not None:
        progress.finish()
    if args.json:
        print_json(
            {
                "base": args.base,
                "upserted": written,
                "collections": [collection_view(c) for c in collections.values()],
            }
        )
    else:
        names = ", ".join(sorted(collections)) or "-"
        print(f"upserted {written} documents into {args.base} ({names})")
    return EXIT_OK


async def embed_upsert(args: argparse.Namespace) -> int:
    documents, _ = read_documents(args.file)
    return await _upload(args, documents)


async def embed_import(args: argparse.Namespace) -> int:
    documents, with_vectors = read_documents(args.file)
    if with_vectors:
        print(
            f"note: {with_vectors} document(s) carry vectors; they are ignored - the service embeds the "
            "texts itself with the base's model (exported vectors are for backup and inspection)",
            file=sys.stderr,
        )
    return await _upload(args, documents)


# What the two numbers of a search hit are: the fusion score orders hits across collections (and
# models) whose distances cannot be compared; the distance is the similarity a user expects.
_FUSION_LEGEND = {
    "rrf": "fusion: reciprocal-rank fusion score, the sum over collections of 1/(k + rank); it orders "
    "the hits and is not a similarity. distance: vector distance in the closest collection "
    "(lower is closer, 0 = identical).",
    "minmax": "fusion: min-max fused score, each collection's similarities rescaled to 0..1 (1 = its "
    "best hit) and summed; it orders the hits and is not a similarity. distance: vector distance in the "
    "closest collection (lower is closer, 0 = identical).",
}


async def embed_search(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise CliError("--top-k must be at least 1")
    request = emb.SearchDocumentsRequest(
        base=args.base,
        query=args.query,
        top_k=args.top_k,
        dimensions=args.dimension,
        fusion_method=FUSION_NAMES[args.fusion],
        rrf_k=args.rrf_k,
    )
    if args.filter:
        try:
            where = json.loads(args.filter)
        except json.JSONDecodeError as exc:
            raise CliError(f"--filter: not JSON ({exc.msg})") from None
        if not isinstance(where, dict):
            raise CliError("--filter: expected a JSON object")
        request.metadata_filter.update(where)
    async with EmbeddingClient(connection_settings(args, "embedding")) as client:
        reply = await client.search_documents(request)
    hits = [hit_view(h) for h in reply.hits]
    if args.json:
        print_json({"collections": list(reply.collections), "hits": hits})
        return EXIT_OK
    rows = []
    for rank, hit in enumerate(hits, start=1):
        text = " ".join(hit["text"].split())
        shown = text if len(text) <= _MAX_SHOWN_TEXT else text[: _MAX_SHOWN_TEXT - 3] + "..."
        distances = [m["distance"] for m in hit["matches"]]
        rows.append(
            (
                rank,
                f"{hit['score']:.4f}",
                f"{min(distances):.4f}" if distances else "-",
                hit["id"],
                ",".join(m["collection"] for m in hit["matches"]),
                shown,
            )
        )
    print(f"searched: {', '.join(reply.collections) or '-'}")
    print(render_table(("rank", "fusion", "distance", "id", "collections", "text"), rows))
    print(_FUSION_LEGEND[args.fusion], file=sys.stderr)
    return EXIT_OK


async def embed_collections(args: argparse.Namespace) -> int:
    if args.page_size < 1:
        raise CliError("--page-size must be at least 1")
    found: list[emb.CollectionInfo] = []
    token = ""
    async with EmbeddingClient(connection_settings(args, "embedding")) as client:
        while True:
            page = await client.list_collections(
                emb.ListCollectionsRequest(base=args.base, page_size=args.page_size, page_token=token)
            )
            found.extend(page.collections)
            token = page.next_page_token
            if not token:
                break
    views = [collection_view(c) for c in found]
    if args.json:
        print_json({"collections": views})
        return EXIT_OK
    rows = [
        (
            v["name"],
            v["base"],
            v["dimension"],
            v["model"],
            v["document_count"],
            "yes" if v["serving_reads"] else "no",
            "yes" if v["receiving_writes"] else "no",
        )
        for v in views
    ]
    print(render_table(("collection", "base", "dim", "model", "documents", "reads", "writes"), rows))
    return EXIT_OK


_TERMINAL_STATES = (emb.MIGRATION_STATE_COMPLETED, emb.MIGRATION_STATE_FAILED)


async def embed_migrate(args: argparse.Namespace) -> int:
    if args.poll_interval <= 0:
        raise CliError("--poll-interval must be positive")
    async with EmbeddingClient(connection_settings(args, "embedding")) as client:
        migration = (
            await client.start_migration(
                emb.StartMigrationRequest(base=args.base, target_model=args.model, batch_size=args.batch_size)
            )
        ).migration
        if not args.json:
            print(
                f"migration {migration.id} started: {migration.base} {migration.source_collection} -> "
                f"{migration.target_collection} ({migration.target_model})"
            )
        if args.wait:
            progress = ProgressBar(migration.total_documents or None, "docs")
            while migration.state not in _TERMINAL_STATES:
                await asyncio.sleep(args.poll_interval)
                migration = (await client.get_migration(emb.GetMigrationRequest(id=migration.id))).migration
                progress.update(migration.migrated_documents, migration.total_documents or None)
            progress.finish(migration_view(migration)["state"])
    view = migration_view(migration)
    if args.json:
        print_json(view)
    elif args.wait and migration.state == emb.MIGRATION_STATE_COMPLETED:
        print(
            f"migration {migration.id} completed: {migration.migrated_documents} documents; "
            f"reads now on {migration.target_collection}"
        )
    if migration.state == emb.MIGRATION_STATE_FAILED:
        raise CliError(f"migration {migration.id} failed: {migration.error or 'no reason given'}", EXIT_OTHER)
    return EXIT_OK


async def _export_pages(args: argparse.Namespace, out: TextIO, progress: ProgressBar) -> str:
    """Write every page of the base to `out`; return the collection read."""
    collection, token, count = "", "", 0
    async with EmbeddingClient(connection_settings(args, "embedding")) as client:
        while True:
            page = await client.get_documents(
                emb.GetDocumentsRequest(
                    base=args.base,
                    dimension=args.dimension,
                    include_embeddings=args.with_vectors,
                    page_size=args.page_size,
                    page_token=token,
                )
            )
            collection = page.collection or collection
            for document in page.documents:
                out.write(json.dumps(document_view(document, with_vector=args.with_vectors)) + "\n")
            count += len(page.documents)
            progress.update(count)
            token = page.next_page_token
            if not token:
                return collection


def embed_export(args: argparse.Namespace) -> int:
    if args.page_size < 1:
        raise CliError("--page-size must be at least 1")
    progress = ProgressBar(None, "docs")
    if not args.out:
        collection = asyncio.run(_export_pages(args, sys.stdout, progress))
        sys.stdout.flush()
    else:
        # Written beside the target and renamed at the end: a failed export leaves no half file.
        partial = Path(f"{args.out}.partial")
        try:
            with open(partial, "w", encoding="utf-8") as out:
                collection = asyncio.run(_export_pages(args, out, progress))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, args.out)
    progress.finish(f"exported from {collection or args.base}" + (f" to {args.out}" if args.out else ""))
    return EXIT_OK


async def embed_adopt(args: argparse.Namespace) -> int:
    async with EmbeddingClient(connection_settings(args, "embedding")) as client:
        reply = await client.adopt_collection(
            emb.AdoptCollectionRequest(
                source_collection=args.source_collection, base=args.base, model=args.model
            )
        )
    view = collection_view(reply.collection)
    if args.json:
        print_json(view)
    else:
        print(
            f"adopted {args.source_collection} into base {view['base']} as {view['name']}: dimension "
            f"{view['dimension']}, model {view['model']}, {view['document_count']} documents"
        )
    return EXIT_OK
