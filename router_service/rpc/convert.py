"""Protobuf <-> domain conversion for the Router service.

Structural problems a protobuf cannot express (a content part with neither
text nor image, an image without a source) are reported here, as field
violations named by their proto path; limits live in `router_service.validation`.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from router_service import domain as d
from router_service.catalog import ModelView, ProviderView
from router_service.events import StateBackendView
from router_service.spend import SpendReport
from router_service.state.base import SpendGrouping
from router_service.structured import schema_problem
from sekha.router.v1 import router_service_pb2 as pb
from sekha_runtime.errors import FieldViolation, InvalidArgumentError
from sekha_runtime.server.messages import RequestChecker

TASK_FROM_PB = {
    pb.TASK_EMBEDDING: d.Task.EMBEDDING,
    pb.TASK_CHAT_SMALL: d.Task.CHAT_SMALL,
    pb.TASK_CHAT_SMART: d.Task.CHAT_SMART,
    pb.TASK_CHAT_LARGE: d.Task.CHAT_LARGE,
    pb.TASK_VISION: d.Task.VISION,
    pb.TASK_AUDIO: d.Task.AUDIO,
}
TASK_TO_PB = {v: k for k, v in TASK_FROM_PB.items()}
CAPABILITY_FROM_PB = {
    pb.CAPABILITY_VISION: d.Capability.VISION,
    pb.CAPABILITY_AUDIO: d.Capability.AUDIO,
    pb.CAPABILITY_TOOLS: d.Capability.TOOLS,
    pb.CAPABILITY_STRUCTURED_OUTPUT: d.Capability.STRUCTURED_OUTPUT,
    pb.CAPABILITY_REASONING: d.Capability.REASONING,
}
CAPABILITY_TO_PB = {v: k for k, v in CAPABILITY_FROM_PB.items()}
ROLE_FROM_PB = {
    pb.ROLE_UNSPECIFIED: d.Role.USER,
    pb.ROLE_SYSTEM: d.Role.SYSTEM,
    pb.ROLE_USER: d.Role.USER,
    pb.ROLE_ASSISTANT: d.Role.ASSISTANT,
    pb.ROLE_TOOL: d.Role.TOOL,
}
TOOL_CHOICE_MODE_FROM_PB = {
    pb.TOOL_CHOICE_MODE_AUTO: d.ToolChoiceMode.AUTO,
    pb.TOOL_CHOICE_MODE_NONE: d.ToolChoiceMode.NONE,
    pb.TOOL_CHOICE_MODE_REQUIRED: d.ToolChoiceMode.REQUIRED,
}
RESPONSE_FORMAT_FROM_PB = {
    pb.RESPONSE_FORMAT_TYPE_UNSPECIFIED: d.ResponseFormatType.TEXT,
    pb.RESPONSE_FORMAT_TYPE_TEXT: d.ResponseFormatType.TEXT,
    pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT: d.ResponseFormatType.JSON_OBJECT,
    pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: d.ResponseFormatType.JSON_SCHEMA,
}
REASONING_EFFORT_FROM_PB = {
    pb.REASONING_EFFORT_LOW: d.ReasoningEffort.LOW,
    pb.REASONING_EFFORT_MEDIUM: d.ReasoningEffort.MEDIUM,
    pb.REASONING_EFFORT_HIGH: d.ReasoningEffort.HIGH,
}
COST_PART_TO_PB = {
    d.CostPart.INPUT: pb.COST_PART_INPUT,
    d.CostPart.CACHED_INPUT: pb.COST_PART_CACHED_INPUT,
    d.CostPart.CACHE_WRITE_INPUT: pb.COST_PART_CACHE_WRITE_INPUT,
    d.CostPart.OUTPUT: pb.COST_PART_OUTPUT,
    d.CostPart.REASONING: pb.COST_PART_REASONING,
}
DETAIL_FROM_PB = {
    pb.IMAGE_DETAIL_UNSPECIFIED: "auto",
    pb.IMAGE_DETAIL_AUTO: "auto",
    pb.IMAGE_DETAIL_LOW: "low",
    pb.IMAGE_DETAIL_HIGH: "high",
}
FINISH_TO_PB = {
    d.FinishReason.UNSPECIFIED: pb.FINISH_REASON_UNSPECIFIED,
    d.FinishReason.STOP: pb.FINISH_REASON_STOP,
    d.FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    d.FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    d.FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}
OUTCOME_TO_PB = {
    d.AttemptOutcome.SUCCEEDED: pb.ATTEMPT_OUTCOME_SUCCEEDED,
    d.AttemptOutcome.FAILED: pb.ATTEMPT_OUTCOME_FAILED,
    d.AttemptOutcome.REJECTED: pb.ATTEMPT_OUTCOME_REJECTED,
    d.AttemptOutcome.SKIPPED: pb.ATTEMPT_OUTCOME_SKIPPED,
}


# Identifiers an error may echo (a provider or model it did not find), capped before any handler
# sees them. Longer than any real one: config ids and model names are far shorter.
IDENTIFIER_LIMITS = {
    "provider_id": 128,
    "preferred_model": 256,
    "caller": 256,
    "request_id": 128,
    "page_token": 1024,
}


_REQUEST_CHECKER = RequestChecker(IDENTIFIER_LIMITS)


def check_request(request: Message) -> None:
    """What holds for every Router request, whatever the RPC: each enum field at any depth holds a
    declared value, and identifiers fit their caps. Raises InvalidArgumentError naming the fields."""
    violations = _REQUEST_CHECKER.violations(request)
    if violations:
        raise InvalidArgumentError(violations)


def routing_from_pb(msg: pb.RoutingPreferences, violations: list[FieldViolation]) -> d.RoutingPreferences:
    task = None
    if msg.task != pb.TASK_UNSPECIFIED:
        task = TASK_FROM_PB.get(msg.task)
        if task is None:
            violations.append(FieldViolation("routing.task", f"unknown task value {msg.task}"))
    capabilities = set()
    for i, cap in enumerate(msg.required_capabilities):
        known = CAPABILITY_FROM_PB.get(cap)
        if known is None:
            violations.append(
                FieldViolation(f"routing.required_capabilities[{i}]", f"unknown capability value {cap}")
            )
        else:
            capabilities.add(known)
    max_cost = msg.max_cost_usd if msg.HasField("max_cost_usd") else None
    if max_cost is not None and not max_cost >= 0:  # also rejects NaN
        violations.append(FieldViolation("routing.max_cost_usd", "must be >= 0"))
    return d.RoutingPreferences(
        task=task,
        preferred_model=msg.preferred_model.strip(),
        required_capabilities=frozenset(capabilities),
        max_cost_usd=max_cost,
        disable_fallback=msg.disable_fallback,
        fallback_on_nonconforming=msg.fallback_on_nonconforming,
    )


def messages_from_pb(
    messages: Sequence[pb.ChatMessage], violations: list[FieldViolation]
) -> tuple[d.ChatMessage, ...]:
    # Repeated fields are sliced into lists before the loops: iterating a upb container directly
    # costs about four times as much, and this runs for every message of every chat.
    converted = []
    for i, message in enumerate(messages[:]):
        role = ROLE_FROM_PB.get(message.role)
        if role is None:
            violations.append(FieldViolation(f"messages[{i}].role", f"unknown role value {message.role}"))
            role = d.Role.USER
        calls = message.tool_calls[:]
        tool_calls = (
            tuple(d.ToolCall(id=call.id, name=call.name, arguments=call.arguments) for call in calls)
            if calls
            else ()
        )
        if tool_calls:
            if role is not d.Role.ASSISTANT:
                violations.append(
                    FieldViolation(
                        f"messages[{i}].tool_calls", "only an assistant message carries tool calls"
                    )
                )
            for k, call in enumerate(tool_calls):
                if not call.id:
                    violations.append(FieldViolation(f"messages[{i}].tool_calls[{k}].id", "is required"))
                if not call.name:
                    violations.append(FieldViolation(f"messages[{i}].tool_calls[{k}].name", "is required"))
        tool_call_id = message.tool_call_id
        if role is d.Role.TOOL and not tool_call_id:
            violations.append(
                FieldViolation(f"messages[{i}].tool_call_id", "a tool message names the call it answers")
            )
        elif tool_call_id and role is not d.Role.TOOL:
            violations.append(FieldViolation(f"messages[{i}].tool_call_id", "only a tool message has one"))
        pb_parts = message.parts[:]
        if not pb_parts and not tool_calls:
            violations.append(FieldViolation(f"messages[{i}].parts", "a message needs at least one part"))
        parts = []
        for j, part in enumerate(pb_parts):
            if part.HasField("text"):  # the common case, decided without WhichOneof
                parts.append(d.ContentPart(text=part.text))
                continue
            path = f"messages[{i}].parts[{j}]"
            if not part.HasField("image"):
                violations.append(FieldViolation(path, "set either text or image"))
                continue
            image = part.image
            source = image.WhichOneof("source")
            if source is None:
                violations.append(FieldViolation(f"{path}.image", "set either url or data"))
                continue
            parts.append(
                d.ContentPart(
                    image=d.ImagePart(
                        url=image.url if source == "url" else None,
                        data=image.data if source == "data" else None,
                        mime_type=image.mime_type,
                        detail=DETAIL_FROM_PB.get(image.detail, "auto"),
                    )
                )
            )
            if role is d.Role.TOOL:
                violations.append(FieldViolation(path, "a tool result is text"))
        converted.append(
            d.ChatMessage(role=role, parts=tuple(parts), tool_calls=tool_calls, tool_call_id=tool_call_id)
        )
    return tuple(converted)


def generation_from_pb(msg: pb.GenerationConfig, violations: list[FieldViolation]) -> d.GenerationConfig:
    max_tokens = msg.max_tokens if msg.HasField("max_tokens") else None
    if max_tokens is not None and max_tokens <= 0:
        violations.append(FieldViolation("generation.max_tokens", "must be > 0"))
    temperature = msg.temperature if msg.HasField("temperature") else None
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        violations.append(FieldViolation("generation.temperature", "must be between 0 and 2"))
    top_p = msg.top_p if msg.HasField("top_p") else None
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        violations.append(FieldViolation("generation.top_p", "must be between 0 and 1"))
    penalties = {}
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(msg, name) if msg.HasField(name) else None
        if value is not None and not -2.0 <= value <= 2.0:
            violations.append(FieldViolation(f"generation.{name}", "must be between -2 and 2"))
        penalties[name] = value
    effort = None
    if msg.reasoning_effort != pb.REASONING_EFFORT_UNSPECIFIED:
        effort = REASONING_EFFORT_FROM_PB.get(msg.reasoning_effort)
        if effort is None:
            violations.append(
                FieldViolation(
                    "generation.reasoning_effort", f"unknown reasoning effort value {msg.reasoning_effort}"
                )
            )
    return d.GenerationConfig(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop_sequences=tuple(msg.stop_sequences[:]),
        seed=msg.seed if msg.HasField("seed") else None,
        presence_penalty=penalties["presence_penalty"],
        frequency_penalty=penalties["frequency_penalty"],
        reasoning_effort=effort,
    )


def _whole_numbers(value: Any) -> Any:
    """Struct numbers are doubles; whole ones go back to ints (`"maxItems": 3`, not 3.0).

    JSON does not tell 3 from 3.0 and JSON Schema treats them alike, but providers and the
    people reading their logs expect the schema as it was written.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _struct_to_dict(value: struct_pb2.Struct, path: str, violations: list[FieldViolation]) -> dict[str, Any]:
    """A Struct as plain JSON values; a number JSON cannot carry (NaN, infinity) is a violation at `path`."""
    try:
        converted: dict[str, Any] = _whole_numbers(json_format.MessageToDict(value))
    except (json_format.Error, ValueError):
        violations.append(FieldViolation(path, "is not valid JSON: numbers must be finite"))
        return {}
    return converted


