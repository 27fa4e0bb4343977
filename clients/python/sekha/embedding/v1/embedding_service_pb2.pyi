import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FusionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_METHOD_UNSPECIFIED: _ClassVar[FusionMethod]
    FUSION_METHOD_RECIPROCAL_RANK: _ClassVar[FusionMethod]
    FUSION_METHOD_MIN_MAX: _ClassVar[FusionMethod]

class DistanceMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTANCE_METRIC_UNSPECIFIED: _ClassVar[DistanceMetric]
    DISTANCE_METRIC_COSINE: _ClassVar[DistanceMetric]
    DISTANCE_METRIC_L2: _ClassVar[DistanceMetric]
    DISTANCE_METRIC_INNER_PRODUCT: _ClassVar[DistanceMetric]

class MigrationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_STATE_UNSPECIFIED: _ClassVar[MigrationState]
    MIGRATION_STATE_PENDING: _ClassVar[MigrationState]
    MIGRATION_STATE_BACKFILLING: _ClassVar[MigrationState]
    MIGRATION_STATE_VERIFYING: _ClassVar[MigrationState]
    MIGRATION_STATE_COMPLETED: _ClassVar[MigrationState]
    MIGRATION_STATE_FAILED: _ClassVar[MigrationState]
FUSION_METHOD_UNSPECIFIED: FusionMethod
FUSION_METHOD_RECIPROCAL_RANK: FusionMethod
FUSION_METHOD_MIN_MAX: FusionMethod
DISTANCE_METRIC_UNSPECIFIED: DistanceMetric
DISTANCE_METRIC_COSINE: DistanceMetric
DISTANCE_METRIC_L2: DistanceMetric
DISTANCE_METRIC_INNER_PRODUCT: DistanceMetric
MIGRATION_STATE_UNSPECIFIED: MigrationState
MIGRATION_STATE_PENDING: MigrationState
MIGRATION_STATE_BACKFILLING: MigrationState
MIGRATION_STATE_VERIFYING: MigrationState
MIGRATION_STATE_COMPLETED: MigrationState
MIGRATION_STATE_FAILED: MigrationState

class MetadataValue(_message.Message):
    __slots__ = ("string_value", "int_value", "double_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    int_value: int
    double_value: float
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "metadata", "embedding")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MetadataValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MetadataValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata: _containers.MessageMap[str, MetadataValue]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Mapping[str, MetadataValue]] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "base", "dimension", "model", "distance_metric", "document_count", "create_time", "serving_reads", "receiving_writes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_METRIC_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SERVING_READS_FIELD_NUMBER: _ClassVar[int]
    RECEIVING_WRITES_FIELD_NUMBER: _ClassVar[int]
    name: str
    base: str
    dimension: int
    model: str
    distance_metric: DistanceMetric
    document_count: int
    create_time: _timestamp_pb2.Timestamp
    serving_reads: bool
    receiving_writes: bool
    def __init__(self, name: _Optional[str] = ..., base: _Optional[str] = ..., dimension: _Optional[int] = ..., model: _Optional[str] = ..., distance_metric: _Optional[_Union[DistanceMetric, str]] = ..., document_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., serving_reads: _Optional[bool] = ..., receiving_writes: _Optional[bool] = ...) -> None: ...

