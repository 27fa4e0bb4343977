"""OpenAI request bodies, validated with pydantic.

Only what the door serves is modelled; fields the OpenAI API defines but the Gateway cannot honour
yet are refused by name (`unsupported_fields`), so a caller never gets an answer that silently
ignored what it asked for. Fields this module does not know at all are ignored, as OpenAI-compatible
servers do, so newer SDKs keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ChatCompletionRequest",
    "EmbeddingRequest",
    "ValidationError",
    "error_path",
    "unsupported_fields",
]


class _Body(BaseModel):
    # Unknown fields are kept (not refused) so `unsupported_fields` can name the ones we know of.
    model_config = ConfigDict(extra="allow")


class ImageUrl(BaseModel):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] = "auto"


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(BaseModel):
    name: str = Field(min_length=1)
    arguments: str = Field(description="the JSON text as the model produced it")


class ToolCall(BaseModel):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str = Field(min_length=1)


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="one choice per request")
    metadata: dict[str, str] | None = None
    user: str | None = Field(default=None, max_length=256)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)


class EmbeddingRequest(_Body):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = Field(default=None, max_length=256)


# OpenAI fields the Gateway does not serve yet. Refused by name when set to anything but null.
_UNSUPPORTED = {
    ChatCompletionRequest: (
        "functions",  # the deprecated predecessors of tools / tool_choice
        "function_call",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "audio",
        "modalities",
        "prediction",
        "web_search_options",
    ),
    EmbeddingRequest: (),
}


def unsupported_fields(body: _Body) -> list[str]:
    """The known-but-unserved fields `body` sets (to anything but null)."""
    extra = body.model_extra or {}
    return [name for name in _UNSUPPORTED.get(type(body), ()) if extra.get(name) is not None]


def error_path(location: tuple[Any, ...]) -> str:
    """pydantic's error location as an OpenAI `param`: ('messages', 0, 'content') -> messages[0].content."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and (part[:1].isupper() or part.startswith(("str", "list[", "literal["))):
            continue  # pydantic names the union branch it tried; the caller's field is the one above it
        else:
            path += f".{part}" if path else str(part)
    return path