def tools_from_pb(tools: Sequence[pb.Tool], violations: list[FieldViolation]) -> tuple[d.Tool, ...]:
    converted = []
    seen: set[str] = set()
    for i, tool in enumerate(tools[:]):
        if not tool.name:
            violations.append(FieldViolation(f"tools[{i}].name", "is required"))
        elif tool.name in seen:
            violations.append(FieldViolation(f"tools[{i}].name", f"duplicate tool name {tool.name!r}"))
        seen.add(tool.name)
        parameters = (
            _struct_to_dict(tool.parameters, f"tools[{i}].parameters", violations)
            if tool.HasField("parameters")
            else None
        )
        if parameters is not None and parameters.get("type", "object") != "object":
            violations.append(
                FieldViolation(f"tools[{i}].parameters", "must be a JSON Schema of type object")
            )
        converted.append(
            d.Tool(name=tool.name, description=tool.description, parameters=parameters, strict=tool.strict)
        )
    return tuple(converted)


def tool_choice_from_pb(
    msg: pb.ChatRequest | pb.StreamChatRequest, tools: tuple[d.Tool, ...], violations: list[FieldViolation]
) -> d.ToolChoice | None:
    if not msg.HasField("tool_choice"):
        return None
    choice = msg.tool_choice
    kind = choice.WhichOneof("choice")
    if kind is None:
        return None
    if not tools:
        violations.append(FieldViolation("tool_choice", "requires tools"))
        return None
    if kind == "tool_name":
        if choice.tool_name not in {t.name for t in tools}:
            violations.append(
                FieldViolation("tool_choice.tool_name", f"names no tool of the request: {choice.tool_name!r}")
            )
        return d.ToolChoice(tool_name=choice.tool_name)
    if choice.mode == pb.TOOL_CHOICE_MODE_UNSPECIFIED:
        return None
    mode = TOOL_CHOICE_MODE_FROM_PB.get(choice.mode)
    if mode is None:
        violations.append(FieldViolation("tool_choice.mode", f"unknown tool choice mode value {choice.mode}"))
        return None
    return d.ToolChoice(mode=mode)


