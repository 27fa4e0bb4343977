"""The EmbeddingService servicer: converts protobuf to domain, delegates, converts back."""

from __future__ import annotations

from typing import TypeAlias

import grpc

from embedding_service.rpc import convert
from embedding_service.service import EmbeddingStoreService
from sekha.embedding.v1 import embedding_service_pb2 as pb
from sekha.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from sekha_runtime.errors import FieldViolation, InvalidArgumentError

Context: TypeAlias = grpc.aio.ServicerContext


class EmbeddingServicer(pb_grpc.EmbeddingServiceServicer):
    def __init__(self, service: EmbeddingStoreService) -> None:
        self.service = service

    async def UpsertDocuments(
        self, request: pb.UpsertDocumentsRequest, context: Context
    ) -> pb.UpsertDocumentsResponse:
        result = await self.service.upsert(
            request.base,
            convert.documents_from_pb(request.documents),
            request.model or None,
            request.request_id,
            deadline_s=context.time_remaining(),
        )
        return pb.UpsertDocumentsResponse(
            upserted_count=result.upserted_count,
            collections=[convert.collection_to_pb(c) for c in result.collections],
        )

    async def GetDocuments(
        self, request: pb.GetDocumentsRequest, context: Context
    ) -> pb.GetDocumentsResponse:
        result = await self.service.get(
            request.base,
            ids=list(request.ids),
            dimension=request.dimension,
            include_embeddings=request.include_embeddings,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.GetDocumentsResponse(
            documents=[convert.document_to_pb(doc) for doc in result.documents],
            collection=result.collection,
            next_page_token=result.next_page_token,
            collections=result.collections,
        )

    async def DeleteDocuments(
        self, request: pb.DeleteDocumentsRequest, context: Context
    ) -> pb.DeleteDocumentsResponse:
        where = convert.where_from_pb(
            request.metadata_filter, request.HasField("metadata_filter"), "metadata_filter"
        )
        deleted = await self.service.delete(request.base, ids=list(request.ids), where=where)
        return pb.DeleteDocumentsResponse(deleted_count=deleted)

    async def SearchDocuments(
        self, request: pb.SearchDocumentsRequest, context: Context
    ) -> pb.SearchDocumentsResponse:
        fusion = convert.FUSION_FROM_PB.get(request.fusion_method)
        if fusion is None:
            raise InvalidArgumentError(
                FieldViolation("fusion_method", f"unknown value {request.fusion_method}")
            )
        where = convert.where_from_pb(
            request.metadata_filter, request.HasField("metadata_filter"), "metadata_filter"
        )
        result = await self.service.search(
            request.base,
            request.query,
            top_k=request.top_k,
            dimensions=list(request.dimensions),
            fusion_method=fusion,
            rrf_k=request.rrf_k,
            collection_weights=dict(request.collection_weights) or None,
            where=where,
            request_id=request.request_id,
        )
        return pb.SearchDocumentsResponse(
            hits=[convert.hit_to_pb(hit) for hit in result.hits], collections=result.collections
        )

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: Context
    ) -> pb.ListCollectionsResponse:
        page = await self.service.list_collections(request.base, request.page_size, request.page_token)
        return pb.ListCollectionsResponse(
            collections=[convert.collection_to_pb(c) for c in page.collections],
            next_page_token=page.next_page_token,
        )

    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: Context
    ) -> pb.DeleteCollectionResponse:
        return pb.DeleteCollectionResponse(name=await self.service.delete_collection(request.name))

    async def AdoptCollection(
        self, request: pb.AdoptCollectionRequest, context: Context
    ) -> pb.AdoptCollectionResponse:
        info = await self.service.adopt(request.source_collection, request.base, request.model)
        return pb.AdoptCollectionResponse(collection=convert.collection_to_pb(info))

    async def StartMigration(
        self, request: pb.StartMigrationRequest, context: Context
    ) -> pb.StartMigrationResponse:
        migration = await self.service.start_migration(request.base, request.target_model, request.batch_size)
        return pb.StartMigrationResponse(migration=convert.migration_to_pb(migration))

    async def GetMigration(
        self, request: pb.GetMigrationRequest, context: Context
    ) -> pb.GetMigrationResponse:
        return pb.GetMigrationResponse(
            migration=convert.migration_to_pb(await self.service.get_migration(request.id))
        )
