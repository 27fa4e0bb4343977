"""An MCP server exposing the gateway to AI assistants: provider status, routing, models, documents.

Built on the official MCP Python SDK 2.x high-level server, ``mcp.server.mcpserver.MCPServer``
(FastMCP's successor). Tools return structured JSON (``structuredContent``) with the real answers
of the running services, reached over gRPC through ``sekha.client``:

* ``llm_status``        providers, breaker states, health, spend when the router reports it
* ``llm_routing``       the routing decision for a task / preferred model / cost ceiling
* ``llm_models``        the configured models with tasks, capabilities, prices, availability
* ``search_documents``  a fused search over one base of the embedding service
* ``upsert_documents``  embed and store documents in a base

Two transports: stdio (``sekha mcp``, for desktop clients that spawn the server) and streamable
HTTP (``sekha mcp --transport http``, endpoint ``/mcp``). Over HTTP every request needs
``Authorization: Bearer <token>`` once token hashes are configured (``--token-hash`` or
``SEKHA_MCP_TOKEN_HASH``; the same ``sha256:`` hashes and constant-time comparison as the
services' API keys). Without one the server only listens on loopback, with the SDK's
DNS-rebinding protection: it refuses to start on any other interface.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from sekha.client import ConnectionConfig, EmbeddingClient, RouterClient, SekhaError, user
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.keys import check_hash_shape, presented_key, verify_api_key
from sekha.router.v1 import router_service_pb2 as rt
from sekha_cli.commands import gather_status, list_all_models
from sekha_cli.main import format_error
from sekha_cli.views import (
    FUSION_NAMES,
    capability_from_name,
    collection_view,
    decision_view,
    hit_view,
    metadata_from_json,
    model_view,
    task_from_name,
)

__all__ = ["DocumentInput", "GatewayTools", "build_mcp_server", "run_mcp"]

TaskName = Literal["embedding", "chat_small", "chat_smart", "chat_large", "vision", "audio"]
CapabilityName = Literal["vision", "audio", "tools"]
MAX_UPSERT_DOCUMENTS = 1000

INSTRUCTIONS = (
    "Tools of the Sekha LLM gateway. llm_status and llm_models describe the providers and models; "
    "llm_routing explains which model a request would go to and what it would cost, without calling "
    "it; search_documents and upsert_documents read and write a document base of the embedding service."
)


class DocumentInput(BaseModel):
    """A document to embed and store."""

    id: str = Field(min_length=1, description="caller-chosen id, unique within the base")
    text: str = Field(description="the text that is embedded")
    metadata: dict[str, str | int | float | bool] | None = Field(
        default=None, description="scalar metadata, usable in search filters"
    )


def _tool_error(exc: SekhaError) -> ToolError:
    return ToolError(format_error(exc))


class GatewayTools:
    """The tool implementations over one router and one embedding client."""

    def __init__(self, router: RouterClient, embedding: EmbeddingClient) -> None:
        self.router = router
        self.embedding = embedding

    async def llm_status(self) -> dict[str, Any]:
        """Provider states (enabled, breaker, last probe), service health, and spend when available."""
        try:
            return await gather_status(self.router, self.embedding)
        except SekhaError as exc:
            raise _tool_error(exc) from None

    async def llm_routing(
        self,
        task: Annotated[TaskName, Field(description="the kind of work")] = "chat_smart",
        preferred_model: Annotated[str | None, Field(description="MODEL or PROVIDER/MODEL to prefer")] = None,
        max_cost_usd: Annotated[
            float | None, Field(ge=0, description="refuse models estimated above this")
        ] = None,
        required_capabilities: Annotated[
            list[CapabilityName] | None, Field(description="capabilities the model must have")
        ] = None,
        prompt: Annotated[
            str | None, Field(description="prompt text for the token and cost estimate")
        ] = None,
        max_tokens: Annotated[int | None, Field(gt=0, description="maximum output tokens")] = None,
    ) -> dict[str, Any]:
        """The routing decision: chosen model, reason, fallbacks, estimated tokens and cost."""
        routing = rt.RoutingPreferences(
            task=task_from_name(task),
            preferred_model=preferred_model or "",
            required_capabilities=[capability_from_name(c) for c in required_capabilities or ()],
        )
        if max_cost_usd is not None:
            routing.max_cost_usd = max_cost_usd
        request = rt.RouteRequest(routing=routing)
        if prompt:
            request.messages.append(user(prompt))
        if max_tokens is not None:
            request.max_tokens = max_tokens
        try:
            reply = await self.router.route(request)
        except SekhaError as exc:
            raise _tool_error(exc) from None
        return decision_view(reply.decision)

    async def llm_models(
        self,
        task: Annotated[TaskName | None, Field(description="only models serving this task")] = None,
        provider_id: Annotated[str | None, Field(description="only this provider's models")] = None,
    ) -> dict[str, Any]:
        """Every configured model with tasks, capabilities, price, breaker state and availability."""
        try:
            found = await list_all_models(self.router, task, provider_id)
        except SekhaError as exc:
            raise _tool_error(exc) from None
        return {"models": [model_view(m) for m in found]}

    async def search_documents(
        self,
        base: Annotated[str, Field(min_length=1, description="the document base, e.g. notes")],
        query: Annotated[str, Field(min_length=1, description="what to look for")],
        top_k: Annotated[int, Field(ge=1, le=200, description="number of hits")] = 5,
        dimensions: Annotated[
            list[int] | None, Field(description="only these dimension collections; default all")
        ] = None,
        fusion: Annotated[Literal["rrf", "minmax"], Field(description="how collections are merged")] = "rrf",
        metadata_filter: Annotated[
            dict[str, Any] | None, Field(description='Chroma where filter, e.g. {"topic": "billing"}')
        ] = None,
    ) -> dict[str, Any]:
        """Search one base across its embedding models and fuse the results, best first."""
        request = emb.SearchDocumentsRequest(
            base=base,
            query=query,
            top_k=top_k,
            dimensions=dimensions or [],
            fusion_method=FUSION_NAMES[fusion],
        )
        if metadata_filter:
            request.metadata_filter.update(metadata_filter)
        try:
            reply = await self.embedding.search_documents(request)
        except SekhaError as exc:
            raise _tool_error(exc) from None
        return {"collections": list(reply.collections), "hits": [hit_view(h) for h in reply.hits]}

    async def upsert_documents(
        self,
        base: Annotated[str, Field(min_length=1, description="the document base")],
        documents: Annotated[
            list[DocumentInput],
            Field(min_length=1, max_length=MAX_UPSERT_DOCUMENTS, description="documents to embed and store"),
        ],
        model: Annotated[
            str | None, Field(description="embedding model; default the base's current one")
        ] = None,
    ) -> dict[str, Any]:
        """Embed documents and store them in a base (idempotent by id)."""
        try:
            converted = [
                emb.Document(id=d.id, text=d.text, metadata=metadata_from_json(d.metadata or {}))
                for d in documents
            ]
        except ValueError as exc:
            raise ToolError(str(exc)) from None
        try:
            reply = await self.embedding.upsert_documents(
                emb.UpsertDocumentsRequest(base=base, documents=converted, model=model or "")
            )
        except SekhaError as exc:
            raise _tool_error(exc) from None
        return {
            "base": base,
            "upserted": reply.upserted_count,
            "collections": [collection_view(c) for c in reply.collections],
        }


def build_mcp_server(tools: GatewayTools) -> MCPServer:
    """The MCP server with the gateway's five tools registered."""
    server: MCPServer = MCPServer(
        name="sekha", title="Sekha LLM gateway", instructions=INSTRUCTIONS, log_level="WARNING"
    )
    read_only = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
    server.add_tool(tools.llm_status, name="llm_status", annotations=read_only)
    server.add_tool(tools.llm_routing, name="llm_routing", annotations=read_only)
    server.add_tool(tools.llm_models, name="llm_models", annotations=read_only)
    server.add_tool(tools.search_documents, name="search_documents", annotations=read_only)
    server.add_tool(
        tools.upsert_documents,
        name="upsert_documents",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True),
    )
    return server


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_UNAUTHORIZED_BODY = b'{"error": "missing or invalid bearer token"}'