def response_format_from_pb(msg: pb.ResponseFormat, violations: list[FieldViolation]) -> d.ResponseFormat:
    kind = RESPONSE_FORMAT_FROM_PB.get(msg.type)
    if kind is None:
        violations.append(FieldViolation("response_format.type", f"unknown response format value {msg.type}"))
        return d.ResponseFormat()
    has_schema = msg.HasField("json_schema")
    if kind is not d.ResponseFormatType.JSON_SCHEMA:
        if has_schema:
            violations.append(
                FieldViolation(
                    "response_format.json_schema", "is set only with RESPONSE_FORMAT_TYPE_JSON_SCHEMA"
                )
            )
        return d.ResponseFormat(type=kind)
    if not has_schema or not msg.json_schema.HasField("schema"):
        violations.append(
            FieldViolation(
                "response_format.json_schema.schema", "is required with RESPONSE_FORMAT_TYPE_JSON_SCHEMA"
            )
        )
        return d.ResponseFormat(type=kind, schema={})
    schema = _struct_to_dict(msg.json_schema.schema, "response_format.json_schema.schema", violations)
    problem = schema_problem(schema)
    if problem is not None:
        violations.append(FieldViolation("response_format.json_schema.schema", problem))
    return d.ResponseFormat(
        type=kind,
        schema=schema,
        schema_name=msg.json_schema.name,
        description=msg.json_schema.description,
        strict=msg.json_schema.strict,
    )


