"""OpenAI JSON <-> Router domain types.

The request side names every problem by its OpenAI parameter; routing preferences the OpenAI
schema has no field for come from `x-sekha-*` headers (see `ROUTING_HEADERS`). The response side
builds OpenAI's shapes from the Gateway's results, and the `x-sekha-*` response headers that say
how the request was routed.
"""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from router_service import domain as d
from router_service.http.schema import ChatCompletionRequest, EmbeddingRequest, Message, NamedToolChoice
from sekha_runtime.errors import FieldViolation, InvalidArgumentError

TASK_ALIAS_PREFIX = "sekha/"
# Request headers that carry routing preferences OpenAI's schema has no field for.
ROUTING_HEADERS = {
    "x-sekha-task": "route by this task (chat_small, chat_smart, chat_large, vision, embedding)",
    "x-sekha-max-cost-usd": "refuse candidates whose estimate exceeds this many US dollars",
    "x-sekha-capabilities": "comma-separated capabilities every candidate must have (vision, tools, ...)",
    "x-sekha-disable-fallback": "true: only the first candidate is tried",
    "x-sekha-timeout-s": "the request's deadline in seconds",
}
_CHAT_TASKS = (d.Task.CHAT_SMART, d.Task.CHAT_LARGE, d.Task.CHAT_SMALL, d.Task.VISION)
_ROLES = {
    "system": d.Role.SYSTEM,
    "developer": d.Role.SYSTEM,  # OpenAI's newer name for the system role
    "user": d.Role.USER,
    "assistant": d.Role.ASSISTANT,
    "tool": d.Role.TOOL,
}
_FINISH = {
    d.FinishReason.STOP: "stop",
    d.FinishReason.LENGTH: "length",
    d.FinishReason.CONTENT_FILTER: "content_filter",
    d.FinishReason.TOOL_CALLS: "tool_calls",
    d.FinishReason.UNSPECIFIED: "stop",
}
_MAX_HEADER_CHARS = 512

# The tasks a configured model serves, by the name a caller uses (None: no such model).
ModelTasks = Callable[[str], frozenset[d.Task] | None]


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def routing_preferences(
    model: str,
    headers: Mapping[str, str],
    model_tasks: ModelTasks,
    default_tasks: tuple[d.Task, ...],
    has_images: bool = False,
) -> d.RoutingPreferences:
    """The request's routing preferences from its `model` and `x-sekha-*` headers.

    `model` is a configured model id, a `provider/model` pair, or a task alias (`sekha/chat_smart`).
    A named model is routed on a task it serves: the first of `default_tasks` it has (vision first
    when the request carries images), so `model="small-model"` works without naming its task.
    """
    violations: list[FieldViolation] = []
    task: d.Task | None = None
    preferred = ""
    if model.startswith(TASK_ALIAS_PREFIX):
        task = _task(model[len(TASK_ALIAS_PREFIX) :], "model", violations)
    else:
        preferred = model
        served = model_tasks(model)
        if served:  # an unknown model is left to routing, which answers 404 naming it
            order = (d.Task.VISION, *default_tasks) if has_images else default_tasks
            task = next((t for t in order if t in served), None)
    if "x-sekha-task" in headers:
        task = _task(headers["x-sekha-task"], "x-sekha-task", violations)
    max_cost = None
    if "x-sekha-max-cost-usd" in headers:
        try:
            max_cost = float(headers["x-sekha-max-cost-usd"])
        except ValueError:
            max_cost = math.nan
        if not max_cost >= 0:  # also rejects NaN
            violations.append(FieldViolation("x-sekha-max-cost-usd", "must be a number >= 0"))
    capabilities: set[d.Capability] = set()
    for name in filter(None, (c.strip() for c in headers.get("x-sekha-capabilities", "").split(","))):
        try:
            capabilities.add(d.Capability(name.lower()))
        except ValueError:
            known = ", ".join(c.value for c in d.Capability)
            violations.append(FieldViolation("x-sekha-capabilities", f"unknown capability (one of {known})"))
    if violations:
        raise InvalidArgumentError(violations)
    return d.RoutingPreferences(
        task=task,
        preferred_model=preferred,
        required_capabilities=frozenset(capabilities),
        max_cost_usd=max_cost,
        disable_fallback=_truthy(headers.get("x-sekha-disable-fallback", "")),
    )


def _task(name: str, param: str, violations: list[FieldViolation]) -> d.Task | None:
    try:
        return d.Task(name.strip().lower())
    except ValueError:
        known = ", ".join(TASK_ALIAS_PREFIX + t.value for t in d.Task)
        violations.append(FieldViolation(param, f"unknown task (one of {known})"))
        return None


def timeout_from(headers: Mapping[str, str]) -> float | None:
    """`x-sekha-timeout-s` as seconds, or None."""
    raw = headers.get("x-sekha-timeout-s")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise InvalidArgumentError(FieldViolation("x-sekha-timeout-s", "must be a number of seconds > 0"))
    return seconds