class BearerTokenGate:
    """ASGI middleware: an HTTP request passes only with a token whose hash is configured.

    Refused before the MCP app sees a byte of it: 401 with ``WWW-Authenticate: Bearer`` (RFC 6750),
    and a body that says nothing about which tokens exist.
    """

    def __init__(self, app: Any, token_hashes: Sequence[str]) -> None:
        self._app = app
        self._token_hashes = tuple(token_hashes)

    def _accepts(self, token: str | None) -> bool:
        # Every hash is checked (no early exit), so timing says nothing about which matched.
        matches = [verify_api_key(token, expected) for expected in self._token_hashes] if token else []
        return any(matches)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
            if not self._accepts(presented_key(headers)):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="sekha-mcp"'),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": _UNAUTHORIZED_BODY})
                return
        await self._app(scope, receive, send)


def token_hashes_for(token_hashes: Sequence[str], host: str) -> tuple[str, ...] | None:
    """The token hashes the HTTP transport accepts; None (open) only on loopback. Raises ValueError."""
    if not token_hashes:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"refusing to serve MCP over HTTP on {host} without authentication: set --token-hash "
                "or SEKHA_MCP_TOKEN_HASH (make a token with `sekha keys hash --generate`)"
            )
        return None
    checked = []
    for index, token_hash in enumerate(token_hashes):
        try:
            checked.append(check_hash_shape(token_hash.strip()))
        except ValueError as exc:
            raise ValueError(f"token hash {index + 1}: {exc}") from None
    return tuple(checked)


async def _serve_http(server: MCPServer, host: str, port: int, token_hashes: tuple[str, ...] | None) -> None:
    import uvicorn

    app: Any = server.streamable_http_app(host=host)
    if token_hashes is not None:
        app = BearerTokenGate(app, token_hashes)
    # Bound here, not by uvicorn, so that port 0 works and the real port can be announced.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    bound_port = listener.getsockname()[1]
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    access = "bearer token required" if token_hashes is not None else "no authentication, loopback only"
    print(
        f"sekha mcp: streamable HTTP on http://{shown_host}:{bound_port}/mcp ({access})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    try:
        await uvicorn.Server(config).serve(sockets=[listener])
    finally:
        listener.close()


async def run_mcp(
    *,
    transport: Literal["stdio", "http"],
    router: ConnectionConfig,
    embedding: ConnectionConfig,
    host: str = "127.0.0.1",
    port: int = 8765,
    token_hashes: Sequence[str] = (),
) -> int:
    """Serve until the client disconnects (stdio) or the process is stopped (http); return 0.

    Raises ValueError (before connecting anywhere) for HTTP on a non-loopback host without tokens,
    or for a malformed token hash."""
    accepted = token_hashes_for(token_hashes, host) if transport == "http" else None
    async with RouterClient(router) as router_client, EmbeddingClient(embedding) as embedding_client:
        server = build_mcp_server(GatewayTools(router_client, embedding_client))
        if transport == "stdio":
            await server.run_stdio_async()
        else:
            await _serve_http(server, host, port, accepted)
    return 0
