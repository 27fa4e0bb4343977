"""Classification of provider failures into three kinds the router acts on.

* :class:`ProviderFailure` - the provider misbehaved (connect error, reset, timeout, 5xx,
  429, malformed answer). It counts against the provider's breaker and the router falls
  back to the next candidate.
* :class:`ProviderRejection` - the provider refused the request itself (400/422, context
  length, content policy). It is the caller's fault: no fallback, no breaker.
* :class:`ProviderAuthError` - 401/403: the provider's key is wrong; the router disables it.

The exceptions deliberately carry only a low-cardinality ``kind`` and the status code:
provider error bodies may echo prompts or keys, so they are never put into ``str()``, and
the original exception is not chained (``raise ... from None`` at the call sites) so that a
logged traceback cannot reveal them either. Only the original exception's class name is
kept, for debugging.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import aiohttp

KIND_CONNECT = "connect"
KIND_RESET = "reset"
KIND_TIMEOUT = "timeout"
KIND_RATE_LIMITED = "rate_limited"
KIND_BAD_RESPONSE = "bad_response"
# A 200 stream that ended with no text, no tool call and no finish reason: no answer at all.
KIND_EMPTY_STREAM = "empty_stream"
KIND_MODEL_NOT_FOUND = "model_not_found"
KIND_BAD_REQUEST = "bad_request"
KIND_CONTEXT_LENGTH = "context_length"
KIND_CONTENT_POLICY = "content_policy"
KIND_UNSUPPORTED = "unsupported"
KIND_AUTH = "auth"
# The `cause_type` of a connect failure whose connection was actively refused (nothing listens
# at the address): callers are told so, since it usually means the server is not started.
REFUSED = "ConnectionRefusedError"

_CONTEXT_LENGTH_MARKERS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input is too long",
)
_CONTENT_POLICY_MARKERS = ("content_policy", "content_filter", "content policy", "safety system")


class ProviderError(Exception):
    """Base of every classified provider error; ``str()`` never holds provider text."""

    kind: str
    status: int | None

    def __init__(self, kind: str, status: int | None = None, cause_type: str = "") -> None:
        super().__init__(kind)
        self.kind = kind
        self.status = status
        self.cause_type = cause_type

    def __str__(self) -> str:
        status = f" (status {self.status})" if self.status is not None else ""
        return f"{type(self).__name__}: {self.kind}{status}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, status={self.status!r})"


class ProviderFailure(ProviderError):
    """The provider failed: counts against its breaker and triggers fallback."""

    def __init__(
        self,
        kind: str,
        retry_after_s: float | None = None,
        status: int | None = None,
        cause_type: str = "",
    ) -> None:
        super().__init__(kind, status, cause_type)
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return (
            f"ProviderFailure(kind={self.kind!r}, retry_after_s={self.retry_after_s!r}, "
            f"status={self.status!r})"
        )


class ProviderRejection(ProviderError):
    """The provider refused the request itself: the caller's fault, no fallback, no breaker.

    ``field_path`` is the field of *our* request the provider named (``generation.temperature``),
    or "" when it named none we know; ``provider_code`` is the provider's machine-readable error
    code (``invalid_value``), kept only when it looks like one. Neither is ever the provider's
    free text.
    """

    def __init__(
        self,
        kind: str,
        status: int | None = None,
        cause_type: str = "",
        field_path: str = "",
        provider_code: str = "",
    ) -> None:
        super().__init__(kind, status, cause_type)
        self.field_path = field_path
        self.provider_code = provider_code


class ProviderAuthError(ProviderError):
    """The provider refused our credentials (401/403): the provider should be disabled."""

    def __init__(self, status: int | None = None, cause_type: str = "") -> None:
        super().__init__(KIND_AUTH, status, cause_type)


# --------------------------------------------------------------------------- helpers


def parse_retry_after(
    headers: Mapping[str, str] | None, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, or ``Retry-After`` as seconds or HTTP-date.

    Returns None when absent or unparsable; never negative.
    """
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now())