def request_id(headers: Mapping[str, str]) -> str:
    """The caller's `x-request-id` (bounded), or a new one: streamed chunks need it before the end."""
    given = headers.get("x-request-id", "").strip()[:128]
    return given or uuid.uuid4().hex


def _message(index: int, message: Message, violations: list[FieldViolation]) -> d.ChatMessage | None:
    role = _ROLES[message.role]
    if role is d.Role.TOOL and not message.tool_call_id:
        violations.append(
            FieldViolation(f"messages[{index}].tool_call_id", "a tool message names the call it answers")
        )
    if message.tool_calls and role is not d.Role.ASSISTANT:
        violations.append(
            FieldViolation(f"messages[{index}].tool_calls", "only an assistant message has them")
        )
    tool_calls = tuple(
        d.ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
        for call in message.tool_calls or ()
    )
    content = message.content
    if content is None or content == "" or content == []:
        if tool_calls:  # an assistant turn that only called tools
            return d.ChatMessage(role=role, parts=(), tool_calls=tool_calls)
        violations.append(FieldViolation(f"messages[{index}].content", "a message needs content"))
        return None
    tool_call_id = message.tool_call_id or ""
    if isinstance(content, str):
        return d.ChatMessage(role, (d.ContentPart(text=content),), tool_calls, tool_call_id)
    parts: list[d.ContentPart] = []
    for j, part in enumerate(content):
        if part.type == "text":
            parts.append(d.ContentPart(text=part.text))
            continue
        url = part.image_url.url
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            mime_type = header[len("data:") :].split(";")[0]
            try:
                data = base64.b64decode(payload, validate=True)
            except ValueError:
                violations.append(
                    FieldViolation(f"messages[{index}].content[{j}].image_url.url", "invalid base64 data URL")
                )
                continue
            image = d.ImagePart(data=data, mime_type=mime_type, detail=part.image_url.detail)
        else:
            image = d.ImagePart(url=url, detail=part.image_url.detail)
        parts.append(d.ContentPart(image=image))
    return d.ChatMessage(role, tuple(parts), tool_calls, tool_call_id)


def _tool_choice(choice: str | NamedToolChoice | None) -> d.ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return d.ToolChoice(mode=d.ToolChoiceMode(choice))
    return d.ToolChoice(tool_name=choice.function.name)


def _response_format(body: ChatCompletionRequest) -> d.ResponseFormat:
    given = body.response_format
    if given is None or given.type == "text":
        return d.ResponseFormat()
    if given.type == "json_object":
        return d.ResponseFormat(type=d.ResponseFormatType.JSON_OBJECT)
    schema = given.json_schema
    if schema is None:
        raise InvalidArgumentError(
            FieldViolation("response_format.json_schema", "required when type is json_schema")
        )
    return d.ResponseFormat(
        type=d.ResponseFormatType.JSON_SCHEMA,
        schema=schema.schema_ or {},
        schema_name=schema.name,
        description=schema.description or "",
        strict=bool(schema.strict),
    )


def chat_request(
    body: ChatCompletionRequest, headers: Mapping[str, str], model_tasks: ModelTasks
) -> d.ChatRequest:
    """The domain request for an OpenAI chat completion body; InvalidArgumentError names the params."""
    violations: list[FieldViolation] = []
    converted = [_message(i, message, violations) for i, message in enumerate(body.messages)]
    messages = tuple(m for m in converted if m is not None)
    if violations:
        raise InvalidArgumentError(violations)
    has_images = any(m.has_images for m in messages)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return d.ChatRequest(
        messages=messages,
        routing=routing_preferences(body.model, headers, model_tasks, _CHAT_TASKS, has_images),
        generation=d.GenerationConfig(
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop_sequences=stop,
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            reasoning_effort=d.ReasoningEffort(body.reasoning_effort) if body.reasoning_effort else None,
        ),
        request_id=request_id(headers),
        metadata=dict(body.metadata or {}),
        tools=tuple(
            d.Tool(
                name=t.function.name,
                description=t.function.description or "",
                parameters=t.function.parameters,
                strict=bool(t.function.strict),
            )
            for t in body.tools or ()
        ),
        tool_choice=_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=_response_format(body),
        user=body.user or "",
    )


def embed_request(
    body: EmbeddingRequest, headers: Mapping[str, str], model_tasks: ModelTasks
) -> d.EmbedRequest:
    """The domain request for an OpenAI embeddings body."""
    inputs = (body.input,) if isinstance(body.input, str) else tuple(body.input)
    if not inputs:
        raise InvalidArgumentError(FieldViolation("input", "at least one input text is required"))
    if body.dimensions is not None:
        raise InvalidArgumentError(
            FieldViolation("dimensions", "not supported: each model embeds at its own dimension")
        )
    return d.EmbedRequest(
        inputs=inputs,
        routing=routing_preferences(body.model, headers, model_tasks, (d.Task.EMBEDDING,)),
        request_id=request_id(headers),
    )


# --------------------------------------------------------------------------------- responses