def chat_request_from_pb(msg: pb.ChatRequest | pb.StreamChatRequest) -> d.ChatRequest:
    violations: list[FieldViolation] = []
    routing = routing_from_pb(msg.routing, violations)
    messages = messages_from_pb(msg.messages, violations)
    if not messages:
        violations.append(FieldViolation("messages", "at least one message is required"))
    generation = generation_from_pb(msg.generation, violations)
    tools = tools_from_pb(msg.tools, violations)
    tool_choice = tool_choice_from_pb(msg, tools, violations)
    parallel = msg.parallel_tool_calls if msg.HasField("parallel_tool_calls") else None
    if parallel is not None and not tools:
        violations.append(FieldViolation("parallel_tool_calls", "requires tools"))
    response_format = response_format_from_pb(msg.response_format, violations)
    if violations:
        raise InvalidArgumentError(violations)
    return d.ChatRequest(
        messages=messages,
        routing=routing,
        generation=generation,
        request_id=msg.request_id,
        metadata=dict(msg.metadata) if msg.metadata else {},
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        response_format=response_format,
        user=msg.user,
    )


def embed_request_from_pb(msg: pb.EmbedRequest) -> d.EmbedRequest:
    violations: list[FieldViolation] = []
    routing = routing_from_pb(msg.routing, violations)
    if not msg.inputs:
        violations.append(FieldViolation("inputs", "at least one input text is required"))
    if violations:
        raise InvalidArgumentError(violations)
    return d.EmbedRequest(
        inputs=tuple(msg.inputs[:]),
        routing=routing,
        request_id=msg.request_id,
        metadata=dict(msg.metadata) if msg.metadata else {},
    )


