"""The Router's configuration: pydantic v2 models, cross-field checks and the loader entry point.

A minimal file needs only ``providers:``; every other section has defaults. Unknown keys are
errors (typos must not be silently ignored), and every problem is reported as one line naming
its YAML path (see ``sekha_runtime.configloader``). ``RouterConfig.load`` picks the file: an explicit
path, else ``$SEKHA_CONFIG``, else the embedded ``default_config.yaml`` (local embeddings plus a
local Ollama, so ``make run`` works with no setup). Environment variables prefixed
``SEKHA_ROUTER__`` override single values, ``__`` separating the levels.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from router_service.domain import Capability, Price, Task
from router_service.spend import BudgetsConfig, RateLimitsConfig
from router_service.state.base import StateConfig
from sekha_runtime.configloader import ConfigPathError, load_config
from sekha_runtime.server.security import AuthConfig, ServerSettings, open_listener_problem
from sekha_runtime.telemetry import TelemetryConfig

__all__ = [
    "BUILTIN_PROVIDER_TYPES",
    "ENV_PREFIX",
    "KNOWN_LOCAL_EMBEDDING_DIMENSIONS",
    "CircuitBreakerConfig",
    "LimitsConfig",
    "ModelConfig",
    "PriceConfig",
    "ProviderConfig",
    "RetryConfig",
    "RouterConfig",
    "RoutingConfig",
    "ServerConfig",
    "StateConfig",
]

ENV_PREFIX = "SEKHA_ROUTER__"
CONFIG_PATH_ENV = "SEKHA_CONFIG"

BUILTIN_PROVIDER_TYPES: tuple[str, ...] = (
    "ollama",
    "openai",
    "anthropic",
    "openrouter",
    "deepseek",
    "moonshot",
    "openai_compatible",
    "local",
)
# Types that have no public default endpoint, so the file must say where the server is.
_TYPES_NEEDING_BASE_URL = frozenset({"ollama", "openai_compatible"})
# The prefix LiteLLM expects in front of a model id, per provider type; other LiteLLM provider
# names are their own prefix and `local` models are served in process, not through LiteLLM.
_LITELLM_PREFIX: Mapping[str, str] = MappingProxyType(
    {"openai_compatible": "openai", "local": ""},
)
# Embedding models the in-process `local` provider can serve, with their vector size.
KNOWN_LOCAL_EMBEDDING_DIMENSIONS: Mapping[str, int] = MappingProxyType(
    {
        "all-minilm-l6-v2": 384,
        "sentence-transformers/all-minilm-l6-v2": 384,
    }
)
_PROVIDER_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@functools.cache
def litellm_provider_names() -> frozenset[str]:
    """Every provider name LiteLLM knows (imports LiteLLM, so only called when needed)."""
    from router_service.litellm_import import import_litellm

    litellm = import_litellm()
    return frozenset(str(getattr(p, "value", p)) for p in litellm.provider_list)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(ServerSettings):
    """Where and how the gRPC server listens, and the OpenAI-compatible HTTP door beside it."""

    port: int = Field(default=50051, ge=0, le=65535)
    http_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="OpenAI-compatible HTTP door (/v1/chat/completions, /v1/embeddings, /v1/models); "
        "off when unset, 0 picks a free port",
    )
    http_host: str | None = Field(default=None, description="the HTTP door's address; default: `host`")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="router processes serving the same ports (SO_REUSEPORT); more than one needs "
        "state.backend: redis, so budgets, rate limits and breakers hold across them",
    )


class CircuitBreakerConfig(_Section):
    """When a provider's breaker opens, and how it recovers."""

    failure_threshold: int = Field(default=5, ge=1, description="consecutive failures that open the breaker")
    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    window_size: int = Field(default=20, ge=1, description="calls in the sliding window")
    minimum_calls: int = Field(default=10, ge=1, description="calls in the window before the rate counts")
    reset_timeout_s: float = Field(
        default=30.0, gt=0, description="the longest an open breaker waits before a half-open probe"
    )
    initial_reset_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="how long the breaker's first opening lasts; each reopening without a close in "
        "between doubles it, up to reset_timeout_s (a provider that comes back soon is used soon). "
        "Unset while reset_timeout_s is set: every opening lasts reset_timeout_s, as before",
    )
    half_open_max_probes: int = Field(default=1, ge=1)
    slow_call_threshold_s: float = Field(default=60.0, gt=0)
    auth_recheck_initial_s: float = Field(
        default=10.0,
        gt=0,
        description="a provider disabled by a 401/403 is re-checked by its probe after this long, "
        "then at doubling intervals; re-enabled as soon as the probe is accepted",
    )
    auth_recheck_max_s: float = Field(default=600.0, gt=0, description="the longest re-check interval")

    @model_validator(mode="before")
    @classmethod
    def _fixed_period_when_only_reset_is_set(cls, data: Any) -> Any:
        # A file that tuned reset_timeout_s alone was written when every opening lasted that long;
        # it keeps meaning that. Growing openings come with the defaults, or by setting both.
        if isinstance(data, Mapping) and "initial_reset_timeout_s" not in data:
            reset = data.get("reset_timeout_s")
            if isinstance(reset, int | float | str) and not isinstance(reset, bool):
                return {**data, "initial_reset_timeout_s": reset}
        return data

    @model_validator(mode="after")
    def _window_can_reach_minimum(self) -> CircuitBreakerConfig:
        if self.minimum_calls > self.window_size:
            raise ConfigPathError(
                [
                    (
                        ("minimum_calls",),
                        f"must not exceed window_size ({self.minimum_calls} > {self.window_size}); "
                        "the failure rate could never be evaluated",
                    )
                ]
            )
        return self


