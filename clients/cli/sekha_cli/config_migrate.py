"""Migrate v1 settings to the v2 Router (and Embedding) YAML configuration.

Three v1 inputs are understood, and may be mixed in one file:

* the v1 bridge's flat environment settings (a ``.env`` file: ``KEY=VALUE`` lines, comments,
  optional quotes, optional ``export``): ``OLLAMA_URL``, ``OLLAMA_TIMEOUT``, ``EMBEDDING_MODEL``,
  ``SUMMARIZATION_MODEL``, ``EXTRACTION_MODEL``, ``DEFAULT_MODEL``, ``OPENAI_API_KEY``,
  ``ANTHROPIC_API_KEY``, ``REDIS_URL``, ``LOG_LEVEL``, with or without the bridge's ``SEKHA_``
  prefix;
* the v1 controller's flat TOML keys (``ollama_url``, ``embedding_model``,
  ``summarization_model``, ``chroma_url``, ``llm_bridge_url``, ``rate_limit_per_minute``, ...);
* the spellings of the old migration script: an ``llm_providers`` list whose entries say
  ``type`` and ``timeout`` (``provider_type``, ``timeout_secs``, ``model_id``, ``task`` and
  ``dimension`` are read too).

``DEFAULT_MODEL`` (the model v1 used when a call named none) becomes a chat model serving
``chat_small`` and ``chat_smart`` whose provider is tried before the other chat providers.

What has a v2 home is mapped; everything else is reported, never silently dropped, and the
report matches the written file: a setting whose provider had to be left out is listed as not
mapped, and only the variables the YAML really reads are named. Secrets are
never written: an API key becomes a ``${VAR}`` reference the router expands at start-up. The
written YAML is validated with the services' own config models before it replaces anything,
and an embedding model whose vector dimension cannot be inferred is left out (and reported)
rather than written in a form ``check-config`` would refuse.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

__all__ = [
    "KNOWN_OLLAMA_EMBEDDING_DIMENSIONS",
    "MigrationError",
    "MigrationPlan",
    "MigrationReport",
    "migrate_file",
    "parse_dotenv",
    "plan_migration",
    "read_v1_settings",
    "render_yaml",
]

V1Format = Literal["env", "toml", "yaml"]

# Vector sizes of common Ollama embedding models, which LiteLLM's bundled map does not list.
KNOWN_OLLAMA_EMBEDDING_DIMENSIONS: Mapping[str, int] = MappingProxyType(
    {
        "nomic-embed-text": 768,
        "mxbai-embed-large": 1024,
        "all-minilm": 384,
        "snowflake-arctic-embed": 1024,
        "bge-m3": 1024,
    }
)

# The v1 default when no Ollama address was configured.
V1_DEFAULT_OLLAMA_URL = "http://localhost:11434"

# Provider types a bare v1 model name may belong to (looked up in LiteLLM's model map); any
# other bare name was served by the v1 bridge's Ollama.
_HOSTED_TYPES = frozenset({"openai", "anthropic", "openrouter", "deepseek", "moonshot"})
_FLAT_PRIORITY = MappingProxyType({"local": 10, "ollama": 20, "openai": 30, "anthropic": 40})
# A provider known only by its key gets one general model, so that the key keeps working.
_DEFAULT_MODELS: Mapping[str, tuple[str, tuple[str, ...]]] = MappingProxyType(
    {
        "openai": ("gpt-4o-mini", ("chat_small", "chat_smart")),
        "anthropic": ("claude-haiku-4-5", ("chat_small", "chat_smart")),
    }
)
# DEFAULT_MODEL answered every v1 call that named no model: in v2, the general chat tasks.
_DEFAULT_MODEL_TASKS = ("chat_small", "chat_smart")
_CHAT_TASKS = frozenset({"chat_small", "chat_smart", "chat_large", "vision"})
_TASK_ORDER = ("embedding", "chat_small", "chat_smart", "chat_large", "vision", "audio")
_TASK_ALIASES = MappingProxyType({"chat_fast": "chat_small", "chat": "chat_smart"})
_CAPABILITY_FLAGS = MappingProxyType(
    {"supports_vision": "vision", "supports_audio": "audio", "supports_function_calling": "tools"}
)
_PLACEHOLDER_SECRET = "migration-check-placeholder"
_PLACEHOLDER_URL = "http://migration-check.invalid:1"
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*)$")
_ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}$")
_PROVIDER_ID_CHARS = re.compile(r"[^a-z0-9_-]+")

# v1 spellings (lower case, without the SEKHA_ prefix) -> one canonical name per setting.
_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "ollama_url": "ollama_url",
        "ollama_base_url": "ollama_url",
        "ollama_host": "ollama_url",
        "ollama_timeout": "ollama_timeout",
        "ollama_timeout_s": "ollama_timeout",
        "ollama_timeout_secs": "ollama_timeout",
        "embedding_model": "embedding_model",
        "embed_model": "embedding_model",
        "default_embed_model": "embedding_model",
        "default_embedding_model": "embedding_model",
        "summarization_model": "summarization_model",
        "summarize_model": "summarization_model",
        "default_summarize_model": "summarization_model",
        "default_summarization_model": "summarization_model",
        "extraction_model": "extraction_model",
        "entity_extraction_model": "extraction_model",
        "default_extraction_model": "extraction_model",
        "importance_model": "importance_model",
        "default_importance_model": "importance_model",
        "chat_model": "chat_model",
        "default_chat_model": "chat_model",
        "default_model": "default_model",
        "redis_url": "redis_url",
        "log_level": "log_level",
        "rate_limit_per_minute": "rate_limit_per_minute",
        "chroma_url": "chroma_url",
        "chroma_host": "chroma_host",
        "chroma_port": "chroma_port",
        "chroma_path": "chroma_path",
        "chroma_persist_dir": "chroma_path",
        "chroma_persist_directory": "chroma_path",
        "llm_providers": "llm_providers",
        "providers": "llm_providers",
        # Nested TOML tables, flattened to dotted keys.
        "ollama.url": "ollama_url",
        "ollama.base_url": "ollama_url",
        "ollama.timeout": "ollama_timeout",
        "chroma.url": "chroma_url",
        "chroma.host": "chroma_host",
        "chroma.port": "chroma_port",
        "chroma.path": "chroma_path",
        "redis.url": "redis_url",
    }
)
# Model settings -> the v2 tasks the model serves.
_MODEL_TASKS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "embedding_model": ("embedding",),
        "summarization_model": ("chat_smart",),
        "extraction_model": ("chat_small",),
        "importance_model": ("chat_small",),
        "chat_model": ("chat_small", "chat_smart"),
    }
)
# v1 settings with no v2 home, and what to do instead.
_NO_V2_HOME: Mapping[str, str] = MappingProxyType(
    {
        "llm_bridge_url": "the v1 bridge is gone: clients call the router's gRPC target "
        "(SEKHA_ROUTER_TARGET, default 127.0.0.1:50051)",
        "mcp_api_key": "not copied (secret): v2 stores hashed keys; run `sekha keys hash` and put the "
        "hash in the server's auth configuration",
        "database_url": "the v1 controller's SQL database; the v2 services do not use it",
        "database.url": "the v1 controller's SQL database; the v2 services do not use it",
        "max_connections": "a v1 database pool size; the nearest v2 limit is server.max_concurrent_rpcs",
        "summarization_enabled": "a v1 controller feature switch; v2 has no summarization job",
        "pruning_enabled": "a v1 controller feature switch; v2 has no pruning job",
        "server_port": "the v1 HTTP port; the v2 router listens on gRPC (server.port, default 50051)",
        "server_host": "the v1 HTTP listener; the v2 router listens on server.host",
        "host": "the v1 HTTP listener; the v2 router listens on server.host",
        "port": "the v1 HTTP port; the v2 router listens on gRPC (server.port, default 50051)",
        "celery_broker_url": "v2 has no background task queue",
        "celery_result_backend": "v2 has no background task queue",
        "default_models": "v2 routes by task: each model lists the tasks it serves",
        "routing": "v2 takes the cost ceiling per request (max_cost) and breakers from circuit_breaker",
        "version": "the v1 file's format version",
    }
)


class MigrationError(Exception):
    """The migration was refused or failed; nothing was written."""


@dataclass
class MigrationReport:
    """What the migration did with every v1 setting."""

    source: str = ""
    source_format: str = ""
    mapped: list[tuple[str, str]] = field(default_factory=list)
    unmapped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    env_references: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    backup: Path | None = None

    def map(self, key: str, target: str) -> None:
        self.mapped.append((key, target))

    def skip(self, key: str, reason: str) -> None:
        self.unmapped.append((key, reason))

    def withdraw(self, target_prefix: str, reason: str) -> None:
        """Move every mapping into `target_prefix` (a provider that was left out) to not mapped."""
        kept = []
        for key, target in self.mapped:
            if target.startswith(target_prefix):
                self.unmapped.append((key, reason))
            else:
                kept.append((key, target))
        self.mapped = kept

    def reference(self, variable: str) -> None:
        if variable not in self.env_references:
            self.env_references.append(variable)

    def render(self) -> str:
        """The report as lines for a terminal; secret values never appear in it."""
        lines = [f"v1 settings: {self.source or '<input>'} ({self.source_format})"]
        for path in self.written:
            lines.append(f"wrote: {path}")
        if self.backup is not None:
            lines.append(f"backup of the original: {self.backup}")
        width = max((len(k) for k, _ in (*self.mapped, *self.unmapped)), default=0)
        lines.append(f"mapped ({len(self.mapped)}):")
        lines.extend(f"  {key:<{width}}  -> {target}" for key, target in self.mapped)
        lines.append(f"not mapped ({len(self.unmapped)}), review by hand:")
        lines.extend(f"  {key:<{width}}  {reason}" for key, reason in self.unmapped)
        if self.env_references:
            names = ", ".join(f"${{{name}}}" for name in self.env_references)
            lines.append(
                f"secrets: the YAML references {names}; no secret value was written. "
                "Set these variables in the service's environment."
            )
        if self.notes:
            lines.append("notes:")
            lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass
class MigrationPlan:
    """The v2 configuration documents (plain data, ready for YAML) and the report."""

    router: dict[str, Any]
    embedding: dict[str, Any] | None
    report: MigrationReport


# --------------------------------------------------------------------------------------- reading


def parse_dotenv(text: str) -> dict[str, str]:
    """KEY=VALUE lines; `#` comments, blank lines, `export`, single or double quotes."""
    values: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match is None:
            continue
        key, value = match.group(1), match.group(2).strip()
        if value[:1] in ("'", '"'):
            quote = value[0]
            end = value.find(quote, 1)
            value = value[1:end] if end != -1 else value[1:]
            if quote == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        else:
            # An unquoted value ends at a ` #` comment.
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        values[key] = value
    return values


def detect_format(path: Path, text: str) -> V1Format:
    """By extension (.toml, .yaml/.yml, .env); else TOML if it parses and has tables or lists."""
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return "toml"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".env" or path.name.startswith(".env"):
        return "env"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "env"
    # KEY=value lines with quoted values are valid TOML too; upper-case keys say ".env".
    if data and all(key.isupper() for key in data):
        return "env"
    return "toml"


def read_v1_settings(path: Path, fmt: V1Format | Literal["auto"] = "auto") -> tuple[V1Format, dict[str, Any]]:
    """Parse the v1 file at `path`; raise MigrationError when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MigrationError(f"{path}: file not found") from None
    except OSError as exc:
        raise MigrationError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    chosen: V1Format = detect_format(path, text) if fmt == "auto" else fmt
    if chosen == "env":
        return chosen, dict(parse_dotenv(text))
    if chosen == "toml":
        try:
            return chosen, tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise MigrationError(f"{path}: not valid TOML ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise MigrationError(f"{path}: not valid YAML") from None
    if data is None:
        return chosen, {}
    if not isinstance(data, dict):
        raise MigrationError(f"{path}: expected a mapping of settings")
    return chosen, data


# -------------------------------------------------------------------------------------- planning


@dataclass
class _Model:
    id: str
    tasks: list[str]
    embedding_dimension: int | None = None
    context_window: int | None = None
    capabilities: list[str] | None = None
    price_zero: bool = False
    source: str = ""


@dataclass
class _Provider:
    id: str
    type: str
    base_url: str | None = None
    api_key_ref: str | None = None
    priority: int = 50
    timeout_s: float | None = None
    enabled: bool | None = None
    models: list[_Model] = field(default_factory=list)

    def add_model(self, model: _Model) -> _Model:
        for existing in self.models:
            if existing.id == model.id:
                existing.tasks = _ordered_tasks([*existing.tasks, *model.tasks])
                existing.embedding_dimension = existing.embedding_dimension or model.embedding_dimension
                return existing
        model.tasks = _ordered_tasks(model.tasks)
        self.models.append(model)
        return model

    def to_yaml(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.base_url is not None:
            data["base_url"] = self.base_url
        if self.api_key_ref is not None:
            data["api_key"] = f"${{{self.api_key_ref}}}"
        data["priority"] = self.priority
        if self.timeout_s is not None:
            data["timeout_s"] = self.timeout_s
        if self.enabled is not None:
            data["enabled"] = self.enabled
        models = []
        for model in self.models:
            entry: dict[str, Any] = {"id": model.id, "tasks": list(model.tasks)}
            if model.embedding_dimension is not None:
                entry["embedding_dimension"] = model.embedding_dimension
            if model.context_window is not None:
                entry["context_window"] = model.context_window
            if model.capabilities is not None:
                entry["capabilities"] = list(model.capabilities)
            if model.price_zero:
                entry["price"] = {"input_per_million": 0, "output_per_million": 0}
            models.append(entry)
        data["models"] = models
        return data


def _ordered_tasks(tasks: Sequence[str]) -> list[str]:
    unique = dict.fromkeys(tasks)
    return sorted(unique, key=lambda t: _TASK_ORDER.index(t) if t in _TASK_ORDER else len(_TASK_ORDER))


def _normalise_key(key: str) -> str:
    lowered = key.lower()
    for prefix in ("sekha__", "sekha_"):
        if lowered.startswith(prefix) and lowered[len(prefix) :]:
            return lowered[len(prefix) :]
    return lowered


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML/YAML tables -> dotted keys; the provider list stays a list."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and _normalise_key(str(key)) not in _NO_V2_HOME:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class _Planner:
    """Turns one v1 settings mapping into v2 documents, recording every decision."""

    def __init__(self, report: MigrationReport, model_info: Any, router_fields: frozenset[str]) -> None:
        self.report = report
        self.model_info = model_info
        self.router_fields = router_fields
        self.providers: dict[str, _Provider] = {}
        self.embedding: dict[str, Any] = {}
        self.embedding_model_ref: str | None = None
        self.router_state: dict[str, Any] | None = None
        self.default_provider: _Provider | None = None
        self.router_rate_limits: dict[str, Any] | None = None

    # ---- providers

    def provider_of_type(self, provider_type: str) -> _Provider:
        for provider in self.providers.values():
            if provider.type == provider_type:
                return provider
        provider = _Provider(
            id=self.unique_id(provider_type),
            type=provider_type,
            priority=_FLAT_PRIORITY.get(provider_type, 50),
        )
        self.providers[provider.id] = provider
        return provider

    def unique_id(self, wanted: str) -> str:
        base = _PROVIDER_ID_CHARS.sub("-", wanted.lower()).strip("-_") or "provider"
        candidate, counter = base, 2
        while candidate in self.providers:
            candidate, counter = f"{base}-{counter}", counter + 1
        return candidate

    def ensure_ollama(self) -> _Provider:
        provider = self.provider_of_type("ollama")
        if provider.base_url is None:
            provider.base_url = V1_DEFAULT_OLLAMA_URL
            self.report.notes.append(
                f"no Ollama address in the v1 file: used the v1 default {V1_DEFAULT_OLLAMA_URL}"
            )
        return provider

    # ---- models

    def resolve_model(self, name: str) -> tuple[str, str]:
        """(provider type, model id) for a v1 model name (`ollama/x`, `openai/x` or bare)."""
        if "/" in name:
            prefix, rest = name.split("/", 1)
            if prefix == "ollama" or prefix == "ollama_chat":
                return "ollama", rest
            if prefix in _HOSTED_TYPES or prefix in _litellm_provider_names():
                return prefix, rest
            return "ollama", name
        hosted = _litellm_model_provider(name)
        if hosted in _HOSTED_TYPES:
            return hosted, name
        return "ollama", name

    def embedding_dimension(self, provider_type: str, model_id: str) -> int | None:
        from router_service.config import KNOWN_LOCAL_EMBEDDING_DIMENSIONS

        if provider_type == "local":
            return KNOWN_LOCAL_EMBEDDING_DIMENSIONS.get(model_id.lower())
        prefix = {"openai_compatible": "openai"}.get(provider_type, provider_type)
        info = self.model_info.lookup(f"{prefix}/{model_id}", provider_type)
        if info is not None and info.embedding_dimension:
            return int(info.embedding_dimension)
        if provider_type == "ollama":
            bare = model_id.split(":", 1)[0].lower()
            return KNOWN_OLLAMA_EMBEDDING_DIMENSIONS.get(bare)
        return None

    def add_flat_model(self, key: str, name: str, tasks: tuple[str, ...]) -> _Provider | None:
        """Add the model; return its provider (None when the model could not be added)."""
        if not isinstance(name, str) or not name.strip():
            self.report.skip(key, "empty model name")
            return None
        provider_type, model_id = self.resolve_model(name.strip())
        provider = self.ensure_ollama() if provider_type == "ollama" else self.provider_of_type(provider_type)
        if provider.type in _HOSTED_TYPES and provider.api_key_ref is None:
            provider.api_key_ref = f"{provider.type.upper()}_API_KEY"
            self.report.reference(provider.api_key_ref)
        model = _Model(id=model_id, tasks=list(tasks), price_zero=provider.type == "ollama", source=key)
        if "embedding" in tasks:
            dimension = self.embedding_dimension(provider.type, model_id)
            if dimension is None:
                self.report.skip(
                    key,
                    f"embedding model {name!r}: its vector dimension could not be inferred (not in "
                    "LiteLLM's model map nor the Ollama table); add it by hand with embedding_dimension",
                )
                return None
            model.embedding_dimension = dimension
            self.embedding_model_ref = f"{provider.id}/{model_id}"
        provider.add_model(model)
        dim = f", dimension {model.embedding_dimension}" if model.embedding_dimension else ""
        self.report.map(key, f"providers[{provider.id}].models[{model_id}] (tasks {', '.join(tasks)}{dim})")
        return provider

    def prefer_default_provider(self) -> None:
        """Order DEFAULT_MODEL's provider before every other provider with a chat model."""
        preferred = self.default_provider
        if preferred is None or preferred.id not in self.providers:
            return
        rivals = [
            p.priority
            for p in self.providers.values()
            if p is not preferred and any(_CHAT_TASKS & set(m.tasks) for m in p.models)
        ]
        if rivals and preferred.priority >= min(rivals):
            preferred.priority = max(1, min(rivals) - 1)
        self.report.notes.append(
            f"providers[{preferred.id}]: serves DEFAULT_MODEL, so it is tried before the other chat "
            f"providers (priority {preferred.priority}); a request can still name another model"
        )

    # ---- old migration script's provider list

    def add_provider_list(self, key: str, entries: Any) -> None:
        if not isinstance(entries, list):
            self.report.skip(key, "expected a list of providers")
            return
        for index, entry in enumerate(entries):
            where = f"{key}[{index}]"
            if not isinstance(entry, Mapping):
                self.report.skip(where, "expected a table of provider settings")
                continue
            self.add_provider_entry(where, entry)

    def add_provider_entry(self, where: str, entry: Mapping[str, Any]) -> None:
        from router_service.config import BUILTIN_PROVIDER_TYPES

        known = {
            "id",
            "name",
            "type",
            "provider_type",
            "base_url",
            "url",
            "api_base",
            "api_key",
            "timeout",
            "timeout_secs",
            "timeout_s",
            "priority",
            "enabled",
            "models",
        }
        for extra in sorted(set(entry) - known):
            self.report.skip(f"{where}.{extra}", "unknown provider setting")
        provider_type = str(entry.get("type") or entry.get("provider_type") or "").strip().lower()
        if provider_type == "litellm":
            provider_type = "openai_compatible"
        if provider_type not in BUILTIN_PROVIDER_TYPES and provider_type not in _litellm_provider_names():
            self.report.skip(where, f"unknown provider type {provider_type!r}; provider left out")
            return
        wanted_id = str(entry.get("id") or entry.get("name") or provider_type)
        provider = _Provider(id=self.unique_id(wanted_id), type=provider_type)
        base_url = entry.get("base_url") or entry.get("url") or entry.get("api_base")
        if base_url:
            provider.base_url = str(base_url).rstrip("/")
        elif provider_type == "ollama":
            provider.base_url = V1_DEFAULT_OLLAMA_URL
            self.report.notes.append(f"{where}: no base_url, used the v1 default {V1_DEFAULT_OLLAMA_URL}")
        elif provider_type == "openai_compatible":
            self.report.skip(where, "an OpenAI-compatible provider needs a base_url; provider left out")
            return
        self.take_api_key(where, provider, entry.get("api_key"))
        priority = entry.get("priority")
        if isinstance(priority, int) and not isinstance(priority, bool) and 1 <= priority <= 100:
            provider.priority = priority
        elif priority is not None:
            self.report.skip(f"{where}.priority", "not an integer from 1 to 100; the v2 default 50 applies")
        timeout = next((entry[k] for k in ("timeout", "timeout_secs", "timeout_s") if k in entry), None)
        if timeout is not None:
            provider.timeout_s = self.positive_number(f"{where}.timeout", timeout)
        if isinstance(entry.get("enabled"), bool):
            provider.enabled = entry["enabled"]
        models = entry.get("models")
        if not isinstance(models, list) or not models:
            self.report.skip(where, "no models listed; provider left out")
            return
        for m_index, model_entry in enumerate(models):
            self.add_listed_model(f"{where}.models[{m_index}]", provider, model_entry)
        if not provider.models:
            self.report.skip(where, "none of its models could be migrated; provider left out")
            return
        self.providers[provider.id] = provider
        self.report.map(where, f"providers[{provider.id}] (type {provider_type})")

    def add_listed_model(self, where: str, provider: _Provider, entry: Any) -> None:
        if isinstance(entry, str):
            entry = {"id": entry}
        if not isinstance(entry, Mapping):
            self.report.skip(where, "expected a model name or table")
            return
        known = {
            "id",
            "model_id",
            "name",
            "model",
            "task",
            "tasks",
            "dimension",
            "embedding_dimension",
            "context_window",
            *_CAPABILITY_FLAGS,
        }
        for extra in sorted(set(entry) - known):
            self.report.skip(f"{where}.{extra}", "unknown model setting")
        raw_id = entry.get("id") or entry.get("model_id") or entry.get("name") or entry.get("model")
        if not isinstance(raw_id, str) or not raw_id.strip():
            self.report.skip(where, "model without an id; left out")
            return
        model_id = raw_id.strip()
        if model_id.startswith(f"{provider.type}/"):
            model_id = model_id.split("/", 1)[1]
        raw_tasks = entry.get("tasks", entry.get("task"))
        tasks: list[str] = []
        for task in [raw_tasks] if isinstance(raw_tasks, str) else list(raw_tasks or []):
            name = _TASK_ALIASES.get(str(task).lower(), str(task).lower())
            if name in _TASK_ORDER:
                tasks.append(name)
            else:
                self.report.skip(f"{where}.task", f"v2 has no task {task!r}")
        if raw_tasks is None:
            tasks = ["embedding"] if "embed" in model_id.lower() else ["chat_smart"]
            self.report.notes.append(f"{where}: no task given; assumed {tasks[0]} from the name {model_id!r}")
        if not tasks:
            self.report.skip(where, f"model {model_id!r} has no task v2 knows; left out")
            return
        model = _Model(id=model_id, tasks=tasks, price_zero=provider.type == "ollama", source=where)
        context = entry.get("context_window")
        if isinstance(context, int) and not isinstance(context, bool) and context > 0:
            model.context_window = context
        flags = [cap for flag, cap in _CAPABILITY_FLAGS.items() if entry.get(flag) is True]
        if any(flag in entry for flag in _CAPABILITY_FLAGS):
            model.capabilities = flags
        if "embedding" in tasks:
            given = entry.get("dimension", entry.get("embedding_dimension"))
            if isinstance(given, int) and not isinstance(given, bool) and given > 0:
                model.embedding_dimension = given
            else:
                model.embedding_dimension = self.embedding_dimension(provider.type, model_id)
            if model.embedding_dimension is None:
                self.report.skip(
                    where,
                    f"embedding model {model_id!r}: its vector dimension could not be inferred; "
                    "left out (add it by hand with embedding_dimension)",
                )
                return
        provider.add_model(model)

    def take_api_key(self, where: str, provider: _Provider, value: Any) -> None:
        if value is None or value == "":
            if provider.type in _HOSTED_TYPES:
                provider.api_key_ref = f"{provider.type.upper()}_API_KEY"
                self.report.reference(provider.api_key_ref)
            return
        match = _ENV_REFERENCE.match(str(value))
        if match is not None:
            provider.api_key_ref = match.group(1)
        else:
            # The conventional variable of the provider type, unless another provider reads it already.
            conventional = re.sub(r"[^A-Z0-9]+", "_", provider.type.upper()) + "_API_KEY"
            taken = {p.api_key_ref for p in self.providers.values()}
            provider.api_key_ref = (
                conventional
                if conventional not in taken
                else re.sub(r"[^A-Z0-9]+", "_", provider.id.upper()).strip("_") + "_API_KEY"
            )
            self.report.notes.append(
                f"{where}.api_key: the literal key in the v1 file was NOT copied; the YAML reads "
                f"${{{provider.api_key_ref}}} instead"
            )
        self.report.reference(provider.api_key_ref)
        self.report.map(f"{where}.api_key", f"providers[{provider.id}].api_key = ${{{provider.api_key_ref}}}")

    def positive_number(self, where: str, value: Any) -> float | None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.report.skip(where, f"not a number ({value!r})")
            return None
        if number <= 0:
            self.report.skip(where, "must be positive")
            return None
        return int(number) if number.is_integer() else number

    # ---- the rest

    def chroma_from_url(self, key: str, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if not parts.hostname:
            self.report.skip(key, f"not a URL ({url!r})")
            return
        ssl = parts.scheme == "https"
        chroma: dict[str, Any] = {
            "mode": "http",
            "host": parts.hostname,
            "port": parts.port or (443 if ssl else 8000),
        }
        if ssl:
            chroma["ssl"] = True
        self.embedding.setdefault("chroma", {}).update(chroma)
        self.report.map(key, f"embedding chroma: mode http, host {chroma['host']}, port {chroma['port']}")

    def redis(self, key: str, url: str) -> None:
        if "state" not in self.router_fields:
            self.report.skip(
                key, "the v2 router config has no Redis section yet (shared state); set it by hand"
            )
            return
        parts = urlsplit(url)
        if parts.password:
            # A password in the URL is a secret: reference the variable instead of copying it.
            reference = key.upper() if key.upper().endswith("REDIS_URL") else "REDIS_URL"
            value = f"${{{reference}}}"
            self.report.reference(reference)
        else:
            value = url
        self.router_state = {"backend": "redis", "redis_url": value}
        self.report.map(key, "state: backend redis, redis_url")


def _litellm_provider_names() -> frozenset[str]:
    from router_service.config import litellm_provider_names

    return litellm_provider_names()


def _litellm_model_provider(model: str) -> str | None:
    from router_service.litellm_import import import_litellm

    entry = import_litellm().model_cost.get(model)
    return str(entry.get("litellm_provider")) if isinstance(entry, Mapping) else None


def plan_migration(
    settings: Mapping[str, Any],
    *,
    source: str = "",
    source_format: str = "env",
    model_info: Any = None,
) -> MigrationPlan:
    """The v2 documents for v1 `settings`; pure apart from LiteLLM's bundled model map."""
    from router_service.config import RouterConfig

    if model_info is None:
        from router_service.model_registry import LiteLLMModelInfo

        model_info = LiteLLMModelInfo()
    report = MigrationReport(source=source, source_format=source_format)
    planner = _Planner(report, model_info, frozenset(RouterConfig.model_fields))

    canonical: dict[str, tuple[str, Any]] = {}
    api_keys: list[tuple[str, str]] = []
    for original, value in _flatten(settings).items():
        normalised = _normalise_key(original)
        name = _ALIASES.get(normalised)
        if name is not None:
            if name in canonical:
                report.skip(original, f"duplicate of {canonical[name][0]}; the first one is used")
                continue
            canonical[name] = (original, value)
        elif normalised.endswith("_api_key") and normalised != "mcp_api_key":
            api_keys.append((original, normalised.removesuffix("_api_key")))
        elif normalised in _NO_V2_HOME:
            report.skip(original, _NO_V2_HOME[normalised])
        else:
            report.skip(original, "unknown v1 setting")

    if "llm_providers" in canonical:
        key, value = canonical["llm_providers"]
        planner.add_provider_list(key, value)
    if "ollama_url" in canonical:
        key, value = canonical["ollama_url"]
        url = str(value).strip()
        if re.match(r"^https?://[^\s/]+", url):
            provider = planner.provider_of_type("ollama")
            if urlsplit(url).password:
                # Credentials in the URL are a secret: the YAML reads them from the environment.
                provider.base_url = "${OLLAMA_URL}"
                report.reference("OLLAMA_URL")
                report.map(key, f"providers[{provider.id}].base_url = ${{OLLAMA_URL}} (it holds a password)")
            else:
                provider.base_url = url.rstrip("/")
                report.map(key, f"providers[{provider.id}].base_url")
        else:
            report.skip(key, f"not an http(s) URL ({url!r})")
    if "ollama_timeout" in canonical:
        key, value = canonical["ollama_timeout"]
        timeout = planner.positive_number(key, value)
        if timeout is not None:
            provider = planner.provider_of_type("ollama")
            provider.timeout_s = timeout
            report.map(key, f"providers[{provider.id}].timeout_s")
    for name, tasks in _MODEL_TASKS.items():
        if name in canonical:
            key, value = canonical[name]
            planner.add_flat_model(key, str(value), tasks)
    if "default_model" in canonical:
        key, value = canonical["default_model"]
        planner.default_provider = planner.add_flat_model(key, str(value), _DEFAULT_MODEL_TASKS)
    for original, provider_name in api_keys:
        variable = (
            original
            if original.isupper() and not original.lower().startswith("sekha")
            else (f"{provider_name.upper()}_API_KEY")
        )
        if provider_name not in _HOSTED_TYPES and provider_name not in _litellm_provider_names():
            report.skip(original, "not copied (secret): no v2 provider type of that name")
            continue
        provider = planner.provider_of_type(provider_name)
        provider.api_key_ref = variable
        report.reference(variable)
        report.map(original, f"providers[{provider.id}].api_key = ${{{variable}}} (value not copied)")
    if "redis_url" in canonical:
        key, value = canonical["redis_url"]
        planner.redis(key, str(value))
    if "log_level" in canonical:
        key, value = canonical["log_level"]
        report.skip(
            key,
            f"not a config file setting in v2: set SEKHA_LOG_LEVEL={str(value).upper()} "
            "in the services' environment",
        )
    if "rate_limit_per_minute" in canonical:
        key, value = canonical["rate_limit_per_minute"]
        limit = planner.positive_number(key, value)
        if limit is not None:
            # v1 limited each client; v2's default_caller applies to every caller without its own entry.
            planner.router_rate_limits = {"default_caller": {"requests_per_minute": int(limit)}}
            report.map(key, "rate_limits.default_caller.requests_per_minute")
    if "chroma_url" in canonical:
        key, value = canonical["chroma_url"]
        planner.chroma_from_url(key, str(value))
    else:
        if "chroma_host" in canonical:
            key, value = canonical["chroma_host"]
            planner.embedding.setdefault("chroma", {}).update({"mode": "http", "host": str(value)})
            report.map(key, "embedding chroma.host (mode http)")
        if "chroma_port" in canonical:
            key, value = canonical["chroma_port"]
            port = planner.positive_number(key, value)
            if port is not None:
                planner.embedding.setdefault("chroma", {}).update({"mode": "http", "port": int(port)})
                report.map(key, "embedding chroma.port (mode http)")
    if "chroma_path" in canonical:
        key, value = canonical["chroma_path"]
        if planner.embedding.get("chroma", {}).get("mode") == "http":
            report.skip(key, "a Chroma server is configured too; the server wins")
        else:
            planner.embedding.setdefault("chroma", {}).update({"mode": "persistent", "path": str(value)})
            report.map(key, "embedding chroma: mode persistent, path")

    for provider in planner.providers.values():
        if not provider.models and provider.type in _DEFAULT_MODELS:
            model_id, tasks = _DEFAULT_MODELS[provider.type]
            provider.add_model(_Model(id=model_id, tasks=list(tasks)))
            report.notes.append(
                f"providers[{provider.id}]: v1 used this key by model name; added {model_id} "
                f"({', '.join(tasks)}) so it serves requests - edit the model list as needed"
            )
    for provider_id in [pid for pid, p in planner.providers.items() if not p.models]:
        del planner.providers[provider_id]
        report.notes.append(f"providers[{provider_id}]: no model to serve; left out")
        report.withdraw(
            f"providers[{provider_id}]",
            f"providers[{provider_id}] was left out (no model to serve): add the provider with a "
            "model by hand to use it",
        )
    planner.prefer_default_provider()
    if any(p.type == "ollama" and any(m.price_zero for m in p.models) for p in planner.providers.values()):
        report.notes.append("Ollama models are priced at $0 (local), as in the v2 default config")

    router: dict[str, Any] = {}
    if planner.router_state is not None:
        router["state"] = planner.router_state
    if planner.router_rate_limits is not None:
        router["rate_limits"] = planner.router_rate_limits
    ordered = sorted(planner.providers.values(), key=lambda p: (p.priority, p.id))
    router["providers"] = [p.to_yaml() for p in ordered]
    if not ordered:
        raise MigrationError(
            "nothing to migrate: the v1 settings name no model or provider the v2 router could serve"
        )
    embedding: dict[str, Any] | None = None
    if "chroma" in planner.embedding:
        embedding = dict(planner.embedding)
        if planner.embedding_model_ref is not None:
            embedding["defaults"] = {"model": planner.embedding_model_ref}
            report.map("(embedding model)", f"embedding defaults.model = {planner.embedding_model_ref}")
    # The report names only the variables the written YAML really reads.
    written = render_yaml(router) + (render_yaml(embedding) if embedding is not None else "")
    report.env_references = [name for name in report.env_references if f"${{{name}}}" in written]
    return MigrationPlan(router=router, embedding=embedding, report=report)


# -------------------------------------------------------------------------------------- writing


def render_yaml(data: Mapping[str, Any], header: Sequence[str] = ()) -> str:
    """YAML text with `header` as leading comment lines."""
    body = yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False, allow_unicode=True)
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header)
    return comments + body


def _backup(path: Path, now: dt.datetime) -> Path:
    target = path.with_name(path.name + ".bak")
    if target.exists():
        stamp = now.strftime("%Y%m%dT%H%M%S")
        target = path.with_name(f"{path.name}.{stamp}.bak")
        counter = 2
        while target.exists():
            target = path.with_name(f"{path.name}.{stamp}-{counter}.bak")
            counter += 1
    shutil.copy2(path, target)
    return target


def _validated_temp(text: str, destination: Path, load: Callable[[Path], object]) -> Path:
    """Write `text` to a temporary file next to `destination` and validate it with `load`."""
    from sekha_runtime.configloader import ConfigError

    destination.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w",
        encoding="utf-8",
        dir=destination.parent,
        prefix=f".{destination.name}.",
        suffix=".tmp",
        delete=False,
    )
    temp = Path(handle.name)
    try:
        with handle:
            handle.write(text)
        load(temp)
    except ConfigError as exc:
        temp.unlink(missing_ok=True)
        raise MigrationError(
            f"the migrated configuration for {destination} does not validate "
            "(a migrator bug; nothing written):\n" + "\n".join(f"  {line}" for line in exc.errors)
        ) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def default_embedding_path(new: Path) -> Path:
    """Where the embedding YAML goes when not given: `<new stem>.embedding.yaml` beside `new`."""
    return new.with_name(f"{new.stem}.embedding.yaml")