def _error_text(body_json: Any) -> str:
    """The lower-cased error code/type/message of an error body, for marker matching only."""
    if not isinstance(body_json, dict):
        return ""
    error = body_json.get("error", body_json)
    if isinstance(error, str):
        return error.lower()
    if not isinstance(error, dict):
        return ""
    parts = [error.get("code"), error.get("type"), error.get("message")]
    return " ".join(str(p) for p in parts if p is not None).lower()


# The provider's name of a request parameter -> the field of our request it came from. Message
# paths map to `messages` as a whole: a provider numbers messages after its own conversion (a
# system message moved out of the list), so its index need not be ours.
_PARAM_FIELDS = {
    "messages": "messages",
    "system": "messages",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "max_tokens": "generation.max_tokens",
    "max_completion_tokens": "generation.max_tokens",
    "max_output_tokens": "generation.max_tokens",
    "num_predict": "generation.max_tokens",
    "stop": "generation.stop_sequences",
    "stop_sequences": "generation.stop_sequences",
    "input": "inputs",
    "prompt": "messages",
}
_PARAM_HEAD = re.compile(r"[A-Za-z_]+")
# Anthropic names the parameter at the start of its message: "temperature: Input should be ...",
# "messages.0.content: Field required".
_LEADING_PARAM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\[\]]*)\s*:")
_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def request_field_for(param: object) -> str:
    """Our request field for a provider's parameter name (``messages[2].content`` -> ``messages``);
    "" when the provider named none, or one our request does not have."""
    if not isinstance(param, str):
        return ""
    head = _PARAM_HEAD.match(param.strip())
    return _PARAM_FIELDS.get(head.group(0), "") if head else ""


def _provider_error(body_json: Any) -> dict[str, Any]:
    if not isinstance(body_json, dict):
        return {}
    error = body_json.get("error", body_json)
    return error if isinstance(error, dict) else {}


def rejection_details(body_json: Any) -> tuple[str, str]:
    """(our field path, provider error code) from an error body; "" for what it does not say.

    OpenAI-style bodies carry ``param`` and ``code``; Anthropic's carry only a ``type`` and name
    the parameter at the start of the message, which is read for that name and nothing else.
    """
    error = _provider_error(body_json)
    field = request_field_for(error.get("param"))
    message = error.get("message")
    if not field and isinstance(message, str):
        leading = _LEADING_PARAM.match(message)
        field = request_field_for(leading.group(1)) if leading else ""
    code = ""
    for candidate in (error.get("code"), error.get("type")):
        if isinstance(candidate, bool) or candidate is None:
            continue
        text = str(candidate)
        if _CODE.fullmatch(text):
            code = text
            break
    return field, code


def _rejection_kind(text: str) -> str:
    if any(marker in text for marker in _CONTEXT_LENGTH_MARKERS):
        return KIND_CONTEXT_LENGTH
    if any(marker in text for marker in _CONTENT_POLICY_MARKERS):
        return KIND_CONTENT_POLICY
    return KIND_BAD_REQUEST


def classify_status(
    status: int,
    headers: Mapping[str, str] | None = None,
    error_text: str = "",
    cause_type: str = "",
    now: Callable[[], float] = time.time,
    rejected: tuple[str, str] = ("", ""),
) -> ProviderError:
    """Classify an HTTP error status (with the lower-cased error text used for markers).

    ``rejected`` is (our field path, provider error code) for a 4xx the caller caused.
    """
    if status in (401, 403):
        return ProviderAuthError(status, cause_type)
    if status == 429:
        return ProviderFailure(KIND_RATE_LIMITED, parse_retry_after(headers, now), status, cause_type)
    if status == 408:
        return ProviderFailure(KIND_TIMEOUT, None, status, cause_type)
    if status == 404:
        # The model (or the whole endpoint) is missing on this provider: a configuration
        # problem of this provider, not the caller's fault, so another candidate may serve.
        return ProviderFailure(KIND_MODEL_NOT_FOUND, None, status, cause_type)
    if 500 <= status <= 599:
        return ProviderFailure(f"http_{status}", parse_retry_after(headers, now), status, cause_type)
    if 400 <= status <= 499:
        return ProviderRejection(_rejection_kind(error_text), status, cause_type, *rejected)
    return ProviderFailure(KIND_BAD_RESPONSE, None, status, cause_type)


