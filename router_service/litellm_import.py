"""The one way the router imports LiteLLM: offline, quiet, and with its own retries off.

Whoever needs LiteLLM (the LiteLLM provider path, token counting, the provider-name check of the
config, the CLI's config migration) calls `import_litellm()`, never `import litellm`, because
some of LiteLLM's settings are read once, at import, and must be in place before it:

* `LITELLM_LOCAL_MODEL_COST_MAP`: the price map bundled with the pinned version, not a download;
* `MAX_IMAGE_URL_DOWNLOAD_SIZE_MB=0`: LiteLLM never fetches an image URL for a provider that
  wants bytes; the router fetches only through its own SSRF-safe fetcher
  (`limits.inline_image_urls`, `router_service.image_fetch`).

The rest is set on the module after import: no telemetry, no debug banners, no request or
response bodies in its logging objects, callbacks or exception texts, no retries of its own (the
router is the only retry loop, docs/ARCHITECTURE.md §4), and nothing below WARNING from the
loggers that print request bodies. Importing it takes seconds, so it happens only when needed.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

__all__ = ["import_litellm"]

# Their debug logs print request bodies (the OpenAI SDK logs full request options).
_NOISY_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "openai", "httpx", "httpcore")


def import_litellm() -> ModuleType:
    """LiteLLM, configured as the module docstring says; idempotent (the import is cached)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("MAX_IMAGE_URL_DOWNLOAD_SIZE_MB", "0")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.turn_off_message_logging = True
    litellm.redact_messages_in_exceptions = True
    litellm.log_raw_request_response = False
    litellm.set_verbose = False
    # litellm's OpenAI embedding path reads max_retries=0 as "unset" and retries twice
    # (``max_retries or DEFAULT_MAX_RETRIES``).
    litellm.DEFAULT_MAX_RETRIES = 0  # type: ignore[misc]  # Final in litellm, read at call time
    for name in _NOISY_LOGGERS:
        lite_logger = logging.getLogger(name)
        if lite_logger.level < logging.WARNING:
            lite_logger.setLevel(logging.WARNING)
    return litellm