def route_request_from_pb(
    msg: pb.RouteRequest,
) -> tuple[d.RoutingPreferences, tuple[d.ChatMessage, ...], tuple[str, ...], int | None]:
    violations: list[FieldViolation] = []
    routing = routing_from_pb(msg.routing, violations)
    messages = messages_from_pb(msg.messages, violations)
    max_tokens = msg.max_tokens if msg.HasField("max_tokens") else None
    if max_tokens is not None and max_tokens <= 0:
        violations.append(FieldViolation("max_tokens", "must be > 0"))
    if violations:
        raise InvalidArgumentError(violations)
    return routing, messages, tuple(msg.inputs), max_tokens


def candidate_to_pb(candidate: d.Candidate) -> pb.Candidate:
    out = pb.Candidate(
        provider_id=candidate.provider_id,
        model=candidate.model,
        price_unknown=candidate.price_unknown,
        priority=candidate.priority,
    )
    if candidate.estimated_cost_usd is not None:
        out.estimated_cost_usd = candidate.estimated_cost_usd
    return out


def decision_to_pb(decision: d.RoutingDecision) -> pb.RoutingDecision:
    return pb.RoutingDecision(
        chosen=candidate_to_pb(decision.chosen),
        fallbacks=[candidate_to_pb(c) for c in decision.fallbacks],
        reason=decision.reason,
        estimated_input_tokens=decision.estimated_input_tokens,
        estimated_output_tokens=decision.estimated_output_tokens,
        task=TASK_TO_PB[decision.task],
        rejected=[
            pb.RejectedCandidate(provider_id=r.provider_id, model=r.model, reason=r.reason)
            for r in decision.rejected
        ],
    )


def usage_to_pb(usage: d.Usage) -> pb.Usage:
    return pb.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        counted_locally=usage.counted_locally,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_input_tokens=usage.cache_write_input_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )


def cost_to_pb(cost: d.Cost) -> pb.Cost:
    out = pb.Cost(price_unknown=cost.price_unknown)
    if cost.cost_usd is not None:
        out.cost_usd = cost.cost_usd
    parts = cost.parts
    if parts is not None:
        out.input_cost_usd = parts.input_usd
        out.cached_input_cost_usd = parts.cached_input_usd
        out.cache_write_input_cost_usd = parts.cache_write_input_usd
        out.output_cost_usd = parts.output_usd
        out.reasoning_cost_usd = parts.reasoning_usd
        out.unknown_rate_parts.extend(sorted(COST_PART_TO_PB[p] for p in parts.unknown_rate_parts))
    return out


def tool_calls_to_pb(calls: Iterable[d.ToolCall]) -> list[pb.ToolCall]:
    return [pb.ToolCall(id=call.id, name=call.name, arguments=call.arguments) for call in calls]


def conformance_to_pb(conformance: d.Conformance) -> pb.Conformance:
    return pb.Conformance(conforms=conformance.conforms, reason=conformance.reason)


def stream_output_to_pb(event: d.StreamOutput) -> pb.StreamChatResponse:
    """One streamed piece: text, a tool-call fragment or reasoning text."""
    if isinstance(event, str):
        return pb.StreamChatResponse(delta=pb.ChatDelta(text=event))
    if isinstance(event, d.ToolCallDelta):
        return pb.StreamChatResponse(
            tool_call=pb.ToolCallDelta(
                index=event.index, id=event.id, name=event.name, arguments=event.arguments
            )
        )
    return pb.StreamChatResponse(reasoning=pb.ReasoningDelta(text=event.text))


