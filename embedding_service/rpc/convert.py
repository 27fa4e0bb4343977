"""Protobuf <-> domain conversion for the Embedding service."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from embedding_service import domain as d
from sekha.embedding.v1 import embedding_service_pb2 as pb
from sekha_runtime.errors import FieldViolation, InvalidArgumentError
from sekha_runtime.server.messages import RequestChecker

FUSION_FROM_PB = {
    pb.FUSION_METHOD_UNSPECIFIED: d.FusionMethod.RECIPROCAL_RANK,
    pb.FUSION_METHOD_RECIPROCAL_RANK: d.FusionMethod.RECIPROCAL_RANK,
    pb.FUSION_METHOD_MIN_MAX: d.FusionMethod.MIN_MAX,
}
DISTANCE_TO_PB = {
    d.DistanceMetric.COSINE: pb.DISTANCE_METRIC_COSINE,
    d.DistanceMetric.L2: pb.DISTANCE_METRIC_L2,
    d.DistanceMetric.INNER_PRODUCT: pb.DISTANCE_METRIC_INNER_PRODUCT,
}
MIGRATION_STATE_TO_PB = {
    d.MigrationState.PENDING: pb.MIGRATION_STATE_PENDING,
    d.MigrationState.BACKFILLING: pb.MIGRATION_STATE_BACKFILLING,
    d.MigrationState.VERIFYING: pb.MIGRATION_STATE_VERIFYING,
    d.MigrationState.COMPLETED: pb.MIGRATION_STATE_COMPLETED,
    d.MigrationState.FAILED: pb.MIGRATION_STATE_FAILED,
}


# Identifiers an error may echo (a collection or migration it did not find), capped before any
# handler sees them. Document ids have their own, configured limit (defaults.max_id_chars).
IDENTIFIER_LIMITS = {
    "base": 256,
    "model": 256,
    "target_model": 256,
    "name": 256,
    "source_collection": 256,
    "GetMigrationRequest.id": 128,
    "request_id": 128,
    "page_token": 1024,
}


_REQUEST_CHECKER = RequestChecker(IDENTIFIER_LIMITS)


def check_request(request: Message) -> None:
    """What holds for every Embedding request, whatever the RPC: each enum field at any depth holds
    a declared value, and identifiers fit their caps. Raises InvalidArgumentError naming the fields."""
    violations = _REQUEST_CHECKER.violations(request)
    if violations:
        raise InvalidArgumentError(violations)


def metadata_from_pb(values: Mapping[str, pb.MetadataValue], path: str, out: list[FieldViolation]) -> dict:
    metadata: dict[str, d.MetadataValue] = {}
    for key, value in values.items():
        kind = value.WhichOneof("kind")
        if kind is None:
            out.append(
                FieldViolation(f"{path}.metadata[{key}]", "set one of string, int, double or bool value")
            )
            continue
        metadata[key] = getattr(value, kind)
    return metadata


def metadata_to_pb(metadata: Mapping[str, d.MetadataValue]) -> dict[str, pb.MetadataValue]:
    out = {}
    for key, value in metadata.items():
        # bool first: it is an int subclass.
        if isinstance(value, bool):
            out[key] = pb.MetadataValue(bool_value=value)
        elif isinstance(value, int):
            out[key] = pb.MetadataValue(int_value=value)
        elif isinstance(value, float):
            out[key] = pb.MetadataValue(double_value=value)
        else:
            out[key] = pb.MetadataValue(string_value=str(value))
    return out


def documents_from_pb(documents: Iterable[pb.Document]) -> list[d.DocumentIn]:
    violations: list[FieldViolation] = []
    converted = []
    for i, doc in enumerate(documents):
        metadata = metadata_from_pb(doc.metadata, f"documents[{i}]", violations)
        converted.append(d.DocumentIn(id=doc.id, text=doc.text, metadata=metadata))
    if violations:
        raise InvalidArgumentError(violations)
    return converted


def where_from_pb(message: object, has_field: bool, field: str) -> dict | None:
    """A Chroma where filter from a Struct; integral numbers become ints (Struct only has doubles)."""
    if not has_field:
        return None
    assert isinstance(message, struct_pb2.Struct)
    try:
        where = json_format.MessageToDict(message)
    except (json_format.Error, ValueError):  # NaN or infinity: a JSON-like filter cannot hold them
        raise InvalidArgumentError(FieldViolation(field, "must hold only finite numbers")) from None
    if not where:
        return None

    def fix(value: object) -> object:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    fixed = fix(where)
    if not isinstance(fixed, dict):
        raise InvalidArgumentError(FieldViolation(field, "must be an object"))
    return fixed


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def document_to_pb(doc: d.Document) -> pb.Document:
    return pb.Document(
        id=doc.id, text=doc.text, metadata=metadata_to_pb(doc.metadata), embedding=doc.embedding or []
    )


def collection_to_pb(info: d.CollectionInfo) -> pb.CollectionInfo:
    return pb.CollectionInfo(
        name=info.name,
        base=info.base,
        dimension=info.dimension,
        model=info.model,
        distance_metric=DISTANCE_TO_PB.get(info.distance_metric, pb.DISTANCE_METRIC_UNSPECIFIED),
        document_count=info.document_count,
        create_time=timestamp(info.created_at),
        serving_reads=info.serving_reads,
        receiving_writes=info.receiving_writes,
    )


def hit_to_pb(hit: d.Hit) -> pb.SearchHit:
    return pb.SearchHit(
        document=pb.Document(id=hit.id, text=hit.text, metadata=metadata_to_pb(hit.metadata)),
        score=hit.score,
        matches=[
            pb.CollectionMatch(collection=m.collection, rank=m.rank, distance=m.distance) for m in hit.matches
        ],
    )


def migration_to_pb(migration: d.Migration) -> pb.Migration:
    return pb.Migration(
        id=migration.id,
        base=migration.base,
        source_collection=migration.source_collection,
        target_collection=migration.target_collection,
        target_model=migration.target_model,
        state=MIGRATION_STATE_TO_PB[migration.state],
        total_documents=migration.total_documents,
        migrated_documents=migration.migrated_documents,
        create_time=timestamp(migration.created_at),
        update_time=timestamp(migration.updated_at),
        error=migration.error,
    )