def classify_http(
    status: int,
    headers: Mapping[str, str] | None,
    body_json: Any,
    now: Callable[[], float] = time.time,
) -> ProviderError:
    """Classify a non-2xx answer of an OpenAI-compatible (or Ollama) endpoint."""
    return classify_status(
        status, headers, _error_text(body_json), "HTTPStatus", now, rejection_details(body_json)
    )


def decode_error_body(raw: bytes) -> Any:
    """The JSON of an error body, or None when it is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def classify_transport_error(exc: BaseException) -> ProviderError:
    """Classify an aiohttp / socket / timeout exception raised while talking to a provider."""
    cause_type = type(exc).__name__
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return ProviderFailure(KIND_TIMEOUT, cause_type=cause_type)
    if isinstance(exc, (aiohttp.ClientConnectorError, ConnectionRefusedError, aiohttp.InvalidURL)):
        return ProviderFailure(KIND_CONNECT, cause_type=REFUSED if _refused(exc) else cause_type)
    if isinstance(
        exc,
        (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientOSError,
            ConnectionResetError,
            BrokenPipeError,
            aiohttp.ClientConnectionError,
        ),
    ):
        return ProviderFailure(KIND_RESET, cause_type=cause_type)
    if isinstance(exc, (ValueError, KeyError, TypeError, IndexError, aiohttp.ContentTypeError)):
        return ProviderFailure(KIND_BAD_RESPONSE, cause_type=cause_type)
    if isinstance(exc, aiohttp.ClientResponseError):
        return classify_status(exc.status, exc.headers, "", cause_type)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return ProviderFailure(KIND_CONNECT, cause_type=cause_type)
    return ProviderFailure(KIND_BAD_RESPONSE, cause_type=cause_type)


def _refused(exc: BaseException) -> bool:
    """Whether the connection was actively refused (nothing listens there), anywhere in the chain."""
    for link in _exception_chain(exc):
        if isinstance(link, ConnectionRefusedError):
            return True
        if isinstance(link, aiohttp.ClientConnectorError) and isinstance(
            link.os_error, ConnectionRefusedError
        ):
            return True
    return False


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes/contexts and LiteLLM's ``original_exception`` links."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        original = getattr(current, "original_exception", None)
        current = (
            current.__cause__
            or current.__context__
            or (original if isinstance(original, BaseException) else None)
        )


def _network_kind(exc: BaseException) -> str | None:
    """connect / reset / timeout / bad_response, judged from the exception's cause chain."""
    import httpx  # httpx comes with litellm; only this LiteLLM path needs it.

    for link in _exception_chain(exc):
        if isinstance(link, (httpx.TimeoutException, asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return KIND_TIMEOUT
        if isinstance(link, (httpx.ConnectError, aiohttp.ClientConnectorError, ConnectionRefusedError)):
            return KIND_CONNECT
        if isinstance(
            link,
            (
                httpx.ReadError,
                httpx.RemoteProtocolError,
                httpx.WriteError,
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientPayloadError,
                ConnectionResetError,
                BrokenPipeError,
            ),
        ):
            return KIND_RESET
        if isinstance(link, (json.JSONDecodeError, KeyError, IndexError)):
            return KIND_BAD_RESPONSE
    return None


def _retry_headers(exc: BaseException) -> Mapping[str, str] | None:
    """The upstream response headers carried somewhere along the exception chain.

    LiteLLM rebuilds the response it attaches to its own exceptions without headers and keeps
    the real ones in ``litellm_response_headers``; the wrapped SDK errors carry them too.
    """
    for link in _exception_chain(exc):
        for candidate in (
            getattr(link, "litellm_response_headers", None),
            getattr(getattr(link, "response", None), "headers", None),
            getattr(link, "headers", None),
        ):
            if candidate is None or not hasattr(candidate, "items"):
                continue
            headers = {str(k): str(v) for k, v in candidate.items()}
            if any(k.lower() in ("retry-after", "retry-after-ms") for k in headers):
                return headers
    return None


def classify_litellm_error(exc: BaseException, now: Callable[[], float] = time.time) -> ProviderError:
    """Classify any exception raised by ``litellm.acompletion`` / ``aembedding`` / their streams."""
    if isinstance(exc, ProviderError):
        return exc
    # Imported here: litellm is heavy and only this path needs it (always through import_litellm).
    from router_service.litellm_import import import_litellm

    lx = import_litellm().exceptions

    cause_type = type(exc).__name__
    # Subclasses before their bases: both of these subclass BadRequestError.
    if isinstance(exc, lx.ContextWindowExceededError):
        return ProviderRejection(KIND_CONTEXT_LENGTH, 400, cause_type)
    if isinstance(exc, lx.ContentPolicyViolationError):
        return ProviderRejection(KIND_CONTENT_POLICY, 400, cause_type)
    if isinstance(exc, (lx.AuthenticationError, lx.PermissionDeniedError)):
        return ProviderAuthError(getattr(exc, "status_code", None), cause_type)
    if isinstance(exc, lx.RateLimitError):
        return ProviderFailure(
            KIND_RATE_LIMITED, parse_retry_after(_retry_headers(exc), now), 429, cause_type
        )
    if isinstance(exc, lx.Timeout):
        return ProviderFailure(KIND_TIMEOUT, None, None, cause_type)
    if isinstance(exc, lx.NotFoundError):
        return ProviderFailure(KIND_MODEL_NOT_FOUND, None, 404, cause_type)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return ProviderFailure(KIND_TIMEOUT, None, None, cause_type)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status <= 499:
        # BadRequestError, UnprocessableEntityError and friends; the message is read for
        # context-length / content-policy markers only, never kept.
        text = str(getattr(exc, "message", "") or "").lower()
        return classify_status(status, _retry_headers(exc), text, cause_type, now, _litellm_rejection(exc))
    # LiteLLM reports network errors and its own parse failures as InternalServerError /
    # APIConnectionError / MidStreamFallbackError with status 500: the cause chain tells
    # what really happened.
    kind = _network_kind(exc)
    if kind is not None:
        refused = kind == KIND_CONNECT and _refused(exc)
        return ProviderFailure(kind, None, None, REFUSED if refused else cause_type)
    if isinstance(exc, lx.APIConnectionError):
        return ProviderFailure(KIND_CONNECT, None, None, REFUSED if _refused(exc) else cause_type)
    if isinstance(exc, lx.APIResponseValidationError):
        return ProviderFailure(KIND_BAD_RESPONSE, None, None, cause_type)
    if isinstance(status, int) and status >= 500:
        return classify_status(_upstream_status(exc, status), _retry_headers(exc), "", cause_type, now)
    return ProviderFailure(KIND_BAD_RESPONSE, None, None, cause_type)


def _litellm_rejection(exc: BaseException) -> tuple[str, str]:
    """(our field path, provider error code) from the provider's error body somewhere along
    LiteLLM's exception chain: an SDK error's ``body`` / ``param`` / ``code``, or the raw JSON that
    LiteLLM's own provider errors (AnthropicError) keep as their message."""
    for link in _exception_chain(exc):
        bodies: list[Any] = [getattr(link, "body", None)]
        param, code = getattr(link, "param", None), getattr(link, "code", None)
        if param is not None or code is not None:
            bodies.append({"error": {"param": param, "code": code}})
        for raw in (getattr(link, "text", None), getattr(link, "message", None)):
            if isinstance(raw, str) and raw.lstrip().startswith("{"):
                bodies.append(decode_error_body(raw.encode()))
        for body in bodies:
            if isinstance(body, dict):
                field, code_text = rejection_details(body)
                if field or code_text:
                    return field, code_text
    return "", ""


def _upstream_status(exc: BaseException, reported: int) -> int:
    """The provider's own 5xx status where LiteLLM reports its catch-all 500 instead.

    LiteLLM folds server statuses it has no exception class for into InternalServerError
    (500): Anthropic's 529 ``overloaded_error`` arrives as a 500 whose cause chain still holds
    the 529. The attempt's kind and status must say what the provider said (``http_529``, as
    the lean path reports it), or an overloaded provider looks like a broken one.
    """
    if reported != 500:
        return reported
    for link in _exception_chain(exc):
        for status in (
            getattr(link, "status_code", None),
            getattr(getattr(link, "response", None), "status_code", None),
        ):
            if isinstance(status, int) and 500 < status <= 599:
                return status
    return reported