class RetryConfig(_Section):
    """The router's own retry loop (provider SDK retries are off)."""

    max_attempts: int = Field(default=3, ge=1, le=20, description="total provider calls per request")
    backoff_base_s: float = Field(default=0.05, ge=0)
    backoff_max_s: float = Field(default=1.0, ge=0)
    default_deadline_s: float | None = Field(
        default=120.0,
        gt=0,
        description="the deadline of a request that brings none (no gRPC deadline, no "
        "x-sekha-timeout-s): it bounds the wait for an answer (a stream's first chunk), fallbacks "
        "included; null: no limit beyond the providers' timeouts",
    )

    @model_validator(mode="after")
    def _base_below_max(self) -> RetryConfig:
        if self.backoff_base_s > self.backoff_max_s:
            raise ConfigPathError([(("backoff_base_s",), "must not exceed backoff_max_s")])
        return self


class LimitsConfig(_Section):
    """Per-request limits; requests beyond them are rejected with INVALID_ARGUMENT."""

    max_messages: int = Field(default=256, ge=1)
    max_message_chars: int = Field(default=200_000, ge=1)
    max_images: int = Field(default=8, ge=0)
    max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    max_output_tokens: int = Field(default=32768, ge=1, description="cap on a request's max_tokens")
    default_max_tokens: int = Field(default=512, ge=1, description="max_tokens when the request gives none")
    max_embed_inputs: int = Field(default=2048, ge=1)
    max_input_chars: int = Field(default=100_000, ge=1)
    max_tools: int = Field(default=128, ge=0, description="tools in one chat request")
    max_tool_schema_chars: int = Field(
        default=65_536, ge=1, description="one tool's parameters schema, as compact JSON"
    )
    max_tool_description_chars: int = Field(default=8192, ge=1)
    max_response_schema_chars: int = Field(
        default=65_536, ge=1, description="the response_format JSON schema, as compact JSON"
    )
    max_tool_call_argument_chars: int = Field(
        default=200_000, ge=1, description="one tool call's arguments in the conversation"
    )
    max_stop_sequences: int = Field(default=16, ge=0, description="stop sequences in one request")
    max_stop_sequence_chars: int = Field(default=256, ge=1, description="characters of one stop sequence")
    max_metadata_value_chars: int = Field(default=1024, ge=1, description="characters of one metadata value")
    max_user_chars: int = Field(default=256, ge=1, description="the end-user id (`user`)")
    inline_image_urls: bool = Field(
        default=False,
        description="fetch https image URLs in the router and send the bytes inline; off: URLs go to the "
        "provider as given and the router never fetches anything",
    )
    image_fetch_timeout_s: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _default_within_cap(self) -> LimitsConfig:
        if self.default_max_tokens > self.max_output_tokens:
            raise ConfigPathError([(("default_max_tokens",), "must not exceed max_output_tokens")])
        return self


