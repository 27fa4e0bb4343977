"""The Router's data plane: route, call, fall back, stream, count and price.

`Gateway` ties the decision plane (registry, prices, token estimates, routing,
breakers) to the provider clients. Chat, StreamChat and Embed each make only their
provider call; `Attempts` and `Attempt` are the one place that admits, classifies
and books the calls, under these rules (docs/ARCHITECTURE.md §4):

* candidates are tried in the route's order; a failure that counts (connect,
  reset, timeout, 5xx, 429) feeds the breaker and moves on, with jittered
  backoff, until the candidates, the attempt budget or the deadline run out;
  a provider that timed out is not called again within the request (a hung
  provider would only hang again);
* a request without a deadline gets the router's default
  (`retry.default_deadline_s`), so no caller waits for ever;
* when no candidate answers, UNAVAILABLE names each attempt's provider, model
  and cause ("connection refused by 127.0.0.1:11434"), in a bounded message;
* the caller's own mistakes (400/422, context length, content policy) return
  at once and never feed a breaker; 401/403 disables the provider and spares
  its breaker, before or after a stream's first chunk alike;
* a stream falls back only before its first event reached the caller (text,
  tool-call or reasoning piece; role-only or metadata-only chunks do not count);
  once output went out, a broken stream ends with UNAVAILABLE
  (StreamInterruptedError, carrying every attempt of the request), the
  delivered output is billed, and a stream the provider layer judged incomplete
  (no answer at all, or cut inside a tool call) counts as broken;
* an answer to a JSON response format is checked against it; with the routing
  option `fallback_on_nonconforming` a non-conforming answer is paid for, booked
  as a failed attempt, and the next candidate tried (the last one's answer is
  returned, non-conforming, when none conforms);
* every upstream timeout is min(provider timeout, caller's remaining deadline);
  a timeout caused by the caller's deadline is not the provider's fault;
* usage comes from the provider; when it reports none, tokens are counted
  locally and the usage says so; unknown prices are reported, never $0;
* with a SpendGuard: rate limits are checked once per request, each attempt
  reserves its estimated cost against the caller's budgets before the call
  (a candidate the budget cannot cover is skipped like an open breaker), the
  real cost is settled after it, and whatever is left is given back on the
  way out (`SpendTicket.close` in a `finally`).

Every operational event on the way (a failed attempt, a fallback, a provider
disabled, a broken stream, a request refused by a rate limit or budget) is
one structured log line (`sekha_runtime.events.EventLog`), rate-limited per
provider; none carries a prompt, a provider's error text or a key.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from router_service import domain as d
from router_service.breaker import Breakers
from router_service.image_fetch import ImageInliner
from router_service.model_registry import Registry
from router_service.pricing import PriceTable
from router_service.providers.base import ProviderClient, StreamEnd, TextDelta
from router_service.providers.errors import REFUSED, ProviderAuthError, ProviderFailure, ProviderRejection
from router_service.routing import Router
from router_service.spend import Identity, SpendGuard, SpendTicket, resolve_identity
from router_service.structured import check_conformance
from router_service.tokens import TokenEstimator
from router_service.validation import Limits, check_chat, check_embed
from sekha_runtime.errors import (
    AttemptSummary,
    BudgetExhaustedError,
    DeadlineExceededError,
    FieldViolation,
    GatewayError,
    InvalidArgumentError,
    NoRouteError,
    ProviderRejectedError,
    RateLimitedError,
    StreamInterruptedError,
    UnavailableError,
)
from sekha_runtime.events import EventLog
from sekha_runtime.inuse import InUse

# The UNAVAILABLE message lists attempts up to about this length (the error guard caps a
# status message at 512 characters); the details carry them all.
_MAX_CAUSES_CHARS = 400
_MAX_NAME_CHARS = 80  # of a `provider/model` name, and of a cause
_SKIP_CAUSES = {
    "provider_disabled": "disabled",
    "breaker_open": "circuit breaker open",
    "budget": "not within the spend budget",
}

_REJECTION_MESSAGES = {
    "context_length": "the request is longer than the model's context window",
    "content_policy": "the provider's content policy refused the request",
    "unsupported": "the model does not support this request",
}


def _rejected(exc: ProviderRejection) -> ProviderRejectedError:
    """The caller's view of a provider's refusal: the field it named (ours), its error code, and
    never its free text, which may echo the prompt."""
    field = exc.field_path
    if not field and exc.kind in ("context_length", "content_policy"):
        field = "messages"  # what a context window or a content policy is about
    message = _REJECTION_MESSAGES.get(exc.kind)
    if message is None:
        message = f"{field} was rejected by the provider" if field else "rejected by the provider"
        if exc.provider_code:
            message += f" (provider error code: {exc.provider_code})"
    return ProviderRejectedError(message, kind=exc.kind, field_path=field, provider_code=exc.provider_code)


@dataclass(frozen=True)
class Deadline:
    """The caller's deadline as an absolute monotonic time (None = no deadline).

    `default_s` is set when the caller brought none and the router's default applies.
    """

    at: float | None
    clock: Callable[[], float] = time.monotonic
    default_s: float | None = None

    @classmethod
    def after(cls, remaining_s: float | None, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(None if remaining_s is None else clock() + remaining_s, clock)

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - self.clock()


NO_DEADLINE = Deadline(None)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_base_s: float = 0.05
    backoff_max_s: float = 1.0


class Observer(Protocol):
    """What the gateway reports about routing and each provider attempt (metrics and tracing).

    `attempt_started` is called just before a provider call, on the task making it, and returns
    an opaque token (a span scope, say) that comes back with every later call about the same
    attempt; each started attempt ends in exactly one `attempt_finished` or `attempt_cancelled`
    (which gets the usage and cost of output already streamed, since the provider bills it).
    `upstream_time` marks the moment the provider answered (what follows is the router's own
    work). `seconds` arguments are on the gateway's clock, which tests may fake.
    """

    def route_started(self) -> Any: ...

    def routed(self, decision: d.RoutingDecision, started: Any) -> None: ...

    def attempt_started(self, operation: str, entry: Any, request: Any) -> Any: ...

    def attempt_finished(
        self,
        operation: str,
        entry: Any,
        attempt: d.Attempt,
        usage: d.Usage | None,
        cost: d.Cost | None,
        scope: Any = None,
        response_model: str = "",
        output_text: str | None = None,
        output_tool_calls: Any = (),
        output_reasoning: str = "",
    ) -> None: ...

    def attempt_cancelled(
        self, scope: Any, usage: d.Usage | None = None, cost: d.Cost | None = None
    ) -> None: ...

    def fallback(self, task: d.Task, from_provider: str, to_provider: str) -> None: ...

    def first_token(self, entry: Any, seconds: float, scope: Any = None) -> None: ...

    def upstream_time(self, seconds: float, scope: Any = None) -> None: ...


class NullObserver:
    """Reports nowhere; every hook is a no-op (the gateway's default)."""

    def route_started(self) -> None:
        return None

    def routed(self, *args: Any, **kwargs: Any) -> None:
        pass

    def attempt_started(self, *args: Any, **kwargs: Any) -> None:
        return None

    def attempt_finished(self, *args: Any, **kwargs: Any) -> None:
        pass

    def attempt_cancelled(self, *args: Any, **kwargs: Any) -> None:
        pass

    def fallback(self, *args: Any, **kwargs: Any) -> None:
        pass

    def first_token(self, *args: Any, **kwargs: Any) -> None:
        pass

    def upstream_time(self, *args: Any, **kwargs: Any) -> None:
        pass


class Attempts:
    """One request's provider calls: the one home of the attempt rules (the module docstring).

    Chat, StreamChat and Embed differ only in the provider call they make. The loop is::

        async for attempt in attempts:          # admitted candidates, in the plan's order
            async with attempt:                 # books whatever ends the call
                reply = await attempt.provider.chat(...)
                cost = await attempt.succeed(usage)
                return ...
        raise attempts.exhausted()

    Admission (disabled provider, a provider that timed out already, backoff, deadline, breaker
    permit, budget reservation) happens in `__anext__`; the caller's rate limits when the
    request opens (`Attempts.open`). Leaving `async with` by a provider failure books it
    (breaker, observer, event log) and moves on to the next candidate; a rejection of the
    request itself, a failure after output reached the caller, or the deadline passing end the
    request with the matching error; any other exit (the caller cancelling, the server
    stopping) gives the breaker permit back and books nothing against the provider. Output
    already delivered is billed on every way out, since the provider bills it.
    """

    def __init__(
        self,
        gateway: Gateway,
        decision: d.RoutingDecision,
        operation: str,
        request: d.ChatRequest | d.EmbedRequest,
        deadline: Deadline,
        request_id: str,
        identity: Identity,
    ) -> None:
        self.gateway = gateway
        self.decision = decision
        self.operation = operation
        self.request = request
        self.deadline = deadline
        self.request_id = request_id
        self.identity = identity
        self.attempts: list[d.Attempt] = []
        self.ticket: SpendTicket | None = None  # None when the gateway has no SpendGuard
        planned = self._planned(decision, request.routing)
        self._plan = iter(planned)
        self._planned_calls = len(planned)
        self._calls = 0
        self._retry_after_s: float | None = None
        self._previous_provider: str | None = None
        self._refusal: GatewayError | None = None  # why a budget refused a candidate (the first)
        self._timed_out: set[str] = set()  # providers not to call again in this request
        # The caller chose the id: it goes into log lines clipped, never whole.
        self.log_request_id = _clip(request_id, _MAX_NAME_CHARS)

    @classmethod
    async def open(
        cls,
        gateway: Gateway,
        decision: d.RoutingDecision,
        operation: str,
        request: d.ChatRequest | d.EmbedRequest,
        deadline: Deadline,
        caller: str | None,
    ) -> Attempts:
        """Start a request's book-keeping; raises RateLimitedError before any provider call."""
        identity = resolve_identity(caller, request.metadata)
        # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID (a fifth of the cost).
        request_id = request.request_id or os.urandom(16).hex()
        attempts = cls(gateway, decision, operation, request, deadline, request_id, identity)
        if gateway.spend is not None:
            tokens = decision.estimated_input_tokens + decision.estimated_output_tokens
            try:
                attempts.ticket = await gateway.spend.open(identity, operation, request_id, tokens)
            except RateLimitedError as refused:
                attempts._log_refusal("rate_limit", refused.limit, refused.scope, refused.retry_after_s)
                raise
        return attempts

    async def close(self) -> None:
        """Give back what the request reserved and did not use (every way out calls this)."""
        if self.ticket is not None:
            await self.ticket.close()

    # -- admission ------------------------------------------------------------------------

    def _planned(self, decision: d.RoutingDecision, prefs: d.RoutingPreferences) -> list[d.Candidate]:
        """The calls to make, in order: each candidate once, then again while attempts remain."""
        max_attempts = self.gateway.retry.max_attempts
        candidates = list(decision.candidates[:1] if prefs.disable_fallback else decision.candidates)
        plan: list[d.Candidate] = []
        while len(plan) < max_attempts and candidates:
            plan.extend(candidates[: max_attempts - len(plan)])
            if prefs.disable_fallback:
                break
        return plan

    def calls_left(self) -> bool:
        """Whether the plan still holds a call after the ones made (a fallback is possible)."""
        return self._calls < self._planned_calls

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> Attempt:
        for candidate in self._plan:
            if candidate.provider_id in self._timed_out:
                continue  # a retry the plan held for a provider that hung: not made, not listed
            timeout_s = await self._admit(candidate)
            if timeout_s is not None:
                return Attempt(self, candidate, timeout_s)
        raise StopAsyncIteration

    async def _admit(self, candidate: d.Candidate) -> float | None:
        """Admit a call: returns its timeout, or None when the candidate is skipped."""
        gateway = self.gateway
        if gateway.registry.disabled_reason(candidate.provider_id) is not None:
            self.attempts.append(_skip(candidate, "provider_disabled"))
            return None
        if self._calls > 0:
            retry = gateway.retry
            delay = min(retry.backoff_max_s, retry.backoff_base_s * 2 ** (self._calls - 1))
            delay *= 0.5 + gateway.rng.random()  # full jitter spreads retries of many callers apart
            remaining = self.deadline.remaining()
            if remaining is not None:
                delay = min(delay, max(remaining - 0.001, 0.0))
            if delay > 0:
                await gateway.sleep(delay)
        self._check_deadline()
        remaining = self.deadline.remaining()
        breaker = gateway.breakers.get(candidate.provider_id)
        if not breaker.try_acquire():
            self.attempts.append(_skip(candidate, "breaker_open"))
            return None
        if self.ticket is not None:
            try:
                await self.ticket.reserve(candidate)
            except (BudgetExhaustedError, NoRouteError) as refusal:
                breaker.release()
                self.attempts.append(_skip(candidate, "budget"))
                self._refusal = self._refusal or refusal
                return None
            except BaseException:
                breaker.release()  # a half-open probe permit must not leak with the error
                raise
        provider_timeout = gateway.provider_timeouts[candidate.provider_id]
        previous = self._previous_provider
        if previous is not None and previous != candidate.provider_id:
            gateway.observer.fallback(self.decision.task, previous, candidate.provider_id)
            gateway.events.info(
                "fallback",
                f"falling back from {previous} to {candidate.provider_id}",
                subject=previous,
                from_provider=previous,
                to_provider=candidate.provider_id,
                to_model=candidate.model,
                task=self.decision.task.value,
                request_id=self.log_request_id,
            )
        self._previous_provider = candidate.provider_id
        self._calls += 1
        return provider_timeout if remaining is None else min(provider_timeout, remaining)

    # -- outcomes -------------------------------------------------------------------------

    def exhausted(self) -> GatewayError:
        """The error that ends a request whose plan ran out."""
        if self._refusal is not None and self._calls == 0:
            # No provider was called: the budget, not the providers, is why the request failed.
            refusal = self._refusal
            if isinstance(refusal, BudgetExhaustedError):
                self._log_refusal("budget", refusal.period, refusal.scope)
            else:
                self._log_refusal("budget", "price_unknown", "")
            return refusal
        retry_after = self._retry_after_s
        open_ids = [a.provider_id for a in self.attempts if a.error_kind == "breaker_open"]
        if open_ids:
            wait = self.gateway.breakers.seconds_until_available(open_ids)
            retry_after = wait if retry_after is None else min(retry_after, wait)
        return UnavailableError(
            f"no provider could serve the request: {_causes(self.attempts)}",
            retry_after_s=retry_after if retry_after is not None else 1.0,
            attempts=self.summaries(),
        )

    def summaries(self) -> list[AttemptSummary]:
        return [AttemptSummary(a.provider_id, a.model, a.error_kind) for a in self.attempts]

    def _note_retry_after(self, seconds: float | None) -> None:
        if seconds is not None:
            self._retry_after_s = max(self._retry_after_s or 0.0, seconds)

    def _check_deadline(self) -> None:
        remaining = self.deadline.remaining()
        if remaining is not None and remaining <= 0:
            default_s = self.deadline.default_s
            if default_s is not None:
                raise DeadlineExceededError(
                    f"no provider answered within the router's default deadline of {default_s:g} s "
                    "(retry.default_deadline_s); a request may set its own deadline"
                )
            raise DeadlineExceededError("deadline exceeded before a provider answered")

    def _log_refusal(self, limit: str, which: str, scope: str, retry_after_s: float | None = None) -> None:
        caller = self.identity.caller
        fields: dict[str, Any] = {"caller": caller, "limit": limit, "which": which, "scope": scope}
        if retry_after_s is not None:
            fields["retry_after_s"] = round(retry_after_s, 3)
        self.gateway.events.warning(
            "request_refused",
            f"request of {caller} refused by its {which.replace('_', ' ')} {limit.replace('_', ' ')}",
            subject=f"{caller}|{limit}",
            operation=self.operation,
            request_id=self.log_request_id,
            **fields,
        )


class Attempt:
    """One admitted provider call of a request; `Attempts` describes how it is used."""

    def __init__(self, attempts: Attempts, candidate: d.Candidate, timeout_s: float) -> None:
        gateway = attempts.gateway
        self._attempts = attempts
        self._gateway = gateway
        self.candidate = candidate
        self.timeout_s = timeout_s  # min(the provider's timeout, the caller's remaining deadline)
        self.entry: Any = gateway.registry.by_key(candidate.key)
        self.provider: ProviderClient = gateway.providers[candidate.provider_id]
        self._text: list[str] = []  # the text that reached the caller
        self._generated: list[str] = []  # all output that reached it (text, tool arguments, reasoning)
        self._reasoning: list[str] = []
        self._booked = False
        self.started = gateway.clock()
        self._scope = gateway.observer.attempt_started(attempts.operation, self.entry, attempts.request)

    @property
    def text(self) -> str:
        """The text delivered to the caller so far."""
        return "".join(self._text)

    @property
    def generated(self) -> str:
        """Everything delivered so far (text, tool-call arguments, reasoning), for counting tokens."""
        return "".join(self._generated)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    def delivered(self, output: d.StreamOutput) -> None:
        """Output reached the caller: from now on the request cannot fall back."""
        if not self._generated:
            self._gateway.observer.first_token(self.entry, self._gateway.clock() - self.started, self._scope)
        if isinstance(output, str):
            self._text.append(output)
            self._generated.append(output)
        elif isinstance(output, d.ToolCallDelta):
            self._generated.append(output.arguments)
        else:
            self._reasoning.append(output.text)
            self._generated.append(output.text)

    async def succeed(
        self,
        usage: d.Usage,
        response_model: str = "",
        output_text: str = "",
        *,
        error_kind: str = "",
        output_tool_calls: tuple[d.ToolCall, ...] = (),
        output_reasoning: str = "",
    ) -> d.Cost:
        """Book the answer: breaker, upstream time, real cost, spend, attempt list, observer.

        With `error_kind` the provider answered well but the answer is refused (it does not
        conform): the attempt is paid for and healthy for the breaker, yet listed as failed.
        """
        gateway, attempts, candidate = self._gateway, self._attempts, self.candidate
        latency = gateway.clock() - self.started
        gateway.breakers.get(candidate.provider_id).record_success(latency)
        gateway.observer.upstream_time(latency, self._scope)
        cost = gateway.prices.real_cost(self.entry, usage)
        await self._settle(usage, cost)
        outcome = d.AttemptOutcome.FAILED if error_kind else d.AttemptOutcome.SUCCEEDED
        cause = "the answer did not conform to the response format" if error_kind == "nonconforming" else ""
        attempt = d.Attempt(candidate.provider_id, candidate.model, outcome, error_kind, latency, cause)
        attempts.attempts.append(attempt)
        operation = attempts.operation
        extra: dict[str, Any] = {}
        if operation == "chat":
            extra = {
                "response_model": response_model,
                "output_text": output_text,
                "output_tool_calls": output_tool_calls,
                "output_reasoning": output_reasoning,
            }
        gateway.observer.attempt_finished(
            operation, self.entry, attempt, usage, cost, scope=self._scope, **extra
        )
        self._booked = True
        return cost

    async def __aenter__(self) -> Attempt:
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> bool:
        """Book how the call ended; True (go on to the next candidate) after a provider failure."""
        if exc is None or self._booked:
            return False
        if isinstance(exc, ProviderFailure | ProviderAuthError):
            await self._failed(exc)
            return True
        if isinstance(exc, ProviderRejection):
            raise await self._rejection(exc) from None
        self._cancelled()
        return False

    # -- bookings -------------------------------------------------------------------------

    def _billed(self) -> tuple[d.Usage, d.Cost]:
        """What the output delivered so far costs (the provider generated it, and bills it)."""
        gateway = self._gateway
        usage = gateway._usage(self.entry, None, self._attempts.decision, self.generated)
        return usage, gateway.prices.real_cost(self.entry, usage)

    async def _settle(self, usage: d.Usage, cost: d.Cost) -> None:
        ticket = self._attempts.ticket
        if ticket is not None:
            await ticket.settle(self.candidate.provider_id, self.candidate.model, usage, cost)

    def _finish(
        self,
        outcome: d.AttemptOutcome,
        kind: str,
        latency: float,
        usage: d.Usage | None,
        cost: d.Cost | None,
        cause: str = "",
    ) -> None:
        attempt = d.Attempt(self.candidate.provider_id, self.candidate.model, outcome, kind, latency, cause)
        self._attempts.attempts.append(attempt)
        self._gateway.observer.attempt_finished(
            self._attempts.operation, self.entry, attempt, usage, cost, scope=self._scope
        )
        self._booked = True

    def _cut_short_for_caller(self, kind: str) -> bool:
        """A timeout that the request's deadline caused: we cut the call short, the provider was
        not necessarily slow, so it is not the provider's fault."""
        gateway = self._gateway
        return (
            kind == "timeout"
            and self._attempts.deadline.at is not None
            and self.timeout_s < gateway.provider_timeouts[self.candidate.provider_id]
        )

    async def _failed(self, exc: ProviderFailure | ProviderAuthError) -> None:
        """Book a provider failure; raises when it ends the request."""
        gateway, attempts, candidate = self._gateway, self._attempts, self.candidate
        provider_id = candidate.provider_id
        latency = gateway.clock() - self.started
        breaker = gateway.breakers.get(provider_id)
        cause = _failure_cause(exc, gateway.provider_addresses.get(provider_id, ""), self.timeout_s)
        if isinstance(exc, ProviderAuthError):
            # The provider's credentials, not the provider, failed: disabled, breaker spared.
            breaker.release()
            reason = f"provider answered HTTP {exc.status}: check its api_key"
            if gateway.registry.disable_provider(provider_id, reason):
                gateway.events.warning(
                    "provider_disabled",
                    f"provider {provider_id} disabled: it refused our credentials (HTTP {exc.status})",
                    subject=provider_id,
                    provider=provider_id,
                    http_status=exc.status,
                    reason=reason,
                )
            kind = "auth"
        else:
            kind = exc.kind
            if self._cut_short_for_caller(kind):
                breaker.release()
            else:
                breaker.record_failure(kind, exc.retry_after_s)
                if kind == "timeout":
                    attempts._timed_out.add(provider_id)
            attempts._note_retry_after(exc.retry_after_s)
        gateway.events.warning(
            "provider_attempt_failed",
            f"{attempts.operation} attempt on {provider_id}/{candidate.model} failed: {cause}",
            subject=provider_id,
            provider=provider_id,
            model=candidate.model,
            operation=attempts.operation,
            error_kind=kind,
            http_status=exc.status,
            latency_ms=round(latency * 1000, 1),
            request_id=attempts.log_request_id,
        )
        if not self._generated:
            self._finish(d.AttemptOutcome.FAILED, kind, latency, None, None, cause)
            attempts._check_deadline()
            return
        usage, cost = self._billed()
        gateway.observer.upstream_time(latency, self._scope)
        self._finish(d.AttemptOutcome.FAILED, kind, latency, usage, cost, cause)
        await self._settle(usage, cost)
        gateway.events.warning(
            "stream_interrupted",
            f"the stream from {provider_id}/{candidate.model} broke after output was sent: {cause}",
            subject=provider_id,
            provider=provider_id,
            model=candidate.model,
            error_kind=kind,
            chunks_delivered=len(self._generated),
            request_id=attempts.log_request_id,
        )
        raise StreamInterruptedError(
            f"the stream from {provider_id} broke after output was sent ({cause}); the answer is incomplete",
            attempts=attempts.summaries(),
        ) from None

    async def _rejection(self, exc: ProviderRejection) -> ProviderRejectedError:
        """Book a rejection of the request itself: the caller's fault, so the breaker is spared."""
        gateway = self._gateway
        gateway.breakers.get(self.candidate.provider_id).release()
        latency = gateway.clock() - self.started
        if self._generated:
            usage, cost = self._billed()
            self._finish(d.AttemptOutcome.REJECTED, exc.kind, latency, usage, cost)
            await self._settle(usage, cost)
        else:
            self._finish(d.AttemptOutcome.REJECTED, exc.kind, latency, None, None)
        return _rejected(exc)

    def _cancelled(self) -> None:
        """The call ended without an outcome (cancelled, closed early, or a bug): not the
        provider's fault. Nothing here awaits: the task may be being cancelled."""
        gateway = self._gateway
        gateway.breakers.get(self.candidate.provider_id).release()
        self._booked = True
        if not self._generated:
            gateway.observer.attempt_cancelled(self._scope)
            return
        usage, cost = self._billed()
        gateway.observer.attempt_cancelled(self._scope, usage, cost)
        ticket = self._attempts.ticket
        if ticket is not None:
            ticket.settle_soon(self.candidate.provider_id, self.candidate.model, usage, cost)


def _failure_cause(exc: ProviderFailure | ProviderAuthError, address: str, timeout_s: float) -> str:
    """A provider failure in a few words a caller may read: never the provider's own text."""
    at = f" {address}" if address else ""
    kind = exc.kind
    if isinstance(exc, ProviderAuthError):
        return f"credentials refused (HTTP {exc.status})"
    if kind == "connect":
        if exc.cause_type == REFUSED:
            return f"connection refused by{at}" if at else "connection refused"
        return f"could not connect to{at}" if at else "could not connect"
    if kind == "timeout":
        return f"no answer within {timeout_s:.3g} s"
    if kind == "reset":
        return "the connection broke"
    if kind == "rate_limited":
        wait = f", retry after {exc.retry_after_s:g} s" if exc.retry_after_s else ""
        return f"rate limited (HTTP 429{wait})"
    if kind == "model_not_found":
        return "model not found (HTTP 404)"
    if kind == "bad_response":
        return "malformed answer"
    if kind.startswith("http_"):
        return f"HTTP {kind[5:]}"
    return kind.replace("_", " ")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _causes(attempts: list[d.Attempt]) -> str:
    """The attempts as `provider/model: cause` (repeats counted), at most ~400 characters."""
    groups: list[tuple[str, int]] = []
    for attempt in attempts:
        cause = attempt.cause or _SKIP_CAUSES.get(attempt.error_kind, attempt.error_kind.replace("_", " "))
        name = _clip(f"{attempt.provider_id}/{attempt.model}", _MAX_NAME_CHARS)
        text = f"{name}: {_clip(cause, _MAX_NAME_CHARS)}"
        if groups and groups[-1][0] == text:
            groups[-1] = (text, groups[-1][1] + 1)
        else:
            groups.append((text, 1))
    parts: list[str] = []
    length = 0
    for index, (text, count) in enumerate(groups):
        part = text if count == 1 else f"{text} ({count} attempts)"
        if parts and length + len(part) > _MAX_CAUSES_CHARS:
            parts.append(f"and {len(groups) - index} more")
            break
        parts.append(part)
        length += len(part) + 2
    return "; ".join(parts) if parts else "no candidate was left to try"


class Gateway:
    """Serves Route, Chat, StreamChat and Embed over the decision plane and the providers."""

    def __init__(
        self,
        *,
        registry: Registry,
        prices: PriceTable,
        estimator: TokenEstimator,
        router: Router,
        breakers: Breakers,
        providers: Mapping[str, ProviderClient],
        provider_timeouts: Mapping[str, float],
        limits: Limits,
        retry: RetryPolicy,
        default_max_tokens: int = 512,
        observer: Observer | None = None,
        spend: SpendGuard | None = None,
        image_inliner: ImageInliner | None = None,
        events: EventLog | None = None,
        default_deadline_s: float | None = None,
        provider_addresses: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.prices = prices
        self.estimator = estimator
        self.router = router
        self.breakers = breakers
        self.providers = providers
        self.provider_timeouts = provider_timeouts
        self.limits = limits
        self.retry = retry
        self.default_max_tokens = default_max_tokens
        self.observer: Observer = observer or NullObserver()
        self.spend = spend
        self.image_inliner = image_inliner  # None: image URLs go to the provider as given
        self.events = events or EventLog(__name__)
        self.default_deadline_s = default_deadline_s  # for requests without a deadline; None: none
        self.provider_addresses = provider_addresses or {}  # provider id -> host:port, for messages
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        # The requests running on this gateway: a config reload closes a replaced one once they end.
        self.in_use = InUse()

    # ----------------------------------------------------------------- routing

    def _chat_task(self, prefs: d.RoutingPreferences, has_images: bool) -> d.Task:
        if prefs.task is not None:
            return prefs.task
        return d.Task.VISION if has_images else d.Task.CHAT_SMART

    def decide_chat(self, request: d.ChatRequest) -> d.RoutingDecision:
        check_chat(request, self.limits)
        has_images = request.has_images
        task = self._chat_task(request.routing, has_images)
        output_tokens = request.generation.max_tokens or self.default_max_tokens
        input_tokens = self.estimator.count_messages(request.messages)
        started = self.observer.route_started()
        try:
            decision = self.router.decide(
                task, request.routing, input_tokens, output_tokens, has_images, request.needed_capabilities
            )
        except NoRouteError as exc:
            raise _too_long_or(exc, "messages") from None
        self.observer.routed(decision, started)
        return decision

    def decide_embed(self, request: d.EmbedRequest) -> d.RoutingDecision:
        check_embed(request, self.limits)
        task = request.routing.task or d.Task.EMBEDDING
        input_tokens = self.estimator.count_texts(request.inputs)
        started = self.observer.route_started()
        try:
            decision = self.router.decide(task, request.routing, input_tokens, 0, False)
        except NoRouteError as exc:
            raise _too_long_or(exc, "inputs") from None
        self.observer.routed(decision, started)
        return decision

    async def _inline_images(self, request: d.ChatRequest) -> d.ChatRequest:
        """With inlining configured, fetch image URLs (after the cheap limit checks) into bytes."""
        if self.image_inliner is None or not request.has_images:
            return request
        check_chat(request, self.limits)  # refuse a malformed request before fetching anything
        return await self.image_inliner.inline(request)

    def route(
        self,
        prefs: d.RoutingPreferences,
        messages: tuple[d.ChatMessage, ...],
        inputs: tuple[str, ...],
        max_tokens: int | None,
    ) -> d.RoutingDecision:
        if inputs and not messages:
            return self.decide_embed(d.EmbedRequest(inputs=inputs, routing=prefs))
        request = d.ChatRequest(
            messages=messages, routing=prefs, generation=d.GenerationConfig(max_tokens=max_tokens)
        )
        if not messages:
            # Route may be asked with no prompt at all: estimate from the output alone.
            task = self._chat_task(prefs, False)
            return self.router.decide(task, prefs, 0, max_tokens or self.default_max_tokens, False)
        return self.decide_chat(request)

    def _or_default(self, deadline: Deadline) -> Deadline:
        """The request's deadline, or the router's default when it brought none."""
        if deadline.at is not None or self.default_deadline_s is None:
            return deadline
        return Deadline(self.clock() + self.default_deadline_s, self.clock, self.default_deadline_s)

    def _usage(
        self, entry: Any, reported: d.Usage | None, decision: d.RoutingDecision, output_text: str
    ) -> d.Usage:
        if reported is not None and (reported.input_tokens or reported.output_tokens):
            return reported
        output_tokens = self.estimator.count_text(output_text) if output_text else 0
        return d.Usage(decision.estimated_input_tokens, output_tokens, counted_locally=True)

    # ------------------------------------------------------------------- chat

    async def chat(
        self, request: d.ChatRequest, deadline: Deadline = NO_DEADLINE, caller: str | None = None
    ) -> d.ChatResult:
        """`caller` is the API key id when auth is on (None: `metadata["tenant"]` or anonymous)."""
        with self.in_use:
            request = await self._inline_images(request)
            decision = self.decide_chat(request)
            attempts = await Attempts.open(
                self, decision, "chat", request, self._or_default(deadline), caller
            )
            try:
                return await self._chat(request, attempts)
            finally:
                await attempts.close()

    async def _chat(self, request: d.ChatRequest, attempts: Attempts) -> d.ChatResult:
        max_tokens = request.generation.max_tokens or self.default_max_tokens
        retry_nonconforming = request.routing.fallback_on_nonconforming and request.response_format.wants_json
        nonconforming: d.ChatResult | None = None  # the last answer refused for its format
        async for attempt in attempts:
            async with attempt:
                entry = attempt.entry
                reply = await attempt.provider.chat(
                    entry.model, entry.litellm_model, request, max_tokens, attempt.timeout_s
                )
                usage = self._usage(entry, reply.usage, attempts.decision, _generated_text(reply))
                conformance = check_conformance(request.response_format, reply.text)
                refused = retry_nonconforming and conformance is not None and not conformance.conforms
                # The wrong answer was generated and billed: it is paid for like any other, booked
                # as failed, and the next candidate asked (the last planned call's answer stands).
                error_kind = "nonconforming" if refused and attempts.calls_left() else ""
                cost = await attempt.succeed(
                    usage,
                    reply.response_model,
                    reply.text,
                    error_kind=error_kind,
                    output_tool_calls=reply.tool_calls,
                    output_reasoning=reply.reasoning,
                )
                result = _chat_result(attempts, reply, usage, cost, conformance)
                if not error_kind:
                    return result
                nonconforming = result
        if nonconforming is not None:  # the candidates after a wrong answer failed: it is the best there is
            return nonconforming
        raise attempts.exhausted()

    async def stream_chat(
        self, request: d.ChatRequest, deadline: Deadline = NO_DEADLINE, caller: str | None = None
    ) -> AsyncGenerator[d.StreamOutput | d.ChatResult, None]:
        """Yield text (str), tool-call and reasoning pieces, then one ChatResult.

        Fallback only while nothing was yielded."""
        with self.in_use:
            request = await self._inline_images(request)
            decision = self.decide_chat(request)
            attempts = await Attempts.open(
                self, decision, "chat", request, self._or_default(deadline), caller
            )
            # One generator, not a wrapper around an inner one: every layer of async generators costs
            # each streamed chunk a resume. Closing it (the caller went away) runs the finally blocks
            # below at once: the upstream stream closes, then the reservation is given back.
            max_tokens = request.generation.max_tokens or self.default_max_tokens
            try:
                async for attempt in attempts:
                    async with attempt:
                        entry = attempt.entry
                        end: StreamEnd | None = None
                        stream = attempt.provider.stream_chat(
                            entry.model, entry.litellm_model, request, max_tokens, attempt.timeout_s
                        )
                        try:
                            async for event in stream:
                                if isinstance(event, StreamEnd):
                                    end = event
                                    continue
                                output = _stream_output(event)
                                if output is None:
                                    continue
                                attempt.delivered(output)
                                yield output
                        finally:
                            await _aclose(stream)
                        text = attempt.text
                        usage = self._usage(entry, end.usage if end else None, decision, attempt.generated)
                        response_model = end.response_model if end else ""
                        tool_calls = end.tool_calls if end else ()
                        cost = await attempt.succeed(
                            usage,
                            response_model,
                            text,
                            output_tool_calls=tool_calls,
                            output_reasoning=attempt.reasoning,
                        )
                        yield d.ChatResult(
                            request_id=attempts.request_id,
                            text=text,
                            finish_reason=end.finish_reason if end else d.FinishReason.UNSPECIFIED,
                            usage=usage,
                            cost=cost,
                            decision=decision,
                            attempts=attempts.attempts,
                            response_model=response_model,
                            tool_calls=tool_calls,
                            conformance=check_conformance(request.response_format, text),
                        )
                        return
                raise attempts.exhausted()
            finally:
                await attempts.close()

    # ------------------------------------------------------------------ embed

    async def embed(
        self, request: d.EmbedRequest, deadline: Deadline = NO_DEADLINE, caller: str | None = None
    ) -> d.EmbedResult:
        with self.in_use:
            decision = self.decide_embed(request)
            attempts = await Attempts.open(
                self, decision, "embeddings", request, self._or_default(deadline), caller
            )
            try:
                return await self._embed(request, attempts)
            finally:
                await attempts.close()

    async def _embed(self, request: d.EmbedRequest, attempts: Attempts) -> d.EmbedResult:
        async for attempt in attempts:
            async with attempt:
                entry = attempt.entry
                reply = await attempt.provider.embed(
                    entry.model, entry.litellm_model, request.inputs, attempt.timeout_s
                )
                # Vectors of the wrong shape are the provider's failure, like any other bad answer.
                dimension = _check_vectors(reply.vectors, len(request.inputs))
                usage = reply.usage
                if usage is None or not usage.input_tokens:
                    usage = d.Usage(attempts.decision.estimated_input_tokens, 0, counted_locally=True)
                cost = await attempt.succeed(usage)
                return d.EmbedResult(
                    request_id=attempts.request_id,
                    vectors=reply.vectors,
                    dimension=dimension,
                    usage=usage,
                    cost=cost,
                    decision=attempts.decision,
                    attempts=attempts.attempts,
                )
        raise attempts.exhausted()


def _stream_output(event: Any) -> d.StreamOutput | None:
    """What a provider stream event gives the caller; None for an empty piece."""
    if isinstance(event, TextDelta):
        return event.text or None
    if isinstance(event, d.ToolCallDelta):
        return event if (event.id or event.name or event.arguments) else None
    if isinstance(event, d.ReasoningDelta):
        return event if event.text else None
    return None


def _generated_text(reply: Any) -> str:
    """Everything the model generated, for counting output tokens when the provider reports none."""
    return "".join([reply.reasoning, reply.text, *(call.arguments for call in reply.tool_calls)])


def _chat_result(
    attempts: Attempts, reply: Any, usage: d.Usage, cost: d.Cost, conformance: d.Conformance | None
) -> d.ChatResult:
    return d.ChatResult(
        request_id=attempts.request_id,
        text=reply.text,
        finish_reason=reply.finish_reason,
        usage=usage,
        cost=cost,
        decision=attempts.decision,
        attempts=attempts.attempts,
        response_model=reply.response_model,
        tool_calls=reply.tool_calls,
        reasoning=reply.reasoning,
        conformance=conformance,
    )


def _too_long_or(exc: NoRouteError, field_path: str) -> GatewayError:
    """No model's context window fits the request: that is the request's length, INVALID_ARGUMENT."""
    if exc.violation_type == "CONTEXT_WINDOW":
        return InvalidArgumentError(FieldViolation(field_path, exc.message))
    return exc


def _skip(candidate: d.Candidate, kind: str) -> d.Attempt:
    return d.Attempt(candidate.provider_id, candidate.model, d.AttemptOutcome.SKIPPED, kind, 0.0)


def _check_vectors(vectors: list[list[float]], expected: int) -> int:
    """The vectors' common dimension; a provider answer of the wrong shape counts as its failure."""
    if len(vectors) != expected or not vectors:
        raise ProviderFailure("bad_response")
    dimension = len(vectors[0])
    if dimension == 0 or any(len(v) != dimension for v in vectors):
        raise ProviderFailure("bad_response")
    return dimension


async def _aclose(stream: Any) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