def duration_to_pb(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


SPEND_GROUPING_FROM_PB = {
    pb.SPEND_GROUPING_UNSPECIFIED: SpendGrouping.CALLER,
    pb.SPEND_GROUPING_CALLER: SpendGrouping.CALLER,
    pb.SPEND_GROUPING_PROVIDER: SpendGrouping.PROVIDER,
    pb.SPEND_GROUPING_MODEL: SpendGrouping.MODEL,
}


def _timestamp_seconds(stamp: timestamp_pb2.Timestamp, field_name: str) -> float:
    """Seconds since the epoch; an out-of-range Timestamp is the caller's error, not ours."""
    try:
        return float(stamp.ToNanoseconds() / 1e9)
    except (ValueError, OverflowError):
        raise InvalidArgumentError(FieldViolation(field_name, "is not a valid timestamp")) from None


def spend_request_from_pb(
    msg: pb.GetSpendRequest, now: float | None = None
) -> tuple[float, float, SpendGrouping, str | None]:
    """(start, end, grouping, caller): start defaults to today 00:00 UTC, end to now."""
    now = time.time() if now is None else now
    if msg.HasField("start_time"):
        start = _timestamp_seconds(msg.start_time, "start_time")
    else:
        today = time.gmtime(now)
        start = float(calendar.timegm((today.tm_year, today.tm_mon, today.tm_mday, 0, 0, 0)))
    end = _timestamp_seconds(msg.end_time, "end_time") if msg.HasField("end_time") else now
    if end <= start:
        raise InvalidArgumentError(FieldViolation("end_time", "must be after start_time"))
    grouping = SPEND_GROUPING_FROM_PB.get(msg.grouping)
    if grouping is None:
        raise InvalidArgumentError(FieldViolation("grouping", "unknown grouping"))
    return start, end, grouping, msg.caller or None


def spend_report_to_pb(report: SpendReport) -> pb.GetSpendResponse:
    return pb.GetSpendResponse(
        rows=[
            pb.SpendRow(
                key=r.key,
                cost_usd=r.cost_usd,
                request_count=r.request_count,
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
                price_unknown_count=r.price_unknown_count,
                cached_input_tokens=r.cached_input_tokens,
                cache_write_input_tokens=r.cache_write_input_tokens,
                reasoning_tokens=r.reasoning_tokens,
            )
            for r in report.rows
        ],
        total_cost_usd=report.total_cost_usd,
        budgets=[
            pb.BudgetStatus(
                scope=b.scope,
                period=b.period,
                limit_usd=b.limit_usd,
                spent_usd=b.spent_usd,
                reserved_usd=b.reserved_usd,
            )
            for b in report.budgets
        ],
    )


def timestamp_to_pb(epoch_s: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(epoch_s * 1e9))
    return out


def attempts_to_pb(attempts: list[d.Attempt]) -> list[pb.Attempt]:
    return [
        pb.Attempt(
            provider_id=a.provider_id,
            model=a.model,
            outcome=OUTCOME_TO_PB[a.outcome],
            error_kind=a.error_kind,
            latency=duration_to_pb(a.latency_s),
        )
        for a in attempts
    ]


def chat_response_to_pb(result: d.ChatResult) -> pb.ChatResponse:
    out = pb.ChatResponse(
        request_id=result.request_id,
        text=result.text,
        finish_reason=FINISH_TO_PB[result.finish_reason],
        usage=usage_to_pb(result.usage),
        cost=cost_to_pb(result.cost),
        routing=decision_to_pb(result.decision),
        attempts=attempts_to_pb(result.attempts),
        response_model=result.response_model,
        tool_calls=tool_calls_to_pb(result.tool_calls),
        reasoning=result.reasoning,
    )
    if result.conformance is not None:
        out.conformance.CopyFrom(conformance_to_pb(result.conformance))
    return out


def chat_summary_to_pb(result: d.ChatResult) -> pb.StreamChatResponse:
    summary = pb.ChatSummary(
        request_id=result.request_id,
        finish_reason=FINISH_TO_PB[result.finish_reason],
        usage=usage_to_pb(result.usage),
        cost=cost_to_pb(result.cost),
        routing=decision_to_pb(result.decision),
        attempts=attempts_to_pb(result.attempts),
        response_model=result.response_model,
        tool_calls=tool_calls_to_pb(result.tool_calls),
    )
    if result.conformance is not None:
        summary.conformance.CopyFrom(conformance_to_pb(result.conformance))
    return pb.StreamChatResponse(summary=summary)


def embed_response_to_pb(result: d.EmbedResult) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        request_id=result.request_id,
        embeddings=[pb.Embedding(values=v) for v in result.vectors],
        dimension=result.dimension,
        usage=usage_to_pb(result.usage),
        cost=cost_to_pb(result.cost),
        routing=decision_to_pb(result.decision),
        attempts=attempts_to_pb(result.attempts),
    )


