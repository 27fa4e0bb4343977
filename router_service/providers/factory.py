"""Choosing the client for a provider: the lean OpenAI path, LiteLLM, or the local model.

* ``native`` - the lean OpenAI-compatible client, whatever the type (it needs a base URL
  unless the type has a known default).
* ``auto`` - the lean client for OpenAI-compatible types (openai, openrouter, deepseek,
  moonshot, openai_compatible, and ollama via its ``/v1`` API), LiteLLM for the rest
  (anthropic, gemini, bedrock, ... any LiteLLM provider name); type ``local`` is the
  in-process embedding model.
* ``litellm`` - always LiteLLM (for ollama: its native ``/api/chat`` and ``/api/embed``).
* ``local`` - the in-process embedding model.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from router_service.providers.base import ProviderClient, ProviderSpec
from router_service.providers.local import LocalEmbedder, LocalEmbeddingProvider
from router_service.providers.openai_compat import (
    OPENAI_COMPATIBLE_TYPES,
    OpenAICompatProvider,
    resolve_base_url,
)

_DEFAULT_PORTS = {"http": 80, "https": 443}

TRANSPORTS = frozenset({"auto", "native", "litellm", "local"})


def uses_lean_path(spec: ProviderSpec) -> bool:
    """Whether ``make_provider`` picks the lean OpenAI-compatible client for ``spec``."""
    return spec.transport == "native" or (spec.transport == "auto" and spec.type in OPENAI_COMPATIBLE_TYPES)


def make_provider(
    spec: ProviderSpec,
    local_embedder_factory: Callable[[], LocalEmbedder] | None = None,
    session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    headers_hook: Callable[[dict[str, str]], None] | None = None,
) -> ProviderClient:
    """The client for ``spec``; raises ValueError for an unknown transport or missing base URL.

    ``local_embedder_factory`` builds the embedder of a local provider (default: the bundled
    model, loaded lazily); ``session_factory`` overrides the lean path's aiohttp session;
    ``headers_hook`` adds headers to every provider HTTP request (trace context).
    """
    if spec.transport not in TRANSPORTS:
        raise ValueError(f"provider {spec.id!r}: unknown transport {spec.transport!r}")
    if spec.transport == "local" or (spec.transport == "auto" and spec.type == "local"):
        embedder = local_embedder_factory() if local_embedder_factory is not None else LocalEmbedder()
        return LocalEmbeddingProvider(spec, embedder)
    if uses_lean_path(spec):
        return OpenAICompatProvider(spec, session_factory=session_factory, headers_hook=headers_hook)
    # Imported here: LiteLLM takes seconds to import and a router on the lean path needs none of it.
    from router_service.providers.litellm_provider import LiteLLMProvider

    return LiteLLMProvider(spec, headers_hook=headers_hook)


def provider_host_port(spec: ProviderSpec) -> tuple[str | None, int | None]:
    """The host the provider's client connects to and the port its URL names (None when the URL
    names none, or when only LiteLLM knows the endpoint). Never credentials or a path."""
    if spec.type == "local":
        return None, None
    try:
        url = resolve_base_url(spec)
    except ValueError:
        return None, None
    try:
        parts = urlsplit(url)
        return parts.hostname, parts.port
    except ValueError:
        return None, None


def provider_address(spec: ProviderSpec) -> str:
    """`host:port` for messages and logs (the scheme's default port when the URL names none);
    "" when unknown."""
    host, port = provider_host_port(spec)
    if host is None:
        return ""
    if port is None:
        port = _DEFAULT_PORTS.get(urlsplit(resolve_base_url(spec)).scheme)
    return f"{host}:{port}" if port else host
