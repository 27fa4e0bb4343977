"""Domain types of the Router service.

Plain dataclasses and enums, free of grpc and protobuf: the servicer converts
protobuf messages into these (`router_service.rpc.convert`) and back, and every
other module of the router works only with them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Task(enum.StrEnum):
    """The kind of work a request asks for (config spelling = enum value)."""

    EMBEDDING = "embedding"
    CHAT_SMALL = "chat_small"
    CHAT_SMART = "chat_smart"
    CHAT_LARGE = "chat_large"
    VISION = "vision"
    AUDIO = "audio"


class Capability(enum.StrEnum):
    """A feature a model must have to serve a request."""

    VISION = "vision"
    AUDIO = "audio"
    TOOLS = "tools"
    STRUCTURED_OUTPUT = "structured_output"
    REASONING = "reasoning"


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class ToolChoiceMode(enum.StrEnum):
    """Whether the model may (auto), must not (none) or must (required) call a tool."""

    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


class ResponseFormatType(enum.StrEnum):
    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


class ReasoningEffort(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class CostPart(enum.StrEnum):
    """One priced part of a request's tokens."""

    INPUT = "input"
    CACHED_INPUT = "cached_input"
    CACHE_WRITE_INPUT = "cache_write_input"
    OUTPUT = "output"
    REASONING = "reasoning"