BREAKER_TO_PB = {
    "closed": pb.BREAKER_STATE_CLOSED,
    "open": pb.BREAKER_STATE_OPEN,
    "half_open": pb.BREAKER_STATE_HALF_OPEN,
}


def model_to_pb(view: ModelView) -> pb.Model:
    entry = view.entry
    out = pb.Model(
        provider_id=entry.provider_id,
        model=entry.model,
        tasks=sorted(TASK_TO_PB[t] for t in entry.tasks),
        capabilities=sorted(CAPABILITY_TO_PB[c] for c in entry.capabilities),
        context_window=entry.context_window or 0,
        embedding_dimension=entry.embedding_dimension or 0,
        price_unknown=view.price is None,
        breaker_state=BREAKER_TO_PB.get(view.breaker_state, pb.BREAKER_STATE_UNSPECIFIED),
        available=view.available,
        priority=entry.priority,
    )
    price = view.price
    if price is not None:
        out.price.input_usd_per_million_tokens = price.input_per_million
        out.price.output_usd_per_million_tokens = price.output_per_million
        if price.cached_input_per_million is not None:
            out.price.cached_input_usd_per_million_tokens = price.cached_input_per_million
        if price.cache_write_per_million is not None:
            out.price.cache_write_input_usd_per_million_tokens = price.cache_write_per_million
        if price.reasoning_per_million is not None:
            out.price.reasoning_usd_per_million_tokens = price.reasoning_per_million
    return out


def state_backend_to_pb(view: StateBackendView) -> pb.StateBackendStatus:
    out = pb.StateBackendStatus(backend=view.backend, healthy=view.healthy, message=view.message)
    if view.changed_at is not None:
        out.change_time.CopyFrom(timestamp_to_pb(view.changed_at))
    return out


def provider_status_to_pb(view: ProviderView) -> pb.ProviderStatus:
    snap = view.breaker
    breaker = pb.BreakerStatus(
        state=BREAKER_TO_PB.get(snap.state.value, pb.BREAKER_STATE_UNSPECIFIED),
        consecutive_failures=snap.consecutive_failures,
        window_calls=snap.window_calls,
        window_failure_rate=snap.window_failure_rate,
    )
    if snap.opened_at is not None:
        breaker.open_time.CopyFrom(timestamp_to_pb(snap.opened_at))
    if snap.half_open_at is not None:
        breaker.half_open_time.CopyFrom(timestamp_to_pb(snap.half_open_at))
    out = pb.ProviderStatus(
        provider_id=view.provider_id,
        type=view.type,
        enabled=view.enabled,
        disabled_reason=view.disabled_reason,
        breaker=breaker,
        priority=view.priority,
        model_count=view.model_count,
    )
    if view.last_probe is not None:
        probe = view.last_probe
        out.last_probe.CopyFrom(
            pb.ProbeResult(
                probe_time=timestamp_to_pb(probe.wall_time),
                healthy=probe.healthy,
                error_kind=probe.error_kind,
                latency=duration_to_pb(probe.latency_s),
            )
        )
    return out