class UpsertDocumentsRequest(_message.Message):
    __slots__ = ("base", "documents", "model", "request_id")
    BASE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    base: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    model: str
    request_id: str
    def __init__(self, base: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., model: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpsertDocumentsResponse(_message.Message):
    __slots__ = ("upserted_count", "collections")
    UPSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    upserted_count: int
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    def __init__(self, upserted_count: _Optional[int] = ..., collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ...) -> None: ...

class GetDocumentsRequest(_message.Message):
    __slots__ = ("base", "ids", "dimension", "include_embeddings", "page_size", "page_token")
    BASE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    base: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    dimension: int
    include_embeddings: bool
    page_size: int
    page_token: str
    def __init__(self, base: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., dimension: _Optional[int] = ..., include_embeddings: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetDocumentsResponse(_message.Message):
    __slots__ = ("documents", "collection", "next_page_token", "collections")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    collection: str
    next_page_token: str
    collections: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., collection: _Optional[str] = ..., next_page_token: _Optional[str] = ..., collections: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteDocumentsRequest(_message.Message):
    __slots__ = ("base", "ids", "metadata_filter")
    BASE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FILTER_FIELD_NUMBER: _ClassVar[int]
    base: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    metadata_filter: _struct_pb2.Struct
    def __init__(self, base: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., metadata_filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class DeleteDocumentsResponse(_message.Message):
    __slots__ = ("deleted_count",)
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    def __init__(self, deleted_count: _Optional[int] = ...) -> None: ...

class SearchDocumentsRequest(_message.Message):
    __slots__ = ("base", "query", "top_k", "dimensions", "fusion_method", "rrf_k", "collection_weights", "metadata_filter", "request_id")
    class CollectionWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BASE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    FUSION_METHOD_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FILTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    base: str
    query: str
    top_k: int
    dimensions: _containers.RepeatedScalarFieldContainer[int]
    fusion_method: FusionMethod
    rrf_k: int
    collection_weights: _containers.ScalarMap[str, float]
    metadata_filter: _struct_pb2.Struct
    request_id: str
    def __init__(self, base: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., dimensions: _Optional[_Iterable[int]] = ..., fusion_method: _Optional[_Union[FusionMethod, str]] = ..., rrf_k: _Optional[int] = ..., collection_weights: _Optional[_Mapping[str, float]] = ..., metadata_filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CollectionMatch(_message.Message):
    __slots__ = ("collection", "rank", "distance")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    rank: int
    distance: float
    def __init__(self, collection: _Optional[str] = ..., rank: _Optional[int] = ..., distance: _Optional[float] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("document", "score", "matches")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    document: Document
    score: float
    matches: _containers.RepeatedCompositeFieldContainer[CollectionMatch]
    def __init__(self, document: _Optional[_Union[Document, _Mapping]] = ..., score: _Optional[float] = ..., matches: _Optional[_Iterable[_Union[CollectionMatch, _Mapping]]] = ...) -> None: ...

class SearchDocumentsResponse(_message.Message):
    __slots__ = ("hits", "collections")
    HITS_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    collections: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., collections: _Optional[_Iterable[str]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("base", "page_size", "page_token")
    BASE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    base: str
    page_size: int
    page_token: str
    def __init__(self, base: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_page_token")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    next_page_token: str
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AdoptCollectionRequest(_message.Message):
    __slots__ = ("source_collection", "base", "model")
    SOURCE_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    source_collection: str
    base: str
    model: str
    def __init__(self, source_collection: _Optional[str] = ..., base: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class AdoptCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionInfo
    def __init__(self, collection: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...

class Migration(_message.Message):
    __slots__ = ("id", "base", "source_collection", "target_collection", "target_model", "state", "total_documents", "migrated_documents", "create_time", "update_time", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MIGRATED_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    base: str
    source_collection: str
    target_collection: str
    target_model: str
    state: MigrationState
    total_documents: int
    migrated_documents: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    error: str
    def __init__(self, id: _Optional[str] = ..., base: _Optional[str] = ..., source_collection: _Optional[str] = ..., target_collection: _Optional[str] = ..., target_model: _Optional[str] = ..., state: _Optional[_Union[MigrationState, str]] = ..., total_documents: _Optional[int] = ..., migrated_documents: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class StartMigrationRequest(_message.Message):
    __slots__ = ("base", "target_model", "batch_size")
    BASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    base: str
    target_model: str
    batch_size: int
    def __init__(self, base: _Optional[str] = ..., target_model: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class StartMigrationResponse(_message.Message):
    __slots__ = ("migration",)
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    migration: Migration
    def __init__(self, migration: _Optional[_Union[Migration, _Mapping]] = ...) -> None: ...

class GetMigrationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetMigrationResponse(_message.Message):
    __slots__ = ("migration",)
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    migration: Migration
    def __init__(self, migration: _Optional[_Union[Migration, _Mapping]] = ...) -> None: ...
