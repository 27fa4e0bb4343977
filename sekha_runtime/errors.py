"""Domain errors shared by both services.

Domain code raises these; it never imports grpc. Each service's error
interceptor (`sekha_runtime.server.errors`) maps them to a gRPC status with
google.rpc details, following the table in docs/ARCHITECTURE.md §3. Every message here is
written for the caller: it must never carry provider error text, prompts or
keys, because it is sent over the wire verbatim.

Where a condition is exactly one status code the class is named after it
(`NotFoundError`, `UnavailableError`, ...), like the client's error classes in
`sekha.client`, which name the status a caller received. The names coincide on
purpose and the two hierarchies never meet in one namespace: the client cannot
import this module, and the one module that handles both
(`embedding_service.router_vectors`) imports them as modules (`c.` and `e.`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, named by its path (`messages[2].parts[0].image.data`)."""

    field: str
    description: str


@dataclass(frozen=True)
class AttemptSummary:
    """A provider call made while serving a request, safe to show the caller."""

    provider_id: str
    model: str
    error_kind: str


class GatewayError(Exception):
    """Base of every error whose message may be shown to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(GatewayError):
    """Malformed request or a limit exceeded: INVALID_ARGUMENT with BadRequest."""

    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        if isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations = list(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


class NoRouteError(GatewayError):
    """No configured model can serve the task or capability: FAILED_PRECONDITION."""

    reason = "NO_ROUTE"

    def __init__(self, message: str, subject: str = "", violation_type: str = "NO_MODEL") -> None:
        super().__init__(message)
        self.subject = subject
        self.violation_type = violation_type


class CostLimitExceededError(NoRouteError):
    """Every candidate's estimate exceeds the request's max_cost_usd."""

    reason = "COST_LIMIT_EXCEEDED"

    def __init__(self, message: str, cheapest_usd: float | None = None) -> None:
        super().__init__(message, subject="routing.max_cost_usd", violation_type="COST_LIMIT")
        self.cheapest_usd = cheapest_usd


class BudgetExhaustedError(GatewayError):
    """The caller's spend budget is used up: RESOURCE_EXHAUSTED with QuotaFailure."""

    reason = "BUDGET_EXHAUSTED"

    def __init__(self, message: str, scope: str, period: str) -> None:
        super().__init__(message)
        self.scope = scope
        self.period = period


class RateLimitedError(GatewayError):
    """The caller exceeded a rate limit: RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo."""

    reason = "RATE_LIMITED"

    def __init__(self, message: str, scope: str, retry_after_s: float, limit: str = "") -> None:
        super().__init__(message)
        self.scope = scope
        self.retry_after_s = retry_after_s
        self.limit = limit  # which limit: requests_per_minute, tokens_per_minute


class OverloadedError(GatewayError):
    """The server is over its concurrency limit: RESOURCE_EXHAUSTED with RetryInfo."""

    def __init__(self, message: str = "server is at its concurrency limit", retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnavailableError(GatewayError):
    """All candidates failed or their breakers are open: UNAVAILABLE with RetryInfo and ErrorInfo."""

    reason = "ALL_CANDIDATES_FAILED"

    def __init__(
        self,
        message: str,
        retry_after_s: float | None = None,
        attempts: list[AttemptSummary] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.attempts = list(attempts or [])
        if reason:
            self.reason = reason


class StreamInterruptedError(UnavailableError):
    """A stream broke after output reached the caller; no fallback is possible."""

    reason = "STREAM_INTERRUPTED"


class ProviderRejectedError(GatewayError):
    """The provider refused the request itself (400/422, context length, content policy).

    It is the caller's fault, so it maps to INVALID_ARGUMENT and never feeds the breaker.
    `field_path` names the request field the provider objected to ("" when it named none we know);
    `provider_code` is the provider's machine-readable error code ("" when it gave none).
    """

    def __init__(
        self, message: str, kind: str, field_path: str = "messages", provider_code: str = ""
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.field_path = field_path
        self.provider_code = provider_code


@dataclass
class NotFoundError(GatewayError):
    """A collection, model, provider or migration is unknown: NOT_FOUND with ResourceInfo."""

    resource_type: str
    resource_name: str
    message: str = field(default="")

    def __post_init__(self) -> None:
        if not self.message:
            self.message = f"{self.resource_type} {self.resource_name!r} not found"
        super().__init__(self.message)


class AlreadyExistsError(GatewayError):
    """The resource exists already (a second migration of one base): ALREADY_EXISTS."""

    def __init__(self, message: str, resource_type: str, resource_name: str) -> None:
        super().__init__(message)
        self.resource_type = resource_type
        self.resource_name = resource_name


class DimensionMismatchError(GatewayError):
    """A vector's dimension differs from its collection's: FAILED_PRECONDITION."""

    def __init__(self, collection: str, expected: int, got: int) -> None:
        super().__init__(f"collection {collection!r} holds {expected}-d vectors, got {got}-d")
        self.collection = collection
        self.expected = expected
        self.got = got


class UnauthenticatedError(GatewayError):
    """Missing or wrong credentials: UNAUTHENTICATED."""


class PermissionDeniedError(GatewayError):
    """The caller is known but may not do this: PERMISSION_DENIED."""


class DeadlineExceededError(GatewayError):
    """The caller's deadline passed before the work finished: DEADLINE_EXCEEDED."""


class UnimplementedError(GatewayError):
    """The RPC exists in the contract but its capability is not built yet: UNIMPLEMENTED."""


class FailedPreconditionError(GatewayError):
    """The system is not in a state where the request can run (a collection in use): FAILED_PRECONDITION."""

    def __init__(self, message: str, subject: str = "", violation_type: str = "STATE") -> None:
        super().__init__(message)
        self.subject = subject
        self.violation_type = violation_type