def _answered_by(attempts: list[d.Attempt], decision: d.RoutingDecision) -> tuple[str, str]:
    """(provider, model) of the attempt that succeeded (the plan's first choice when none did)."""
    for attempt in reversed(attempts):
        if attempt.outcome is d.AttemptOutcome.SUCCEEDED:
            return attempt.provider_id, attempt.model
    return decision.chosen.provider_id, decision.chosen.model


def _header_text(text: str) -> str:
    # Header values must be printable ASCII; model names and reasons are ours, but keep it safe.
    return (
        text.encode("ascii", "replace")
        .decode("ascii")
        .replace("\r", " ")
        .replace("\n", " ")[:_MAX_HEADER_CHARS]
    )


def routing_headers(result: d.ChatResult | d.EmbedResult) -> dict[str, str]:
    """`x-sekha-*` response headers: who answered, why, the attempts and the cost."""
    provider, model = _answered_by(result.attempts, result.decision)
    attempts = ", ".join(
        f"{a.provider_id}/{a.model}:{a.outcome.value}{':' + a.error_kind if a.error_kind else ''}"
        for a in result.attempts
    )
    headers = {
        "x-sekha-provider": _header_text(provider),
        "x-sekha-model": _header_text(model),
        "x-sekha-routing-reason": _header_text(result.decision.reason),
        "x-sekha-attempts": _header_text(attempts),
        "x-sekha-request-id": _header_text(result.request_id),
    }
    if result.cost.cost_usd is not None:
        headers["x-sekha-cost-usd"] = f"{result.cost.cost_usd:.10f}"
    conformance = getattr(result, "conformance", None)
    if conformance is not None:
        headers["x-sekha-conforms"] = "true" if conformance.conforms else "false"
        if conformance.reason:
            headers["x-sekha-conformance-reason"] = _header_text(conformance.reason)
    return headers


def _usage(usage: d.Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }
    if usage.cache_write_input_tokens:
        # No OpenAI field for it; the name Anthropic and LiteLLM use.
        out["cache_creation_input_tokens"] = usage.cache_write_input_tokens
    return out


def tool_calls_json(calls: tuple[d.ToolCall, ...]) -> list[dict[str, Any]]:
    return [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call in calls
    ]


def stream_delta(event: d.StreamOutput) -> dict[str, Any]:
    """The `delta` of one streamed event: text, a tool-call piece, or reasoning."""
    if isinstance(event, str):
        return {"content": event}
    if isinstance(event, d.ReasoningDelta):
        return {"reasoning_content": event.text}
    piece: dict[str, Any] = {"index": event.index, "function": {"arguments": event.arguments}}
    if event.id:
        piece["id"] = event.id
        piece["type"] = "function"
    if event.name:
        piece["function"]["name"] = event.name
    return {"tool_calls": [piece]}


def _assistant_message(result: d.ChatResult) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.text if result.text or not result.tool_calls else None,
        "refusal": None,
    }
    if result.tool_calls:
        message["tool_calls"] = tool_calls_json(result.tool_calls)
    if result.reasoning:
        message["reasoning_content"] = result.reasoning  # the field OpenAI-compatible reasoners use
    return message


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def chat_completion(result: d.ChatResult, created: int | None = None) -> dict[str, Any]:
    """An OpenAI `chat.completion` object for a finished chat."""
    _, model = _answered_by(result.attempts, result.decision)
    return {
        "id": completion_id(result.request_id),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": result.response_model or model,
        "choices": [
            {
                "index": 0,
                "message": _assistant_message(result),
                "finish_reason": _FINISH[result.finish_reason],
                "logprobs": None,
            }
        ],
        "usage": _usage(result.usage),
    }


def chunk(
    chunk_id: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    """One `chat.completion.chunk` with a single choice."""
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def final_chunks(
    chunk_id: str, created: int, result: d.ChatResult, include_usage: bool
) -> list[dict[str, Any]]:
    """The stream's closing chunks: the finish reason, then (when asked) usage with no choices."""
    _, model = _answered_by(result.attempts, result.decision)
    model = result.response_model or model
    closing = [chunk(chunk_id, created, model, {}, _FINISH[result.finish_reason])]
    if include_usage:
        closing.append(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(result.usage),
            }
        )
    return closing


def embedding_list(result: d.EmbedResult, encoding_format: str) -> dict[str, Any]:
    """An OpenAI embeddings `list`; base64 is little-endian float32, as OpenAI sends it."""
    _, model = _answered_by(result.attempts, result.decision)
    data = []
    for index, vector in enumerate(result.vectors):
        embedding: list[float] | str
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        else:
            embedding = vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = result.usage.input_tokens
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def model_list(entries: list[tuple[str, str]]) -> dict[str, Any]:
    """`GET /v1/models`: (id, owner) pairs, plus the task aliases, as OpenAI `model` objects."""
    models = [
        {"id": model_id, "object": "model", "created": 0, "owned_by": owner} for model_id, owner in entries
    ]
    models += [
        {"id": TASK_ALIAS_PREFIX + task.value, "object": "model", "created": 0, "owned_by": "sekha"}
        for task in d.Task
    ]
    return {"object": "list", "data": models}