class FinishReason(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"


class AttemptOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image by https URL or inline bytes (then mime_type is required)."""

    url: str | None = None
    data: bytes | None = None
    mime_type: str = ""
    detail: str = "auto"  # auto | low | high


@dataclass(frozen=True, slots=True)
class ContentPart:
    """Exactly one of text or image is set."""

    text: str | None = None
    image: ImagePart | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for; ``arguments`` is its JSON text exactly as generated."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is a JSON Schema (None: no arguments)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """Exactly one of ``mode`` or ``tool_name`` (the tool the model must call) is set."""

    mode: ToolChoiceMode | None = None
    tool_name: str = ""


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The shape the answer must have; ``schema`` is set exactly for JSON_SCHEMA."""

    type: ResponseFormatType = ResponseFormatType.TEXT
    schema: dict[str, Any] | None = None
    schema_name: str = ""
    description: str = ""
    strict: bool = False

    @property
    def wants_json(self) -> bool:
        return self.type is not ResponseFormatType.TEXT


@dataclass(frozen=True, slots=True)
class Conformance:
    """The answer checked against the requested JSON format; ``reason`` is empty when it conforms."""

    conforms: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    parts: tuple[ContentPart, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""

    @property
    def text(self) -> str:
        """The message's text parts joined; images are left out."""
        return "".join(p.text for p in self.parts if p.text is not None)

    @property
    def has_images(self) -> bool:
        return any(p.image is not None for p in self.parts)


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    reasoning_effort: ReasoningEffort | None = None


@dataclass(frozen=True, slots=True)
class RoutingPreferences:
    """The caller's constraints on which model may serve a request.

    task None means "default for the RPC": chat_smart (vision when images are
    present) for chat, embedding for Embed.
    """

    task: Task | None = None
    preferred_model: str = ""
    required_capabilities: frozenset[Capability] = frozenset()
    max_cost_usd: float | None = None
    disable_fallback: bool = False
    fallback_on_nonconforming: bool = False


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens.

    The cache and reasoning rates are None when unknown; such tokens are then priced at the
    base rate (input for cache reads and writes, output for reasoning) and the cost says so.
    """

    input_per_million: float
    output_per_million: float = 0.0
    cached_input_per_million: float | None = None
    cache_write_per_million: float | None = None
    reasoning_per_million: float | None = None

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """US dollars for plain input and output tokens (the routing estimate).

        `price_tokens` with no cache or reasoning tokens, written out: routing prices every
        eligible model of every request, and the general formula's bookkeeping tripled a
        decision's time. tests/unit/test_chat_features.py checks the two agree.
        """
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1e6


class PricedTokens(NamedTuple):
    """A price applied to token counts: US dollars per part and the parts priced at a base rate.

    A tuple rather than a dataclass: routing prices every eligible model of every request, and
    a tuple is the cheapest immutable record Python builds.
    """

    input_usd: float = 0.0
    cached_input_usd: float = 0.0
    cache_write_input_usd: float = 0.0
    output_usd: float = 0.0
    reasoning_usd: float = 0.0
    unknown_rate_parts: frozenset[CostPart] = frozenset()

    @property
    def total_usd(self) -> float:
        return (
            self.input_usd
            + self.cached_input_usd
            + self.cache_write_input_usd
            + self.output_usd
            + self.reasoning_usd
        )


_NO_PARTS: frozenset[CostPart] = frozenset()
_new_tuple = tuple.__new__


def price_tokens(
    price: Price,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_write_input_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> PricedTokens:
    """The one cost formula: every estimate and every real cost in the router comes from here.

    ``input_tokens`` includes the cached and cache-write tokens and ``output_tokens`` the
    reasoning tokens (OpenAI's convention; the providers' parsers normalise to it), so each
    part is priced once: uncached input at the input rate, cache reads and writes at their
    own rates, non-reasoning output at the output rate, reasoning at its own rate.
    """
    cached = min(cached_input_tokens, input_tokens) if cached_input_tokens > 0 else 0
    written = min(cache_write_input_tokens, input_tokens - cached) if cache_write_input_tokens > 0 else 0
    reasoning = min(reasoning_tokens, output_tokens) if reasoning_tokens > 0 else 0
    unknown = _NO_PARTS
    cached_rate = price.cached_input_per_million
    if cached_rate is None:
        cached_rate = price.input_per_million
        if cached:
            unknown = unknown | {CostPart.CACHED_INPUT}
    write_rate = price.cache_write_per_million
    if write_rate is None:
        write_rate = price.input_per_million
        if written:
            unknown = unknown | {CostPart.CACHE_WRITE_INPUT}
    reasoning_rate = price.reasoning_per_million
    if reasoning_rate is None:
        reasoning_rate = price.output_per_million
        if reasoning:
            unknown = unknown | {CostPart.REASONING}
    # tuple.__new__ directly: NamedTuple's own constructor is a Python function, and this one
    # runs for every eligible model of every routing decision.
    return _new_tuple(
        PricedTokens,
        (
            (input_tokens - cached - written) * price.input_per_million / 1e6,
            cached * cached_rate / 1e6,
            written * write_rate / 1e6,
            (output_tokens - reasoning) * price.output_per_million / 1e6,
            reasoning * reasoning_rate / 1e6,
            unknown,
        ),
    )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A provider model that can serve a request, with its cost estimate.

    estimated_cost_usd is None exactly when the price is unknown.
    """

    provider_id: str
    model: str
    priority: int
    estimated_cost_usd: float | None

    @property
    def price_unknown(self) -> bool:
        return self.estimated_cost_usd is None

    @property
    def key(self) -> str:
        return f"{self.provider_id}/{self.model}"


@dataclass(frozen=True, slots=True)
class RejectedCandidate:
    provider_id: str
    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """The ordered candidates for a request: chosen first, then the fallbacks."""

    candidates: tuple[Candidate, ...]
    reason: str
    task: Task
    estimated_input_tokens: int
    estimated_output_tokens: int
    rejected: tuple[RejectedCandidate, ...] = ()

    @property
    def chosen(self) -> Candidate:
        return self.candidates[0]

    @property
    def fallbacks(self) -> tuple[Candidate, ...]:
        return self.candidates[1:]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage. input_tokens counts every input token, the cached and cache-write ones
    included; output_tokens counts every output token, reasoning included."""

    input_tokens: int = 0
    output_tokens: int = 0
    counted_locally: bool = False
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Cost:
    """Real cost; cost_usd (and parts) is None exactly when the price is unknown."""

    cost_usd: float | None
    parts: PricedTokens | None = None

    @property
    def price_unknown(self) -> bool:
        return self.cost_usd is None

    @classmethod
    def of(cls, price: Price | None, usage: Usage) -> Cost:
        """The real cost of `usage` at `price` (unknown when the price is)."""
        if price is None:
            return cls(None)
        parts = price_tokens(
            price,
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_input_tokens,
            usage.cache_write_input_tokens,
            usage.reasoning_tokens,
        )
        return cls(parts.total_usd, parts)


@dataclass(frozen=True, slots=True)
class Attempt:
    provider_id: str
    model: str
    outcome: AttemptOutcome
    error_kind: str = ""
    latency_s: float = 0.0
    # What went wrong, in a few words safe to show a caller ("connection refused by
    # 127.0.0.1:11434", "HTTP 503"); never provider text. Empty when it succeeded.
    cause: str = ""


@dataclass(slots=True)
class ChatResult:
    request_id: str
    text: str
    finish_reason: FinishReason
    usage: Usage
    cost: Cost
    decision: RoutingDecision
    attempts: list[Attempt] = field(default_factory=list)
    response_model: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    conformance: Conformance | None = None  # None: no JSON format was asked for


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A streamed piece of tool call ``index``: id and name on its first piece, then argument text."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A streamed piece of reasoning text (never empty)."""

    text: str


# What Gateway.stream_chat yields before its closing ChatResult: text (str), tool-call pieces
# and reasoning pieces, each forwarded to the caller as it arrives.
StreamOutput = str | ToolCallDelta | ReasoningDelta


@dataclass(slots=True)
class EmbedResult:
    request_id: str
    vectors: list[list[float]]
    dimension: int
    usage: Usage
    cost: Cost
    decision: RoutingDecision
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat request after conversion and validation."""

    messages: tuple[ChatMessage, ...]
    routing: RoutingPreferences = RoutingPreferences()
    generation: GenerationConfig = GenerationConfig()
    request_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat = ResponseFormat()
    user: str = ""

    @property
    def has_images(self) -> bool:
        return any(m.has_images for m in self.messages)

    @property
    def needed_capabilities(self) -> frozenset[Capability]:
        """What the request itself needs from a model, whatever the caller listed.

        Tools need tool calling, a JSON schema needs structured output and a reasoning effort
        needs a reasoning model; a fallback must not drop any of these (images add vision in
        routing).
        """
        needed: set[Capability] = set()
        if self.tools:
            needed.add(Capability.TOOLS)
        if self.response_format.type is ResponseFormatType.JSON_SCHEMA:
            needed.add(Capability.STRUCTURED_OUTPUT)
        if self.generation.reasoning_effort is not None:
            needed.add(Capability.REASONING)
        return frozenset(needed)


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    inputs: tuple[str, ...]
    routing: RoutingPreferences = RoutingPreferences()
    request_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
