"""The model registry: every configured provider model with what it can do and what it costs.

Built once from the configuration. What the file leaves out (capabilities, context window,
embedding dimension, price) is filled in from LiteLLM's bundled model map, through the
``ModelInfoSource`` protocol so tests and benchmarks can pass a small static table instead.
Lookups never touch the network and never import LiteLLM: the bundled map is read as the
JSON file it is.

The registry also holds which providers are disabled at run time (the data plane disables a
provider whose credentials are rejected), so routing can skip them and say why.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from router_service.config import KNOWN_LOCAL_EMBEDDING_DIMENSIONS, ProviderConfig, RouterConfig
from router_service.domain import Capability, Price, Task
from router_service.litellm_import import import_litellm
from router_service.pricing import resolve_price
from sekha_runtime.errors import NotFoundError

__all__ = [
    "LiteLLMModelInfo",
    "ModelEntry",
    "ModelInfo",
    "ModelInfoSource",
    "Registry",
    "StaticModelInfo",
]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model-info source knows about a model; None = not known."""

    context_window: int | None = None
    max_output_tokens: int | None = None
    embedding_dimension: int | None = None
    capabilities: frozenset[Capability] | None = None
    price: Price | None = None


class ModelInfoSource(Protocol):
    def lookup(self, litellm_model: str, provider_type: str) -> ModelInfo | None:
        """What is known about the model, or None when nothing is."""
        ...


class StaticModelInfo:
    """A fixed table keyed by LiteLLM model string (tests, benchmarks)."""

    def __init__(self, table: Mapping[str, ModelInfo]) -> None:
        self._table = dict(table)

    def lookup(self, litellm_model: str, provider_type: str) -> ModelInfo | None:
        return self._table.get(litellm_model)


@functools.cache
def bundled_model_cost() -> Mapping[str, Any]:
    """LiteLLM's bundled model map read as the JSON file it is, without importing LiteLLM.

    With LITELLM_LOCAL_MODEL_COST_MAP set, ``litellm.model_cost`` is exactly this file; reading
    it directly keeps LiteLLM (about 130 MB and 1.5 s of start-up) out of a router whose
    providers all use the lean HTTP path.
    """
    spec = importlib.util.find_spec("litellm")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        return import_litellm().model_cost  # type: ignore[no-any-return]
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    if not path.exists():
        return import_litellm().model_cost  # type: ignore[no-any-return]
    return MappingProxyType(json.loads(path.read_text(encoding="utf-8")))


class LiteLLMModelInfo:
    """LiteLLM's bundled model map (the JSON behind `litellm.model_cost`)."""

    def lookup(self, litellm_model: str, provider_type: str) -> ModelInfo | None:
        model_cost = bundled_model_cost()
        raw = _bundled_entry(model_cost, litellm_model, provider_type)
        price = _bundled_price(model_cost, litellm_model, provider_type)
        if raw is None and price is None:
            return None
        raw = raw or {}
        capabilities: set[Capability] = set()
        if raw.get("supports_vision"):
            capabilities.add(Capability.VISION)
        if raw.get("supports_function_calling"):
            capabilities.add(Capability.TOOLS)
        if raw.get("supports_audio_input"):
            capabilities.add(Capability.AUDIO)
        if raw.get("supports_response_schema"):
            capabilities.add(Capability.STRUCTURED_OUTPUT)
        if raw.get("supports_reasoning"):
            capabilities.add(Capability.REASONING)
        return ModelInfo(
            context_window=_positive_int(raw.get("max_input_tokens") or raw.get("max_tokens")),
            max_output_tokens=_positive_int(raw.get("max_output_tokens")),
            embedding_dimension=_positive_int(raw.get("output_vector_size")),
            capabilities=frozenset(capabilities) if raw else None,
            price=price,
        )


def _candidate_keys(litellm_model: str, provider_type: str) -> list[str]:
    bare = litellm_model.split("/", 1)[1] if "/" in litellm_model else litellm_model
    keys = [litellm_model, bare, f"{provider_type}/{bare}"]
    return list(dict.fromkeys(keys))


