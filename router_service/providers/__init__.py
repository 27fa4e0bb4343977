"""Provider clients: how the router talks to each LLM provider.

``make_provider(spec)`` returns a :class:`ProviderClient` - the lean OpenAI-compatible
client, the LiteLLM client, or the in-process embedding model - and every failure it raises
is one of :class:`ProviderFailure`, :class:`ProviderRejection` or :class:`ProviderAuthError`.
LiteLLM is not imported by this package; only building a LiteLLM client imports it.
"""

from router_service.providers.base import (
    ProviderChatResult,
    ProviderClient,
    ProviderEmbedResult,
    ProviderSpec,
    StreamEnd,
    StreamEvent,
    TextDelta,
)
from router_service.providers.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderFailure,
    ProviderRejection,
    classify_http,
    classify_litellm_error,
)
from router_service.providers.factory import make_provider, uses_lean_path
from router_service.providers.local import LocalEmbedder, LocalEmbeddingProvider
from router_service.providers.openai_compat import OpenAICompatProvider

__all__ = [
    "LocalEmbedder",
    "LocalEmbeddingProvider",
    "OpenAICompatProvider",
    "ProviderAuthError",
    "ProviderChatResult",
    "ProviderClient",
    "ProviderEmbedResult",
    "ProviderError",
    "ProviderFailure",
    "ProviderRejection",
    "ProviderSpec",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "classify_http",
    "classify_litellm_error",
    "make_provider",
    "uses_lean_path",
]
