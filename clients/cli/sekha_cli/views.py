"""Plain, JSON-ready views of the services' protobuf messages, shared by the CLI and the MCP server.

Enum values become their short lower-case names (``TASK_CHAT_SMART`` -> ``chat_smart``), int64
fields stay numbers (protobuf's own JSON mapping turns them into strings), unset optional fields
become None, timestamps ISO 8601 strings. Nothing here talks to a server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message

from sekha.embedding.v1 import embedding_service_pb2 as emb
from sekha.router.v1 import router_service_pb2 as rt

__all__ = [
    "CAPABILITY_NAMES",
    "FUSION_NAMES",
    "TASK_NAMES",
    "capability_from_name",
    "chat_result_view",
    "collection_view",
    "decision_view",
    "document_view",
    "enum_name",
    "hit_view",
    "metadata_from_json",
    "migration_view",
    "model_view",
    "provider_status_view",
    "spend_view",
    "state_backend_view",
    "task_from_name",
]

TASK_NAMES: tuple[str, ...] = ("embedding", "chat_small", "chat_smart", "chat_large", "vision", "audio")
CAPABILITY_NAMES: tuple[str, ...] = ("vision", "audio", "tools")
FUSION_NAMES: Mapping[str, emb.FusionMethod] = {
    "rrf": emb.FUSION_METHOD_RECIPROCAL_RANK,
    "minmax": emb.FUSION_METHOD_MIN_MAX,
}


def enum_name(enum_type: Any, value: int, prefix: str) -> str:
    """`TASK_CHAT_SMART` -> `chat_smart`; unknown numbers -> their digits."""
    try:
        name = enum_type.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def task_from_name(name: str) -> rt.Task:
    """`chat_smart` -> TASK_CHAT_SMART; raise ValueError for an unknown task."""
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; use one of {', '.join(TASK_NAMES)}")
    return rt.Task.Value(f"TASK_{name.upper()}")


def capability_from_name(name: str) -> rt.Capability:
    """`vision` -> CAPABILITY_VISION; raise ValueError for an unknown capability."""
    if name not in CAPABILITY_NAMES:
        raise ValueError(f"unknown capability {name!r}; use one of {', '.join(CAPABILITY_NAMES)}")
    return rt.Capability.Value(f"CAPABILITY_{name.upper()}")


def _timestamp(message: Message, field: str) -> str | None:
    if not message.HasField(field):
        return None
    value = getattr(message, field)
    text: str = value.ToJsonString()
    return text


def _seconds(duration: Any) -> float:
    return round(duration.ToNanoseconds() / 1e9, 6)


# ------------------------------------------------------------------------------------- router


def candidate_view(candidate: rt.Candidate) -> dict[str, Any]:
    return {
        "provider_id": candidate.provider_id,
        "model": candidate.model,
        "key": f"{candidate.provider_id}/{candidate.model}",
        "estimated_cost_usd": candidate.estimated_cost_usd
        if candidate.HasField("estimated_cost_usd")
        else None,
        "price_unknown": candidate.price_unknown,
        "priority": candidate.priority,
    }


def decision_view(decision: rt.RoutingDecision) -> dict[str, Any]:
    return {
        "task": enum_name(rt.Task, decision.task, "TASK_"),
        "chosen": candidate_view(decision.chosen) if decision.HasField("chosen") else None,
        "reason": decision.reason,
        "fallbacks": [candidate_view(c) for c in decision.fallbacks],
        "estimated_input_tokens": decision.estimated_input_tokens,
        "estimated_output_tokens": decision.estimated_output_tokens,
        "rejected": [
            {"provider_id": r.provider_id, "model": r.model, "reason": r.reason} for r in decision.rejected
        ],
    }


def chat_result_view(result: rt.ChatResponse | rt.ChatSummary, text: str | None = None) -> dict[str, Any]:
    """A finished chat (a ChatResponse, or a stream's ChatSummary plus the streamed text).

    `provider_id` / `model` are the attempt that answered: after a fallback that is not the
    routing plan's first choice, which `planned` names.
    """
    chosen = result.routing.chosen
    served = next((a for a in reversed(result.attempts) if a.outcome == rt.ATTEMPT_OUTCOME_SUCCEEDED), chosen)
    return {
        "request_id": result.request_id,
        "text": result.text if isinstance(result, rt.ChatResponse) else text,
        "provider_id": served.provider_id,
        "model": served.model,
        "planned": f"{chosen.provider_id}/{chosen.model}",
        "response_model": result.response_model,
        "finish_reason": enum_name(rt.FinishReason, result.finish_reason, "FINISH_REASON_"),
        "input_tokens": result.usage.input_tokens,
        "output_tokens": result.usage.output_tokens,
        "usage_counted_locally": result.usage.counted_locally,
        "cost_usd": result.cost.cost_usd if result.cost.HasField("cost_usd") else None,
        "price_unknown": result.cost.price_unknown,
        "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls],
        "conforms": result.conformance.conforms if result.HasField("conformance") else None,
        "conformance_reason": result.conformance.reason if result.HasField("conformance") else None,
        "attempts": [
            {
                "provider_id": a.provider_id,
                "model": a.model,
                "outcome": enum_name(rt.AttemptOutcome, a.outcome, "ATTEMPT_OUTCOME_"),
                "error_kind": a.error_kind,
                "latency_s": _seconds(a.latency),
            }
            for a in result.attempts
        ],
    }


def model_view(model: rt.Model) -> dict[str, Any]:
    return {
        "provider_id": model.provider_id,
        "model": model.model,
        "key": f"{model.provider_id}/{model.model}",
        "tasks": [enum_name(rt.Task, t, "TASK_") for t in model.tasks],
        "capabilities": [enum_name(rt.Capability, c, "CAPABILITY_") for c in model.capabilities],
        "context_window": model.context_window or None,
        "embedding_dimension": model.embedding_dimension or None,
        "price": None
        if model.price_unknown
        else {
            "input_usd_per_million_tokens": model.price.input_usd_per_million_tokens,
            "output_usd_per_million_tokens": model.price.output_usd_per_million_tokens,
        },
        "price_unknown": model.price_unknown,
        "breaker_state": enum_name(rt.BreakerState, model.breaker_state, "BREAKER_STATE_"),
        "available": model.available,
        "priority": model.priority,
    }


def provider_status_view(provider: rt.ProviderStatus) -> dict[str, Any]:
    breaker = provider.breaker
    probe = None
    if provider.HasField("last_probe"):
        probe = {
            "time": _timestamp(provider.last_probe, "probe_time"),
            "healthy": provider.last_probe.healthy,
            "error_kind": provider.last_probe.error_kind,
            "latency_s": _seconds(provider.last_probe.latency),
        }
    return {
        "provider_id": provider.provider_id,
        "type": provider.type,
        "enabled": provider.enabled,
        "disabled_reason": provider.disabled_reason,
        "priority": provider.priority,
        "model_count": provider.model_count,
        "breaker": {
            "state": enum_name(rt.BreakerState, breaker.state, "BREAKER_STATE_"),
            "consecutive_failures": breaker.consecutive_failures,
            "window_calls": breaker.window_calls,
            "window_failure_rate": breaker.window_failure_rate,
            "open_time": _timestamp(breaker, "open_time"),
            "half_open_time": _timestamp(breaker, "half_open_time"),
        },
        "last_probe": probe,
    }


def state_backend_view(response: rt.GetProviderStatusResponse) -> dict[str, Any] | None:
    """The router's state backend; None from a router too old to report it."""
    if not response.HasField("state_backend"):
        return None
    state = response.state_backend
    return {
        "backend": state.backend,
        "healthy": state.healthy,
        "change_time": _timestamp(state, "change_time"),
        "message": state.message,
    }


def spend_view(spend: rt.GetSpendResponse) -> dict[str, Any]:
    return {
        "available": True,
        "total_cost_usd": spend.total_cost_usd,
        "rows": [
            {
                "key": row.key,
                "cost_usd": row.cost_usd,
                "request_count": row.request_count,
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
            }
            for row in spend.rows
        ],
        "budgets": [
            {
                "scope": b.scope,
                "period": b.period,
                "limit_usd": b.limit_usd,
                "spent_usd": b.spent_usd,
                "reserved_usd": b.reserved_usd,
            }
            for b in spend.budgets
        ],
    }


# ---------------------------------------------------------------------------------- embedding


def metadata_value(value: emb.MetadataValue) -> str | int | float | bool | None:
    kind = value.WhichOneof("kind")
    return getattr(value, kind) if kind is not None else None


def metadata_from_json(metadata: Mapping[str, Any]) -> dict[str, emb.MetadataValue]:
    """JSON scalars -> MetadataValue; raise ValueError naming the key for anything else."""
    converted: dict[str, emb.MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"metadata key {key!r} is not a string")
        # bool first: it is an int subclass and would otherwise be stored as 0/1.
        if isinstance(value, bool):
            converted[key] = emb.MetadataValue(bool_value=value)
        elif isinstance(value, int):
            converted[key] = emb.MetadataValue(int_value=value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"metadata {key!r} is not a finite number")
            converted[key] = emb.MetadataValue(double_value=value)
        elif isinstance(value, str):
            converted[key] = emb.MetadataValue(string_value=value)
        else:
            raise ValueError(
                f"metadata {key!r} must be a string, number or boolean, not {type(value).__name__}"
            )
    return converted


def document_view(document: emb.Document, *, with_vector: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": document.id,
        "text": document.text,
        "metadata": {key: metadata_value(value) for key, value in sorted(document.metadata.items())},
    }
    if with_vector:
        view["embedding"] = list(document.embedding)
    return view


def hit_view(hit: emb.SearchHit) -> dict[str, Any]:
    return {
        **document_view(hit.document),
        "score": hit.score,
        "matches": [
            {"collection": m.collection, "rank": m.rank, "distance": m.distance} for m in hit.matches
        ],
    }


def collection_view(info: emb.CollectionInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "base": info.base,
        "dimension": info.dimension,
        "model": info.model,
        "distance_metric": enum_name(emb.DistanceMetric, info.distance_metric, "DISTANCE_METRIC_"),
        "document_count": info.document_count,
        "create_time": _timestamp(info, "create_time"),
        "serving_reads": info.serving_reads,
        "receiving_writes": info.receiving_writes,
    }


def migration_view(migration: emb.Migration) -> dict[str, Any]:
    return {
        "id": migration.id,
        "base": migration.base,
        "source_collection": migration.source_collection,
        "target_collection": migration.target_collection,
        "target_model": migration.target_model,
        "state": enum_name(emb.MigrationState, migration.state, "MIGRATION_STATE_"),
        "total_documents": migration.total_documents,
        "migrated_documents": migration.migrated_documents,
        "create_time": _timestamp(migration, "create_time"),
        "update_time": _timestamp(migration, "update_time"),
        "error": migration.error,
    }
