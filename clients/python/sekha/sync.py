"""Blocking clients for code without an event loop (scripts, WSGI apps, worker threads).

The same calls, errors and connection settings as the async clients in `sekha.client`, over a
plain `grpc` channel: every failed call raises the same `SekhaError` subclass with the same
parsed details, and a broken stream raises instead of ending quietly.

    with SyncRouterClient(ConnectionConfig("127.0.0.1:50051")) as router:
        print(router.chat(ChatRequest(messages=[user("hi")])).text)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Self

import grpc
from google.protobuf import wrappers_pb2

from sekha.client import (
    HEALTH_CHECK_METHOD,
    ConnectionConfig,
    channel_credentials,
    channel_options,
    error_from_rpc,
    health_status_name,
)
from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.embedding.v1 import embedding_service_pb2_grpc as emb_grpc
from sekha.router.v1 import router_service_pb2 as rt
from sekha.router.v1 import router_service_pb2_grpc as rt_grpc

__all__ = ["SyncEmbeddingClient", "SyncRouterClient", "open_sync_channel"]


def open_sync_channel(config: ConnectionConfig) -> grpc.Channel:
    """A blocking channel for `config`, secure when TLS is asked for."""
    credentials = channel_credentials(config)
    if credentials is not None:
        return grpc.secure_channel(config.target, credentials, options=channel_options(config))
    return grpc.insecure_channel(config.target, options=channel_options(config))


class _SyncBaseClient:
    def __init__(self, config: ConnectionConfig, channel: grpc.Channel | None = None) -> None:
        self.config = config
        self._owns_channel = channel is None
        self.channel = channel if channel is not None else open_sync_channel(config)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {config.api_key}"),) if config.api_key else ()
        )
        self._health_check = self.channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=wrappers_pb2.StringValue.SerializeToString,
            response_deserializer=wrappers_pb2.Int32Value.FromString,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self.config.default_timeout_s if timeout_s is None else timeout_s

    def _unary(self, method: Any, request: Any, timeout_s: float | None) -> Any:
        try:
            return method(request, timeout=self._timeout(timeout_s), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def health(self, service: str = "", timeout_s: float | None = 5.0) -> str:
        """The health status name (`SERVING`, `NOT_SERVING`, ...) of `service` ('' = the server)."""
        reply = self._unary(self._health_check, wrappers_pb2.StringValue(value=service), timeout_s)
        return health_status_name(reply.value)


class SyncRouterClient(_SyncBaseClient):
    """Blocking client of `sekha.router.v1.RouterService`."""

    def __init__(self, config: ConnectionConfig, channel: grpc.Channel | None = None) -> None:
        super().__init__(config, channel)
        self.stub = rt_grpc.RouterServiceStub(self.channel)

    def route(self, request: rt.RouteRequest, timeout_s: float | None = None) -> rt.RouteResponse:
        return self._unary(self.stub.Route, request, timeout_s)

    def chat(self, request: rt.ChatRequest, timeout_s: float | None = None) -> rt.ChatResponse:
        return self._unary(self.stub.Chat, request, timeout_s)

    def stream_chat(
        self, request: rt.StreamChatRequest, timeout_s: float | None = None
    ) -> Iterator[rt.StreamChatResponse]:
        """Yield deltas then the summary; a broken stream raises a SekhaError, never ends silently."""
        call = self.stub.StreamChat(request, timeout=self._timeout(timeout_s), metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()  # no-op when finished; closes the stream when the caller stops early

    def embed(self, request: rt.EmbedRequest, timeout_s: float | None = None) -> rt.EmbedResponse:
        return self._unary(self.stub.Embed, request, timeout_s)

    def list_models(
        self, request: rt.ListModelsRequest | None = None, timeout_s: float | None = None
    ) -> rt.ListModelsResponse:
        return self._unary(self.stub.ListModels, request or rt.ListModelsRequest(), timeout_s)

    def get_provider_status(
        self, request: rt.GetProviderStatusRequest | None = None, timeout_s: float | None = None
    ) -> rt.GetProviderStatusResponse:
        return self._unary(self.stub.GetProviderStatus, request or rt.GetProviderStatusRequest(), timeout_s)

    def get_spend(
        self, request: rt.GetSpendRequest | None = None, timeout_s: float | None = None
    ) -> rt.GetSpendResponse:
        return self._unary(self.stub.GetSpend, request or rt.GetSpendRequest(), timeout_s)


class SyncEmbeddingClient(_SyncBaseClient):
    """Blocking client of `sekha.embedding.v1.EmbeddingService`."""

    def __init__(self, config: ConnectionConfig, channel: grpc.Channel | None = None) -> None:
        super().__init__(config, channel)
        self.stub = emb_grpc.EmbeddingServiceStub(self.channel)

    def upsert_documents(
        self, request: emb.UpsertDocumentsRequest, timeout_s: float | None = None
    ) -> emb.UpsertDocumentsResponse:
        return self._unary(self.stub.UpsertDocuments, request, timeout_s)

    def get_documents(
        self, request: emb.GetDocumentsRequest, timeout_s: float | None = None
    ) -> emb.GetDocumentsResponse:
        return self._unary(self.stub.GetDocuments, request, timeout_s)

    def delete_documents(
        self, request: emb.DeleteDocumentsRequest, timeout_s: float | None = None
    ) -> emb.DeleteDocumentsResponse:
        return self._unary(self.stub.DeleteDocuments, request, timeout_s)

    def search_documents(
        self, request: emb.SearchDocumentsRequest, timeout_s: float | None = None
    ) -> emb.SearchDocumentsResponse:
        return self._unary(self.stub.SearchDocuments, request, timeout_s)

    def list_collections(
        self, request: emb.ListCollectionsRequest | None = None, timeout_s: float | None = None
    ) -> emb.ListCollectionsResponse:
        return self._unary(self.stub.ListCollections, request or emb.ListCollectionsRequest(), timeout_s)

    def delete_collection(
        self, request: emb.DeleteCollectionRequest, timeout_s: float | None = None
    ) -> emb.DeleteCollectionResponse:
        return self._unary(self.stub.DeleteCollection, request, timeout_s)

    def adopt_collection(
        self, request: emb.AdoptCollectionRequest, timeout_s: float | None = None
    ) -> emb.AdoptCollectionResponse:
        return self._unary(self.stub.AdoptCollection, request, timeout_s)

    def start_migration(
        self, request: emb.StartMigrationRequest, timeout_s: float | None = None
    ) -> emb.StartMigrationResponse:
        return self._unary(self.stub.StartMigration, request, timeout_s)

    def get_migration(
        self, request: emb.GetMigrationRequest, timeout_s: float | None = None
    ) -> emb.GetMigrationResponse:
        return self._unary(self.stub.GetMigration, request, timeout_s)
