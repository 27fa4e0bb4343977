"""Domain errors as OpenAI error JSON with the HTTP statuses the official SDKs act on.

The SDKs pick their exception type from the status (400 BadRequestError, 401 AuthenticationError,
403 PermissionDeniedError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError, ...)
and retry 408/409/429/5xx honouring `Retry-After`, so a refusal that is worth retrying carries it.
Messages are the domain errors' own, which are written for the caller and never hold provider
text, prompts or keys.
"""

from __future__ import annotations

import logging
import math
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

from sekha_runtime import errors as e
from sekha_runtime.server.errors import MAX_MESSAGE_CHARS
from sekha_runtime.server.messages import bound

log = logging.getLogger(__name__)

# Our domain field paths (from the gRPC contract) in OpenAI's parameter names.
_PARAM_NAMES = {
    "generation.max_tokens": "max_tokens",
    "generation.temperature": "temperature",
    "generation.top_p": "top_p",
    "generation.stop_sequences": "stop",
    "routing.preferred_model": "model",
    "routing.task": "model",
    "routing.max_cost_usd": "x-sekha-max-cost-usd",
    "inputs": "input",
}


@dataclass(frozen=True)
class HttpError:
    """An error answer: status, OpenAI error body fields, extra headers."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        # A message may echo the caller's input: bounded like every gRPC status message.
        message = bound(self.message, MAX_MESSAGE_CHARS)
        return {"error": {"message": message, "type": self.type, "param": self.param, "code": self.code}}


def openai_param(field_path: str) -> str:
    """`generation.max_tokens` -> `max_tokens`; message paths keep their shape (`messages[0]...`)."""
    if field_path in _PARAM_NAMES:
        return _PARAM_NAMES[field_path]
    return field_path.replace(".parts[", ".content[")


def _retry_after(seconds: float | None) -> dict[str, str]:
    # Whole seconds, rounded up: a shorter wait than the real one would only be refused again.
    if seconds is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def http_error(exc: BaseException, route: str = "") -> HttpError:
    """The answer for an exception raised while serving `route`."""
    if isinstance(exc, e.InvalidArgumentError):
        first = exc.violations[0] if exc.violations else None
        return HttpError(
            400,
            exc.message,
            "invalid_request_error",
            "invalid_value",
            openai_param(first.field) if first else None,
        )
    if isinstance(exc, e.ProviderRejectedError):
        param = openai_param(exc.field_path) if exc.field_path else None
        return HttpError(400, exc.message, "invalid_request_error", exc.kind, param)
    if isinstance(exc, e.CostLimitExceededError):
        return HttpError(
            400, exc.message, "invalid_request_error", exc.reason.lower(), "x-sekha-max-cost-usd"
        )
    if isinstance(exc, e.NotFoundError):
        code = "model_not_found" if exc.resource_type == "model" else "not_found"
        return HttpError(404, exc.message, "invalid_request_error", code, "model")
    if isinstance(exc, e.NoRouteError):
        return HttpError(400, exc.message, "invalid_request_error", exc.violation_type.lower(), "model")
    if isinstance(exc, e.RateLimitedError):
        return HttpError(
            429,
            exc.message,
            "rate_limit_exceeded",
            "rate_limit_exceeded",
            headers=_retry_after(exc.retry_after_s),
        )
    if isinstance(exc, e.BudgetExhaustedError):
        # A budget refills when its period rolls over; an SDK retrying in a loop would only be
        # refused again, so no Retry-After, and the code says which it is.
        return HttpError(429, exc.message, "insufficient_quota", "budget_exhausted")
    if isinstance(exc, e.OverloadedError):
        return HttpError(
            503, exc.message, "server_error", "overloaded", headers=_retry_after(exc.retry_after_s)
        )
    if isinstance(exc, e.UnavailableError):
        headers = _retry_after(exc.retry_after_s or 1.0)
        if exc.attempts:
            # Which providers were tried and how each failed, as the success headers say it.
            headers["x-sekha-attempts"] = ", ".join(
                f"{a.provider_id}/{a.model}:failed:{a.error_kind}" for a in exc.attempts
            )[:512]
        return HttpError(
            503,
            exc.message,
            "server_error",
            exc.reason.lower(),
            headers=headers,
        )
    if isinstance(exc, e.DeadlineExceededError):
        return HttpError(504, exc.message or "deadline exceeded", "timeout", "deadline_exceeded")
    if isinstance(exc, e.UnauthenticatedError):
        return HttpError(401, exc.message, "invalid_request_error", "invalid_api_key")
    if isinstance(exc, e.PermissionDeniedError):
        return HttpError(403, exc.message, "invalid_request_error", "permission_denied")
    if isinstance(exc, e.UnimplementedError):
        return HttpError(501, exc.message, "invalid_request_error", "unimplemented")
    if isinstance(exc, e.FailedPreconditionError):
        return HttpError(400, exc.message, "invalid_request_error", exc.violation_type.lower())
    if isinstance(exc, e.GatewayError):
        return HttpError(500, exc.message, "server_error", "internal_error")
    # Anything else is our bug. The type and stack are enough to debug; the text may carry secrets
    # or prompts, so it is neither logged nor sent. The id ties the caller's report to the log.
    error_id = uuid.uuid4().hex[:16]
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unexpected %s in %s (error id %s)\n%s", type(exc).__name__, route, error_id, frames)
    return HttpError(500, f"internal error (error id {error_id})", "server_error", "internal_error")