def migrate_file(
    old: Path,
    new: Path,
    *,
    embedding_out: Path | None = None,
    force: bool = False,
    fmt: V1Format | Literal["auto"] = "auto",
    model_info: Any = None,
    now: Callable[[], dt.datetime] = dt.datetime.now,
) -> MigrationReport:
    """Migrate the v1 file `old` to the v2 router YAML `new` (and an embedding YAML when Chroma is set).

    Refuses to overwrite existing outputs unless `force`; backs `old` up before writing; validates
    each document with the service's config model before moving it into place.
    """
    from embedding_service.config import EmbeddingConfig
    from router_service.config import RouterConfig

    if not old.is_file():
        raise MigrationError(f"{old}: file not found")
    source_format, settings = read_v1_settings(old, fmt)
    plan = plan_migration(settings, source=str(old), source_format=source_format, model_info=model_info)
    embedding_path = (embedding_out or default_embedding_path(new)) if plan.embedding is not None else None
    for target in (new, embedding_path):
        if target is not None and target.exists() and not force:
            raise MigrationError(f"{target} exists; pass --force to overwrite it")
        if target is not None and target.resolve() == old.resolve() and not force:
            raise MigrationError(
                f"{target} is the v1 file itself; pass --force to replace it (a backup is kept)"
            )

    stamp = now()
    header = [
        f"Sekha v2 router configuration, migrated from {old.name} ({source_format}) "
        f"by `sekha config migrate` on {stamp:%Y-%m-%d}.",
        "API keys are ${VAR} references: set those variables in the router's environment.",
        "Check it with `sekha config check <file>`.",
    ]
    # Referenced variables get stand-in values for the validation (URLs must still look like URLs).
    placeholders = {
        name: _PLACEHOLDER_URL if name.endswith("_URL") else _PLACEHOLDER_SECRET
        for name in plan.report.env_references
    }
    report = plan.report
    report.backup = _backup(old, stamp)
    temps: list[tuple[Path, Path]] = []
    try:
        router_text = render_yaml(plan.router, header)
        temps.append(
            (
                _validated_temp(
                    router_text,
                    new,
                    lambda p: RouterConfig.load(p, environ=placeholders, model_info=model_info),
                ),
                new,
            )
        )
        if plan.embedding is not None and embedding_path is not None:
            embedding_header = [
                f"Sekha v2 embedding service configuration, migrated from {old.name} on {stamp:%Y-%m-%d}.",
            ]
            embedding_text = render_yaml(plan.embedding, embedding_header)
            temps.append(
                (
                    _validated_temp(
                        embedding_text,
                        embedding_path,
                        lambda p: EmbeddingConfig.load(p, environ=placeholders),
                    ),
                    embedding_path,
                )
            )
    except BaseException:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
        raise
    for temp, destination in temps:
        os.replace(temp, destination)
        report.written.append(destination)
    return report
