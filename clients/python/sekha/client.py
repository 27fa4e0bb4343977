"""Typed async clients for the Router and Embedding services.

Thin wrappers over the generated stubs: they own the channel (target, TLS,
API key, message size, default deadline) and turn every failed call into a
`SekhaError` subclass that carries the status code and the parsed google.rpc
details, so callers branch on types and fields instead of parsing strings.

    async with RouterClient(ConnectionConfig("127.0.0.1:50051")) as router:
        reply = await router.chat(ChatRequest(messages=[user("hi")]))
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2, wrappers_pb2
from google.rpc import error_details_pb2, status_pb2

from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.embedding.v1 import embedding_service_pb2_grpc as emb_grpc
from sekha.router.v1 import router_service_pb2 as rt
from sekha.router.v1 import router_service_pb2_grpc as rt_grpc

Response = TypeVar("Response")

# grpc.health.v1 without the grpcio-health-checking package (the client installs with grpcio and
# protobuf alone): HealthCheckRequest {string service = 1} and HealthCheckResponse
# {ServingStatus status = 1} have the wire format of StringValue and Int32Value.
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
_HEALTH_STATUS_NAMES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


def health_status_name(status: int) -> str:
    """`SERVING`, `NOT_SERVING`, ... for a grpc.health.v1 ServingStatus number."""
    return _HEALTH_STATUS_NAMES[status] if 0 <= status < len(_HEALTH_STATUS_NAMES) else str(status)


@dataclass(frozen=True)
class ConnectionConfig:
    """Where and how to connect. TLS is on when any certificate path is set or `tls` is true."""

    target: str
    tls: bool = False
    root_certificates: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    api_key: str | None = None
    default_timeout_s: float | None = 30.0
    max_message_bytes: int = 16 * 1024 * 1024
    # Extra channel options (e.g. ("grpc.lb_policy_name", "round_robin") with a dns:/// target).
    channel_options: Sequence[tuple[str, Any]] = field(default_factory=tuple)

    def with_target(self, target: str) -> ConnectionConfig:
        return dataclasses.replace(self, target=target)


@dataclass(frozen=True)
class ErrorDetails:
    """The google.rpc details a Sekha server attaches to an error, parsed."""

    field_violations: tuple[tuple[str, str], ...] = ()
    precondition_violations: tuple[tuple[str, str, str], ...] = ()
    quota_violations: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None
    resource: tuple[str, str] | None = None


class SekhaError(Exception):
    """A failed call: the status code, the server's message and the parsed details."""

    def __init__(self, code: grpc.StatusCode, message: str, details: ErrorDetails) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details


class InvalidArgumentError(SekhaError):
    """The request is malformed or over a limit; `details.field_violations` names the fields."""


class FailedPreconditionError(SekhaError):
    """No model fits (task, capability, cost limit) or a collection's dimension differs."""


class ResourceExhaustedError(SekhaError):
    """Budget used up, rate limited, or the server is at its concurrency limit."""


class UnavailableError(SekhaError):
    """Every candidate failed or the service is down; retry after `details.retry_after_s`."""


class NotFoundError(SekhaError):
    """The named model, collection or migration does not exist."""


class AlreadyExistsError(SekhaError):
    """The resource exists already."""


class UnauthenticatedError(SekhaError):
    """Missing or wrong API key."""


class PermissionDeniedError(SekhaError):
    """The key may not do this."""


class DeadlineExceededError(SekhaError):
    """The deadline passed before the call finished."""


class CancelledError(SekhaError):
    """The call was cancelled."""


class UnimplementedError(SekhaError):
    """The RPC is not built yet on this server."""


class InternalError(SekhaError):
    """The server failed; its message carries an error id to quote to operators."""


