"""Domain types of the Router service.

Plain dataclasses and enums, free of grpc and protobuf: the servicer converts
protobuf messages into these (`router_service.rpc.convert`) and back, and every
other module of the router works only with them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


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


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


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
class ChatMessage:
    role: Role
    parts: tuple[ContentPart, ...]

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


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input_per_million: float
    output_per_million: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1e6


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
    input_tokens: int = 0
    output_tokens: int = 0
    counted_locally: bool = False


@dataclass(frozen=True, slots=True)
class Cost:
    """Real cost; cost_usd is None exactly when the price is unknown."""

    cost_usd: float | None

    @property
    def price_unknown(self) -> bool:
        return self.cost_usd is None


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

    @property
    def has_images(self) -> bool:
        return any(m.has_images for m in self.messages)


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    inputs: tuple[str, ...]
    routing: RoutingPreferences = RoutingPreferences()
    request_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