class RoutingConfig(_Section):
    """How long a routing decision's candidate list may be."""

    max_candidates: int = Field(
        default=8,
        ge=1,
        description="the chosen model plus at most this many minus one fallbacks; the retry loop "
        "makes at most retry.max_attempts calls, so a longer list only costs time",
    )


class PriceConfig(_Section):
    """US dollars per million tokens; replaces LiteLLM's bundled price for the model, all rates
    at once (a rate left out here is unknown, not taken from the map)."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(default=0.0, ge=0)
    cached_input_per_million: float | None = Field(
        default=None, ge=0, description="input read from the prompt cache; unset: priced at the input rate"
    )
    cache_write_per_million: float | None = Field(
        default=None, ge=0, description="input written to the prompt cache; unset: priced at the input rate"
    )
    reasoning_per_million: float | None = Field(
        default=None, ge=0, description="reasoning output; unset: priced at the output rate"
    )

    def to_price(self) -> Price:
        return Price(
            input_per_million=self.input_per_million,
            output_per_million=self.output_per_million,
            cached_input_per_million=self.cached_input_per_million,
            cache_write_per_million=self.cache_write_per_million,
            reasoning_per_million=self.reasoning_per_million,
        )


class ModelConfig(_Section):
    """One model of a provider and the tasks it serves."""

    id: str = Field(min_length=1)
    tasks: list[Task] = Field(min_length=1)
    litellm_model: str | None = Field(default=None, min_length=1)
    context_window: int | None = Field(default=None, gt=0)
    embedding_dimension: int | None = Field(default=None, gt=0)
    capabilities: list[Capability] | None = None  # None: take them from LiteLLM's model info
    price: PriceConfig | None = None
    max_output_tokens: int | None = Field(default=None, gt=0)


class ProviderConfig(_Section):
    """One provider account: its endpoint, its own key, and the models it serves."""

    id: str
    type: str
    base_url: str | None = None
    api_key: SecretStr | None = None
    priority: int = Field(default=50, ge=1, le=100, description="lower is preferred")
    timeout_s: float = Field(default=60.0, gt=0)
    enabled: bool = True
    health_probe_interval_s: float = Field(default=0.0, ge=0, description="0 turns probing off")
    circuit_breaker: CircuitBreakerConfig | None = None
    transport: Literal["auto", "litellm", "native"] = "auto"
    models: list[ModelConfig] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _PROVIDER_ID.match(value):
            raise ValueError(
                f"{value!r} is not a valid provider id: use lower-case letters, digits, '_' and '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value in BUILTIN_PROVIDER_TYPES or value in litellm_provider_names():
            return value
        close = difflib.get_close_matches(value, BUILTIN_PROVIDER_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"{value!r} is not a known provider type{hint}: use one of {', '.join(BUILTIN_PROVIDER_TYPES)} "
            "or a provider name LiteLLM knows"
        )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("api_key", mode="before")
    @classmethod
    def _key_text(cls, value: Any) -> Any:
        # An empty key (e.g. `${KEY:-}`) means "no key", and a numeric-looking one is still text.
        if value == "" or value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> ProviderConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.type in _TYPES_NEEDING_BASE_URL and self.base_url is None:
            problems.append((("base_url",), f"required for provider type {self.type!r}"))
        first_index: dict[str, int] = {}
        for index, model in enumerate(self.models):
            if model.id in first_index:
                problems.append(
                    (
                        ("models", index, "id"),
                        f"duplicate model id {model.id!r} in provider {self.id!r} "
                        f"(first at models[{first_index[model.id]}])",
                    )
                )
            else:
                first_index[model.id] = index
        if problems:
            raise ConfigPathError(problems)
        return self

    def litellm_model_for(self, model: ModelConfig) -> str:
        """The model string handed to LiteLLM (`ollama/llama3.2`, `openai/<id>` for compatible servers)."""
        if model.litellm_model:
            return model.litellm_model
        prefix = _LITELLM_PREFIX.get(self.type, self.type)
        return f"{prefix}/{model.id}" if prefix else model.id


class RouterConfig(_Section):
    """The whole Router configuration."""

    server: ServerConfig = ServerConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    retry: RetryConfig = RetryConfig()
    limits: LimitsConfig = LimitsConfig()
    routing: RoutingConfig = RoutingConfig()
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys; off unless enabled")
    state: StateConfig = StateConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    providers: list[ProviderConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _cross_field(self, info: ValidationInfo) -> RouterConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if self.server.workers > 1 and self.state.backend != "redis":
            problems.append(
                (
                    ("server", "workers"),
                    f"{self.server.workers} workers need state.backend: redis; {self.state.backend} state "
                    "lives in one process, so budgets, rate limits and breakers would not hold across them",
                )
            )
        first_index: dict[str, int] = {}
        for index, provider in enumerate(self.providers):
            if provider.id in first_index:
                problems.append(
                    (
                        ("providers", index, "id"),
                        f"duplicate provider id {provider.id!r} "
                        f"(first at providers[{first_index[provider.id]}])",
                    )
                )
            else:
                first_index[provider.id] = index
        open_listener = open_listener_problem(self.auth, self.listen_hosts())
        if open_listener is not None:
            problems.append((("auth", "enabled"), open_listener))
        model_info = (info.context or {}).get("model_info") if info is not None else None
        for p_index, provider in enumerate(self.providers):
            for m_index, model in enumerate(provider.models):
                if (
                    Task.EMBEDDING in model.tasks
                    and _embedding_dimension(provider, model, model_info) is None
                ):
                    problems.append(
                        (
                            ("providers", p_index, "models", m_index, "embedding_dimension"),
                            f"model {model.id!r} has task embedding but its vector dimension is unknown "
                            "(not in LiteLLM's model info); set embedding_dimension",
                        )
                    )
        if problems:
            raise ConfigPathError(problems)
        return self

    def listen_hosts(self) -> list[str]:
        """Every address the router listens on for callers: gRPC, and the HTTP door when on."""
        hosts = [self.server.host]
        if self.server.http_port is not None:
            hosts.append(self.server.http_host or self.server.host)
        return hosts

    def breaker_config_for(self, provider_id: str) -> CircuitBreakerConfig:
        """The provider's own breaker settings, else the global ones."""
        for provider in self.providers:
            if provider.id == provider_id and provider.circuit_breaker is not None:
                return provider.circuit_breaker
        return self.circuit_breaker

    def provider(self, provider_id: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.id == provider_id), None)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        model_info: Any = None,
    ) -> RouterConfig:
        """Load from `path`, else `$SEKHA_CONFIG`, else the embedded default; raise ConfigError.

        `model_info` is a `router_service.model_registry.ModelInfoSource` used to find embedding
        dimensions; LiteLLM's bundled model map when None.
        """
        env = os.environ if environ is None else environ
        if path is None:
            path = env.get(CONFIG_PATH_ENV) or None
        default_text = None if path is not None else default_config_text()
        return load_config(
            cls,
            path,
            env_prefix=ENV_PREFIX,
            default_text=default_text,
            environ=env,
            context={"model_info": model_info} if model_info is not None else None,
        )


def default_config_text() -> str:
    """The embedded default configuration (package data)."""
    return resources.files("router_service").joinpath("default_config.yaml").read_text(encoding="utf-8")


def _embedding_dimension(provider: ProviderConfig, model: ModelConfig, model_info: Any) -> int | None:
    if model.embedding_dimension is not None:
        return model.embedding_dimension
    if provider.type == "local":
        return KNOWN_LOCAL_EMBEDDING_DIMENSIONS.get(model.id.lower())
    if model_info is None:
        from router_service.model_registry import LiteLLMModelInfo

        model_info = LiteLLMModelInfo()
    info = model_info.lookup(provider.litellm_model_for(model), provider.type)
    return info.embedding_dimension if info is not None else None