def _bundled_entry(
    model_cost: Mapping[str, Any], litellm_model: str, provider_type: str
) -> Mapping[str, Any] | None:
    for key in _candidate_keys(litellm_model, provider_type):
        entry = model_cost.get(key)
        if isinstance(entry, Mapping):
            return entry
    return None


def _bundled_price(model_cost: Mapping[str, Any], litellm_model: str, provider_type: str) -> Price | None:
    """Price from LiteLLM's map, trying `provider/model` before the bare model name."""
    entry = _bundled_entry(model_cost, litellm_model, provider_type)
    if entry is None:
        return None
    input_cost = entry.get("input_cost_per_token")
    if not isinstance(input_cost, int | float):
        return None  # priced per second, per character or not at all: unknown for our purposes
    output_cost = entry.get("output_cost_per_token")
    output_cost = output_cost if isinstance(output_cost, int | float) else 0.0
    return Price(
        input_per_million=float(input_cost) * 1e6,
        output_per_million=float(output_cost) * 1e6,
        cached_input_per_million=_per_million(entry.get("cache_read_input_token_cost")),
        cache_write_per_million=_per_million(entry.get("cache_creation_input_token_cost")),
        reasoning_per_million=_per_million(entry.get("output_cost_per_reasoning_token")),
    )