_ERROR_TYPES: dict[grpc.StatusCode, type[SekhaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def parse_details(trailing_metadata: Any) -> ErrorDetails:
    """Parse `grpc-status-details-bin` into ErrorDetails (empty when absent)."""
    raw = None
    for key, value in trailing_metadata or ():
        if key == "grpc-status-details-bin":
            raw = value
    if raw is None:
        return ErrorDetails()
    status = status_pb2.Status.FromString(raw)
    fields: list[tuple[str, str]] = []
    preconditions: list[tuple[str, str, str]] = []
    quotas: list[tuple[str, str]] = []
    reason, metadata, retry_after, resource = "", {}, None, None
    for holder in status.details:
        if holder.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            holder.Unpack(bad)
            fields.extend((v.field, v.description) for v in bad.field_violations)
        elif holder.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            pre = error_details_pb2.PreconditionFailure()
            holder.Unpack(pre)
            preconditions.extend((v.type, v.subject, v.description) for v in pre.violations)
        elif holder.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            holder.Unpack(quota)
            quotas.extend((v.subject, v.description) for v in quota.violations)
        elif holder.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            holder.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif holder.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            holder.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
        elif holder.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            res = error_details_pb2.ResourceInfo()
            holder.Unpack(res)
            resource = (res.resource_type, res.resource_name)
    return ErrorDetails(
        field_violations=tuple(fields),
        precondition_violations=tuple(preconditions),
        quota_violations=tuple(quotas),
        reason=reason,
        metadata=metadata,
        retry_after_s=retry_after,
        resource=resource,
    )


def error_from_rpc(exc: grpc.aio.AioRpcError | grpc.RpcError) -> SekhaError:
    """The typed error for a failed call (async or blocking: both carry code, details, trailers)."""
    code = exc.code()
    error_type = _ERROR_TYPES.get(code, SekhaError)
    return error_type(code, exc.details() or "", parse_details(exc.trailing_metadata()))


def _read_optional(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def channel_options(config: ConnectionConfig) -> list[tuple[str, Any]]:
    """The channel arguments `config` asks for (message size limits first, then its own)."""
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        *config.channel_options,
    ]


def channel_credentials(config: ConnectionConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials when any certificate path is set or `tls` is true; None for plaintext."""
    secure = config.tls or any(
        p is not None for p in (config.root_certificates, config.client_certificate, config.client_key)
    )
    if not secure:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_optional(config.root_certificates),
        private_key=_read_optional(config.client_key),
        certificate_chain=_read_optional(config.client_certificate),
    )


def open_channel(config: ConnectionConfig, interceptors: Sequence[Any] = ()) -> grpc.aio.Channel:
    """A channel for `config`, secure when TLS is asked for."""
    credentials = channel_credentials(config)
    options = channel_options(config)
    if credentials is not None:
        return grpc.aio.secure_channel(config.target, credentials, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(config.target, options=options, interceptors=interceptors)


class _BaseClient:
    def __init__(
        self,
        config: ConnectionConfig,
        channel: grpc.aio.Channel | None = None,
        interceptors: Sequence[Any] = (),
    ) -> None:
        """`interceptors` apply to the channel this client opens (e.g. `sekha.tracing.client_interceptors()`
        to propagate trace context); a channel passed in keeps its own."""
        self.config = config
        self._owns_channel = channel is None
        self.channel = channel if channel is not None else open_channel(config, interceptors)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {config.api_key}"),) if config.api_key else ()
        )
        self._health_check = self.channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int32Value.FromString,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_channel:
            await self.channel.close()

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self.config.default_timeout_s if timeout_s is None else timeout_s

    async def _unary(self, method: Any, request: Any, timeout_s: float | None) -> Any:
        try:
            return await method(request, timeout=self._timeout(timeout_s), metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None

    async def health(self, service: str = "", timeout_s: float | None = 5.0) -> str:
        """The health status name (`SERVING`, `NOT_SERVING`, ...) of `service` ('' = the server)."""
        reply = await self._unary(self._health_check, wrappers_pb2.StringValue(value=service), timeout_s)
        return health_status_name(reply.value)


class RouterClient(_BaseClient):
    """Client of `sekha.router.v1.RouterService`."""

    def __init__(
        self,
        config: ConnectionConfig,
        channel: grpc.aio.Channel | None = None,
        interceptors: Sequence[Any] = (),
    ) -> None:
        super().__init__(config, channel, interceptors)
        self.stub = rt_grpc.RouterServiceStub(self.channel)

    async def route(self, request: rt.RouteRequest, timeout_s: float | None = None) -> rt.RouteResponse:
        return await self._unary(self.stub.Route, request, timeout_s)

    async def chat(self, request: rt.ChatRequest, timeout_s: float | None = None) -> rt.ChatResponse:
        return await self._unary(self.stub.Chat, request, timeout_s)

    async def stream_chat(
        self, request: rt.StreamChatRequest, timeout_s: float | None = None
    ) -> AsyncIterator[rt.StreamChatResponse]:
        """Yield deltas then the summary; a broken stream raises a SekhaError, never ends silently."""
        call = self.stub.StreamChat(request, timeout=self._timeout(timeout_s), metadata=self._metadata)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()  # no-op when finished; closes the stream when the caller stops early

    async def embed(self, request: rt.EmbedRequest, timeout_s: float | None = None) -> rt.EmbedResponse:
        return await self._unary(self.stub.Embed, request, timeout_s)

    async def list_models(
        self, request: rt.ListModelsRequest | None = None, timeout_s: float | None = None
    ) -> rt.ListModelsResponse:
        return await self._unary(self.stub.ListModels, request or rt.ListModelsRequest(), timeout_s)

    async def get_provider_status(
        self, request: rt.GetProviderStatusRequest | None = None, timeout_s: float | None = None
    ) -> rt.GetProviderStatusResponse:
        return await self._unary(
            self.stub.GetProviderStatus, request or rt.GetProviderStatusRequest(), timeout_s
        )

    async def get_spend(
        self, request: rt.GetSpendRequest | None = None, timeout_s: float | None = None
    ) -> rt.GetSpendResponse:
        return await self._unary(self.stub.GetSpend, request or rt.GetSpendRequest(), timeout_s)


class EmbeddingClient(_BaseClient):
    """Client of `sekha.embedding.v1.EmbeddingService`."""

    def __init__(
        self,
        config: ConnectionConfig,
        channel: grpc.aio.Channel | None = None,
        interceptors: Sequence[Any] = (),
    ) -> None:
        super().__init__(config, channel, interceptors)
        self.stub = emb_grpc.EmbeddingServiceStub(self.channel)

    async def upsert_documents(
        self, request: emb.UpsertDocumentsRequest, timeout_s: float | None = None
    ) -> emb.UpsertDocumentsResponse:
        return await self._unary(self.stub.UpsertDocuments, request, timeout_s)

    async def get_documents(
        self, request: emb.GetDocumentsRequest, timeout_s: float | None = None
    ) -> emb.GetDocumentsResponse:
        return await self._unary(self.stub.GetDocuments, request, timeout_s)

    async def delete_documents(
        self, request: emb.DeleteDocumentsRequest, timeout_s: float | None = None
    ) -> emb.DeleteDocumentsResponse:
        return await self._unary(self.stub.DeleteDocuments, request, timeout_s)

    async def search_documents(
        self, request: emb.SearchDocumentsRequest, timeout_s: float | None = None
    ) -> emb.SearchDocumentsResponse:
        return await self._unary(self.stub.SearchDocuments, request, timeout_s)

    async def list_collections(
        self, request: emb.ListCollectionsRequest | None = None, timeout_s: float | None = None
    ) -> emb.ListCollectionsResponse:
        return await self._unary(
            self.stub.ListCollections, request or emb.ListCollectionsRequest(), timeout_s
        )

    async def delete_collection(
        self, request: emb.DeleteCollectionRequest, timeout_s: float | None = None
    ) -> emb.DeleteCollectionResponse:
        return await self._unary(self.stub.DeleteCollection, request, timeout_s)

    async def adopt_collection(
        self, request: emb.AdoptCollectionRequest, timeout_s: float | None = None
    ) -> emb.AdoptCollectionResponse:
        return await self._unary(self.stub.AdoptCollection, request, timeout_s)

    async def start_migration(
        self, request: emb.StartMigrationRequest, timeout_s: float | None = None
    ) -> emb.StartMigrationResponse:
        return await self._unary(self.stub.StartMigration, request, timeout_s)

    async def get_migration(
        self, request: emb.GetMigrationRequest, timeout_s: float | None = None
    ) -> emb.GetMigrationResponse:
        return await self._unary(self.stub.GetMigration, request, timeout_s)


def user(text: str) -> rt.ChatMessage:
    """A user message with one text part."""
    return rt.ChatMessage(role=rt.ROLE_USER, parts=[rt.ContentPart(text=text)])


def system(text: str) -> rt.ChatMessage:
    """A system message with one text part."""
    return rt.ChatMessage(role=rt.ROLE_SYSTEM, parts=[rt.ContentPart(text=text)])


def assistant(text: str) -> rt.ChatMessage:
    """An assistant message with one text part (an earlier answer, replayed in the conversation)."""
    return rt.ChatMessage(role=rt.ROLE_ASSISTANT, parts=[rt.ContentPart(text=text)])


def struct_from(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """A JSON object (a JSON Schema, say) as the `google.protobuf.Struct` the contract carries."""
    out = struct_pb2.Struct()
    out.update(value)
    return out


def json_from(value: struct_pb2.Struct) -> dict[str, Any]:
    """A `google.protobuf.Struct` back as a plain JSON object."""
    converted: dict[str, Any] = json_format.MessageToDict(value)
    return converted


def tool(
    name: str, parameters: Mapping[str, Any] | None = None, description: str = "", *, strict: bool = False
) -> rt.Tool:
    """A tool the model may call, from the JSON Schema of its arguments (None: no arguments).

    weather = tool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"]}, "Current weather in a city")
    """
    out = rt.Tool(name=name, description=description, strict=strict)
    if parameters is not None:
        out.parameters.CopyFrom(struct_from(parameters))
    return out


def json_schema_format(
    schema: Mapping[str, Any], name: str = "response", description: str = "", *, strict: bool = True
) -> rt.ResponseFormat:
    """A response format holding the answer to `schema`; the response's `conformance` says if it did."""
    return rt.ResponseFormat(
        type=rt.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        json_schema=rt.JsonSchema(
            name=name, description=description, schema=struct_from(schema), strict=strict
        ),
    )


def tool_arguments(call: rt.ToolCall) -> Any:
    """A tool call's arguments parsed from the JSON text the model produced (ValueError if invalid)."""
    return json.loads(call.arguments or "{}")


def tool_result(call: rt.ToolCall | str, content: str | Mapping[str, Any] | Sequence[Any]) -> rt.ChatMessage:
    """The ROLE_TOOL message answering a call (or a call id); JSON values are serialized."""
    call_id = call if isinstance(call, str) else call.id
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    return rt.ChatMessage(role=rt.ROLE_TOOL, tool_call_id=call_id, parts=[rt.ContentPart(text=text)])


def append_tool_results(
    messages: MutableSequence[rt.ChatMessage],
    reply: rt.ChatResponse | rt.ChatSummary,
    results: Mapping[str, str | Mapping[str, Any] | Sequence[Any]],
) -> MutableSequence[rt.ChatMessage]:
    """Continue a conversation after the model called tools: the assistant turn with its calls,
    then one tool message per call, its result looked up by call id in `results`.

    Works on a request's `messages` field or a plain list; returns it for chaining. A call
    without a result is a KeyError, since the provider would refuse the conversation anyway.
    """
    turn = rt.ChatMessage(role=rt.ROLE_ASSISTANT, tool_calls=reply.tool_calls)
    if isinstance(reply, rt.ChatResponse) and reply.text:
        turn.parts.append(rt.ContentPart(text=reply.text))
    messages.append(turn)
    for call in reply.tool_calls:
        messages.append(tool_result(call, results[call.id]))
    return messages