def _per_million(per_token: Any) -> float | None:
    """A per-token rate of the map per million tokens; None when the map has none."""
    if isinstance(per_token, int | float) and not isinstance(per_token, bool) and per_token >= 0:
        return float(per_token) * 1e6
    return None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One routable model of one provider, with everything routing needs precomputed.

    `price` is the effective price (config, else free for `local`, else LiteLLM's map);
    None means unknown, and `price_source` says where a known price came from.
    """

    provider_id: str
    model: str
    litellm_model: str
    provider_type: str
    tasks: frozenset[Task]
    capabilities: frozenset[Capability]
    context_window: int | None
    embedding_dimension: int | None
    price: Price | None
    priority: int
    max_output_tokens: int | None
    price_source: str = "unknown"
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.provider_id}/{self.model}")

    @property
    def price_unknown(self) -> bool:
        return self.price is None


class Registry:
    """The configured models, indexed for routing, plus run-time provider disabling."""

    def __init__(self, config: RouterConfig, entries: list[ModelEntry]) -> None:
        self.config = config
        self.entries: tuple[ModelEntry, ...] = tuple(entries)
        self._by_key: dict[str, ModelEntry] = {e.key: e for e in self.entries}
        by_name: dict[str, list[ModelEntry]] = {}
        for entry in self.entries:
            by_name.setdefault(entry.model, []).append(entry)
            if entry.key != entry.model:
                by_name.setdefault(entry.key, []).append(entry)
        self._by_name: dict[str, tuple[ModelEntry, ...]] = {k: tuple(v) for k, v in by_name.items()}
        ordered = sorted(self.entries, key=lambda e: (e.priority, e.key))
        self._for_task: dict[Task, tuple[ModelEntry, ...]] = {
            task: tuple(e for e in ordered if task in e.tasks) for task in Task
        }
        self.providers: Mapping[str, ProviderConfig] = MappingProxyType({p.id: p for p in config.providers})
        self._disabled: dict[str, str] = {
            p.id: "disabled in the configuration" for p in config.providers if not p.enabled
        }
        self._config_disabled = frozenset(self._disabled)
        # Routing reads this mapping directly on its hot path; it changes only through the methods below.
        self.disabled: Mapping[str, str] = MappingProxyType(self._disabled)
        self._listeners: list[Callable[[str, str | None], None]] = []

    @classmethod
    def from_config(cls, config: RouterConfig, model_info: ModelInfoSource | None = None) -> Registry:
        source = model_info if model_info is not None else LiteLLMModelInfo()
        entries = [
            _build_entry(provider, model_index, source)
            for provider in config.providers
            for model_index in range(len(provider.models))
        ]
        return cls(config, entries)

    # -- lookups ----------------------------------------------------------------------------

    def by_key(self, key: str) -> ModelEntry:
        entry = self._by_key.get(key)
        if entry is None:
            raise NotFoundError("model", key)
        return entry

    def get(self, key: str) -> ModelEntry | None:
        return self._by_key.get(key)

    def find(self, model_or_key: str) -> list[ModelEntry]:
        """Entries whose model id or `provider_id/model` key equals the name."""
        return list(self._by_name.get(model_or_key, ()))

    def for_task(self, task: Task) -> tuple[ModelEntry, ...]:
        """Entries serving the task, ordered by (priority, key)."""
        return self._for_task.get(task, ())

    # -- run-time disabling -----------------------------------------------------------------

    def disable_provider(self, provider_id: str, reason: str) -> bool:
        """Stop routing to the provider (its key was rejected); `reason` may be shown to callers.

        True when it was enabled until now; listeners hear of it (the probes re-check it)."""
        self._require_provider(provider_id)
        if provider_id in self._config_disabled:
            return False
        newly = provider_id not in self._disabled
        self._disabled[provider_id] = reason
        if newly:
            self._tell(provider_id, reason)
        return newly

    def enable_provider(self, provider_id: str) -> bool:
        """Route to a provider disabled while running again; True when it was disabled until now.
        (One disabled in the configuration stays disabled: only a reload changes that.)"""
        self._require_provider(provider_id)
        if provider_id in self._config_disabled or self._disabled.pop(provider_id, None) is None:
            return False
        self._tell(provider_id, None)
        return True

    def add_listener(self, listener: Callable[[str, str | None], None]) -> None:
        """Call `listener(provider_id, reason)` when a provider is disabled at run time, and
        `listener(provider_id, None)` when it is enabled again."""
        self._listeners.append(listener)

    def _tell(self, provider_id: str, reason: str | None) -> None:
        for listener in self._listeners:
            listener(provider_id, reason)

    def is_runtime_disabled(self, provider_id: str) -> bool:
        """Disabled while running (a 401/403), not by the configuration."""
        return provider_id in self._disabled and provider_id not in self._config_disabled

    def runtime_disabled(self) -> dict[str, str]:
        """The providers disabled while running, with their reasons."""
        return {p: r for p, r in self._disabled.items() if p not in self._config_disabled}

    def disabled_reason(self, provider_id: str) -> str | None:
        return self._disabled.get(provider_id)

    def is_disabled(self, provider_id: str) -> bool:
        return provider_id in self._disabled

    def _require_provider(self, provider_id: str) -> None:
        if provider_id not in self.providers:
            raise NotFoundError("provider", provider_id)


def _build_entry(provider: ProviderConfig, model_index: int, source: ModelInfoSource) -> ModelEntry:
    model = provider.models[model_index]
    litellm_model = provider.litellm_model_for(model)
    info: ModelInfo | None = None
    if provider.type != "local":
        try:
            info = source.lookup(litellm_model, provider.type)
        except Exception:
            info = None  # model info is a convenience; the file can always say it explicitly
    info = info or ModelInfo()

    tasks = frozenset(model.tasks)
    if model.capabilities is not None:
        capabilities = set(model.capabilities)
    else:
        capabilities = set(info.capabilities or ())
    # A model configured for the vision (audio) task is taken to accept images (audio).
    if Task.VISION in tasks:
        capabilities.add(Capability.VISION)
    if Task.AUDIO in tasks:
        capabilities.add(Capability.AUDIO)

    dimension = model.embedding_dimension or info.embedding_dimension
    if dimension is None and provider.type == "local":
        dimension = KNOWN_LOCAL_EMBEDDING_DIMENSIONS.get(model.id.lower())

    configured = model.price.to_price() if model.price is not None else None
    price, price_source = resolve_price(provider.type, configured, info.price)
    return ModelEntry(
        provider_id=provider.id,
        model=model.id,
        litellm_model=litellm_model,
        provider_type=provider.type,
        tasks=tasks,
        capabilities=frozenset(capabilities),
        context_window=model.context_window or info.context_window,
        embedding_dimension=dimension,
        price=price,
        priority=provider.priority,
        max_output_tokens=model.max_output_tokens or info.max_output_tokens,
        price_source=price_source,
    )
