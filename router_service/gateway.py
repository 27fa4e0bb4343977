"""The Router's data plane: route, call, fall back, stream, count and price.

`Gateway` ties the decision plane (registry, prices, token estimates, routing,
breakers) to the provider clients. The rules it enforces (docs/ARCHITECTURE.md §4):

* candidates are tried in the route's order; a failure that counts (connect,
  reset, timeout, 5xx, 429) feeds the breaker and moves on, with jittered
  backoff, until the candidates, the attempt budget or the deadline run out;
* the caller's own mistakes (400/422, context length, content policy) return
  at once and never feed a breaker; 401/403 disables the provider;
* a stream falls back only before its first event reached the caller (text,
  tool-call or reasoning piece; role-only or metadata-only chunks do not count);
  once output went out, a broken stream ends with UNAVAILABLE
  (StreamInterruptedError), and a stream the provider layer judged incomplete
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
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from router_service import domain as d
from router_service.breaker import Breakers
from router_service.image_fetch import ImageInliner
from router_service.limits import Limits, check_chat, check_embed
from router_service.pricing import PriceTable
from router_service.providers.base import ProviderClient, StreamEnd, TextDelta
from router_service.providers.errors import ProviderAuthError, ProviderFailure, ProviderRejection
from router_service.registry import Registry
from router_service.routing import Router
from router_service.spend import SpendGuard, SpendTicket, resolve_identity
from router_service.structured import check_conformance
from router_service.tokens import TokenEstimator
from sekha_runtime.errors import (
    AttemptSummary,
    BudgetExhaustedError,
    DeadlineExceededError,
    FieldViolation,
    GatewayError,
    InvalidArgumentError,
    NoRouteError,
    ProviderRejectedError,
    StreamInterruptedError,
    UnavailableError,
)

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
    """The caller's deadline as an absolute monotonic time (None = no deadline)."""

    at: float | None
    clock: Callable[[], float] = time.monotonic

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


@dataclass
class _Call:
    """Book-keeping for one request's attempts."""

    decision: d.RoutingDecision
    attempts: list[d.Attempt] = field(default_factory=list)
    calls: int = 0
    retry_after_s: float | None = None
    previous_provider: str | None = None
    request_id: str = ""
    ticket: SpendTicket | None = None  # None when the gateway has no SpendGuard
    refusal: GatewayError | None = None  # why a budget refused a candidate (first one)

    async def settle(self, candidate: d.Candidate, usage: d.Usage, cost: d.Cost) -> None:
        if self.ticket is not None:
            await self.ticket.settle(candidate.provider_id, candidate.model, usage, cost)

    async def close(self) -> None:
        if self.ticket is not None:
            await self.ticket.close()


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
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()

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

    # --------------------------------------------------------------- attempts

    def _plan(self, decision: d.RoutingDecision, prefs: d.RoutingPreferences) -> list[d.Candidate]:
        """The calls to make, in order: each candidate once, then again while attempts remain."""
        candidates = list(decision.candidates[:1] if prefs.disable_fallback else decision.candidates)
        plan: list[d.Candidate] = []
        while len(plan) < self.retry.max_attempts and candidates:
            plan.extend(candidates[: self.retry.max_attempts - len(plan)])
            if prefs.disable_fallback:
                break
        return plan

    async def _before_call(self, call: _Call, candidate: d.Candidate, deadline: Deadline) -> float | None:
        """Admit a call: returns its timeout, or None when the candidate is skipped."""
        if self.registry.disabled_reason(candidate.provider_id) is not None:
            call.attempts.append(_skip(candidate, "provider_disabled"))
            return None
        if call.calls > 0:
            delay = min(self.retry.backoff_max_s, self.retry.backoff_base_s * 2 ** (call.calls - 1))
            delay *= 0.5 + self.rng.random()  # full jitter spreads retries of many callers apart
            remaining = deadline.remaining()
            if remaining is not None:
                delay = min(delay, max(remaining - 0.001, 0.0))
            if delay > 0:
                await self.sleep(delay)
        remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError("deadline exceeded before a provider answered")
        breaker = self.breakers.get(candidate.provider_id)
        if not breaker.try_acquire():
            call.attempts.append(_skip(candidate, "breaker_open"))
            return None
        if call.ticket is not None:
            try:
                await call.ticket.reserve(candidate)
            except (BudgetExhaustedError, NoRouteError) as refusal:
                breaker.release()
                call.attempts.append(_skip(candidate, "budget"))
                call.refusal = call.refusal or refusal
                return None
            except BaseException:
                breaker.release()  # a half-open probe permit must not leak with the error
                raise
        provider_timeout = self.provider_timeouts[candidate.provider_id]
        if call.previous_provider is not None and call.previous_provider != candidate.provider_id:
            self.observer.fallback(call.decision.task, call.previous_provider, candidate.provider_id)
        call.previous_provider = candidate.provider_id
        call.calls += 1
        return provider_timeout if remaining is None else min(provider_timeout, remaining)

    def _on_failure(
        self,
        call: _Call,
        candidate: d.Candidate,
        exc: ProviderFailure | ProviderAuthError,
        started: float,
        timeout_s: float,
        deadline: Deadline,
        operation: str,
        scope: Any = None,
    ) -> None:
        """Record a failed attempt; raise when the failure ends the request."""
        latency = self.clock() - started
        breaker = self.breakers.get(candidate.provider_id)
        if isinstance(exc, ProviderAuthError):
            breaker.release()
            self.registry.disable_provider(
                candidate.provider_id, f"provider answered HTTP {exc.status}: check its api_key"
            )
            kind = "auth"
        else:
            kind = exc.kind
            caller_deadline_hit = (
                kind == "timeout"
                and deadline.at is not None
                and timeout_s < self.provider_timeouts[candidate.provider_id]
            )
            if caller_deadline_hit:
                # We cut the call short for the caller; the provider was not necessarily slow.
                breaker.release()
            else:
                breaker.record_failure(kind, exc.retry_after_s)
            if exc.retry_after_s is not None:
                call.retry_after_s = max(call.retry_after_s or 0.0, exc.retry_after_s)
        attempt = d.Attempt(candidate.provider_id, candidate.model, d.AttemptOutcome.FAILED, kind, latency)
        call.attempts.append(attempt)
        self.observer.attempt_finished(
            operation, self.registry.by_key(candidate.key), attempt, None, None, scope=scope
        )
        remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError("deadline exceeded before a provider answered")

    def _on_rejection(
        self,
        call: _Call,
        candidate: d.Candidate,
        exc: ProviderRejection,
        started: float,
        operation: str,
        scope: Any = None,
    ) -> ProviderRejectedError:
        self.breakers.get(candidate.provider_id).release()
        attempt = d.Attempt(
            candidate.provider_id,
            candidate.model,
            d.AttemptOutcome.REJECTED,
            exc.kind,
            self.clock() - started,
        )
        call.attempts.append(attempt)
        self.observer.attempt_finished(
            operation, self.registry.by_key(candidate.key), attempt, None, None, scope=scope
        )
        return _rejected(exc)

    def _exhausted(self, call: _Call) -> GatewayError:
        if call.refusal is not None and call.calls == 0:
            # No provider was called: the budget, not the providers, is why the request failed.
            return call.refusal
        summaries = [AttemptSummary(a.provider_id, a.model, a.error_kind) for a in call.attempts]
        retry_after = call.retry_after_s
        open_ids = [a.provider_id for a in call.attempts if a.error_kind == "breaker_open"]
        if open_ids:
            wait = self.breakers.seconds_until_available(open_ids)
            retry_after = wait if retry_after is None else min(retry_after, wait)
        tried = sum(1 for a in call.attempts if a.outcome is d.AttemptOutcome.FAILED)
        return UnavailableError(
            f"no provider could serve the request ({tried} failed attempts, "
            f"{len(call.attempts) - tried} candidates skipped)",
            retry_after_s=retry_after if retry_after is not None else 1.0,
            attempts=summaries,
        )

    async def _open_call(
        self,
        decision: d.RoutingDecision,
        request_id: str,
        operation: str,
        caller: str | None,
        metadata: Mapping[str, str],
    ) -> _Call:
        """Start a request's book-keeping; raises RateLimitedError before any provider call."""
        call = _Call(decision, request_id=request_id or uuid.uuid4().hex)
        if self.spend is not None:
            tokens = decision.estimated_input_tokens + decision.estimated_output_tokens
            call.ticket = await self.spend.open(
                resolve_identity(caller, metadata), operation, call.request_id, tokens
            )
        return call

    def _usage(
        self, entry: Any, reported: d.Usage | None, decision: d.RoutingDecision, output_text: str
    ) -> d.Usage:
        if reported is not None and (reported.input_tokens or reported.output_tokens):
            return reported
        output_tokens = self.estimator.count_text(output_text) if output_text else 0
        return d.Usage(decision.estimated_input_tokens, output_tokens, counted_locally=True)

    async def _succeed(
        self,
        call: _Call,
        candidate: d.Candidate,
        entry: Any,
        started: float,
        scope: Any,
        operation: str,
        usage: d.Usage,
        response_model: str = "",
        output_text: str = "",
        error_kind: str = "",
        output_tool_calls: tuple[d.ToolCall, ...] = (),
        output_reasoning: str = "",
    ) -> d.Cost:
        """Book a successful attempt: breaker, upstream time, real cost, spend, attempt list, observer.

        With `error_kind` the provider answered well but the answer is refused (it does not
        conform): the attempt is paid for and healthy for the breaker, yet listed as failed.
        """
        latency = self.clock() - started
        self.breakers.get(candidate.provider_id).record_success(latency)
        self.observer.upstream_time(latency, scope)
        cost = self.prices.real_cost(entry, usage)
        await call.settle(candidate, usage, cost)
        outcome = d.AttemptOutcome.FAILED if error_kind else d.AttemptOutcome.SUCCEEDED
        attempt = d.Attempt(candidate.provider_id, candidate.model, outcome, error_kind, latency)
        call.attempts.append(attempt)
        extra: dict[str, Any] = {}
        if operation == "chat":
            extra = {
                "response_model": response_model,
                "output_text": output_text,
                "output_tool_calls": output_tool_calls,
                "output_reasoning": output_reasoning,
            }
        self.observer.attempt_finished(operation, entry, attempt, usage, cost, scope=scope, **extra)
        return cost

    # ------------------------------------------------------------------- chat

    async def chat(
        self, request: d.ChatRequest, deadline: Deadline = NO_DEADLINE, caller: str | None = None
    ) -> d.ChatResult:
        """`caller` is the API key id when auth is on (None: `metadata["tenant"]` or anonymous)."""
        request = await self._inline_images(request)
        decision = self.decide_chat(request)
        call = await self._open_call(decision, request.request_id, "chat", caller, request.metadata)
        try:
            return await self._chat(request, deadline, call)
        finally:
            await call.close()

    async def _chat(self, request: d.ChatRequest, deadline: Deadline, call: _Call) -> d.ChatResult:
        max_tokens = request.generation.max_tokens or self.default_max_tokens

        planned = len(self._plan(call.decision, request.routing))
        retry_nonconforming = request.routing.fallback_on_nonconforming and request.response_format.wants_json
        nonconforming: list[d.ChatResult] = []  # answers booked as failed, the last one kept

        async def ask(provider: ProviderClient, entry: Any, timeout_s: float) -> Any:
            return await provider.chat(entry.model, entry.litellm_model, request, max_tokens, timeout_s)

        async def ask_conforming(provider: ProviderClient, entry: Any, timeout_s: float) -> Any:
            reply = await ask(provider, entry, timeout_s)
            conformance = check_conformance(request.response_format, reply.text)
            if conformance is None or conformance.conforms or call.calls >= planned:
                return reply

            async def book(candidate: d.Candidate, entry: Any, started: float, scope: Any) -> None:
                # The wrong answer was generated and billed: it is paid for like any other.
                usage = self._usage(entry, reply.usage, call.decision, _generated_text(reply))
                cost = await self._succeed(
                    call,
                    candidate,
                    entry,
                    started,
                    scope,
                    "chat",
                    usage,
                    reply.response_model,
                    reply.text,
                    error_kind="nonconforming",
                    output_tool_calls=reply.tool_calls,
                    output_reasoning=reply.reasoning,
                )
                nonconforming[:] = [_chat_result(call, reply, usage, cost, conformance)]

            raise _NextCandidate(book)

        try:
            answer = await self._first_answer(
                call, request, deadline, "chat", ask_conforming if retry_nonconforming else ask
            )
        except UnavailableError:
            if nonconforming:  # the candidates after a wrong answer were skipped: it is the best there is
                return nonconforming[-1]
            raise
        reply = answer.reply
        usage = self._usage(answer.entry, reply.usage, call.decision, _generated_text(reply))
        cost = await self._succeed(
            call,
            answer.candidate,
            answer.entry,
            answer.started,
            answer.scope,
            "chat",
            usage,
            reply.response_model,
            reply.text,
            output_tool_calls=reply.tool_calls,
            output_reasoning=reply.reasoning,
        )
        return _chat_result(call, reply, usage, cost, check_conformance(request.response_format, reply.text))

    async def stream_chat(
        self, request: d.ChatRequest, deadline: Deadline = NO_DEADLINE, caller: str | None = None
    ) -> AsyncGenerator[d.StreamOutput | d.ChatResult, None]:
        """Yield text (str), tool-call and reasoning pieces, then one ChatResult.

        Fallback only while nothing was yielded."""
        request = await self._inline_images(request)
        decision = self.decide_chat(request)
        call = await self._open_call(decision, request.request_id, "chat", caller, request.metadata)
        events = self._stream_chat(request, deadline, call)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # closes the upstream stream now, not when collected
            await call.close()

    async def _stream_chat(
        self, request: d.ChatRequest, deadline: Deadline, call: _Call
    ) -> AsyncGenerator[d.StreamOutput | d.ChatResult, None]:
        decision = call.decision
        request_id = call.request_id
        max_tokens = request.generation.max_tokens or self.default_max_tokens
        for candidate in self._plan(decision, request.routing):
            timeout_s = await self._before_call(call, candidate, deadline)
            if timeout_s is None:
                continue
            entry = self.registry.by_key(candidate.key)
            provider = self.providers[candidate.provider_id]
            started = self.clock()
            sent: list[str] = []  # the text that reached the caller
            generated: list[str] = []  # all output that reached the caller (text, arguments, reasoning)
            reasoning: list[str] = []
            end: StreamEnd | None = None
            scope = self.observer.attempt_started("chat", entry, request)
            stream = provider.stream_chat(entry.model, entry.litellm_model, request, max_tokens, timeout_s)
            try:
                async for event in stream:
                    if isinstance(event, StreamEnd):
                        end = event
                        continue
                    output = _stream_output(event)
                    if output is None:
                        continue
                    if not generated:
                        self.observer.first_token(entry, self.clock() - started, scope)
                    if isinstance(output, str):
                        sent.append(output)
                        generated.append(output)
                    elif isinstance(output, d.ToolCallDelta):
                        generated.append(output.arguments)
                    else:
                        reasoning.append(output.text)
                        generated.append(output.text)
                    yield output
            except (ProviderFailure, ProviderAuthError) as exc:
                if generated:
                    kind = getattr(exc, "kind", "auth")
                    self.breakers.get(candidate.provider_id).record_failure(
                        kind, getattr(exc, "retry_after_s", None)
                    )
                    # The tokens that reached the caller were generated and billed: count them.
                    usage = self._usage(entry, None, decision, "".join(generated))
                    cost = self.prices.real_cost(entry, usage)
                    self.observer.upstream_time(self.clock() - started, scope)
                    self.observer.attempt_finished(
                        "chat",
                        entry,
                        d.Attempt(
                            candidate.provider_id,
                            candidate.model,
                            d.AttemptOutcome.FAILED,
                            kind,
                            self.clock() - started,
                        ),
                        usage,
                        cost,
                        scope=scope,
                    )
                    await call.settle(candidate, usage, cost)
                    raise StreamInterruptedError(
                        f"the stream from {candidate.provider_id} broke after output was sent; "
                        "the answer is incomplete",
                        attempts=[
                            AttemptSummary(
                                candidate.provider_id, candidate.model, getattr(exc, "kind", "auth")
                            )
                        ],
                    ) from None
                self._on_failure(call, candidate, exc, started, timeout_s, deadline, "chat", scope)
                continue
            except ProviderRejection as exc:
                raise self._on_rejection(call, candidate, exc, started, "chat", scope) from None
            except BaseException:
                # Cancelled by the caller (or the server shutting down): not the provider's fault.
                self.breakers.get(candidate.provider_id).release()
                if generated:
                    # Output was generated and billed: it counts in the metrics and the ledger.
                    billed_usage = self._usage(entry, None, decision, "".join(generated))
                    billed_cost = self.prices.real_cost(entry, billed_usage)
                    self.observer.attempt_cancelled(scope, billed_usage, billed_cost)
                    if call.ticket is not None:  # settled without awaiting: this task is being cancelled
                        call.ticket.settle_soon(
                            candidate.provider_id, candidate.model, billed_usage, billed_cost
                        )
                else:
                    self.observer.attempt_cancelled(scope)
                raise
            finally:
                await _aclose(stream)
            text = "".join(sent)
            usage = self._usage(entry, end.usage if end else None, decision, "".join(generated))
            response_model = end.response_model if end else ""
            cost = await self._succeed(
                call,
                candidate,
                entry,
                started,
                scope,
                "chat",
                usage,
                response_model,
                text,
                output_tool_calls=end.tool_calls if end else (),
                output_reasoning="".join(reasoning),
            )
            yield d.ChatResult(
                request_id=request_id,
                text=text,
                finish_reason=end.finish_reason if end else d.FinishReason.UNSPECIFIED,
                usage=usage,
                cost=cost,
                decision=decision,
                attempts=call.attempts,
                response_model=response_model,
                tool_calls=end.tool_calls if end else (),
                conformance=check_conformance(request.response_format, text),
            )
            return
        raise self._exhausted(call)

    # ------------------------------------------------------------------ embed

    async def embed(
        self, request: d.EmbedRequest, deadline: Deadline = NO_DEADLINE, caller: str | None = None
    ) -> d.EmbedResult:
        decision = self.decide_embed(request)
        call = await self._open_call(decision, request.request_id, "embeddings", caller, request.metadata)
        try:
            return await self._embed(request, deadline, call)
        finally:
            await call.close()

    async def _embed(self, request: d.EmbedRequest, deadline: Deadline, call: _Call) -> d.EmbedResult:
        async def ask(provider: ProviderClient, entry: Any, timeout_s: float) -> Any:
            reply = await provider.embed(entry.model, entry.litellm_model, request.inputs, timeout_s)
            # Vectors of the wrong shape are the provider's failure, like any other bad answer.
            return reply, _check_vectors(reply.vectors, len(request.inputs))

        answer = await self._first_answer(call, request, deadline, "embeddings", ask)
        reply, dimension = answer.reply
        usage = reply.usage
        if usage is None or not usage.input_tokens:
            usage = d.Usage(call.decision.estimated_input_tokens, 0, counted_locally=True)
        cost = await self._succeed(
            call, answer.candidate, answer.entry, answer.started, answer.scope, "embeddings", usage
        )
        return d.EmbedResult(
            request_id=call.request_id,
            vectors=reply.vectors,
            dimension=dimension,
            usage=usage,
            cost=cost,
            decision=call.decision,
            attempts=call.attempts,
        )

    # ------------------------------------------------------------------ the attempt loop

    async def _first_answer(
        self,
        call: _Call,
        request: d.ChatRequest | d.EmbedRequest,
        deadline: Deadline,
        operation: str,
        ask: Callable[[ProviderClient, Any, float], Awaitable[Any]],
    ) -> _Answer:
        """Ask each planned candidate in turn (`ask(provider, entry, timeout_s)`) until one answers.

        A provider failure is booked and the next candidate tried; a rejection of the request
        itself ends the call at once; a cancellation releases the breaker's probe slot. The
        caller books the success (`_succeed`), so its own accounting stays outside this loop.
        Streams have their own loop: they may fall back only before their first chunk.
        """
        for candidate in self._plan(call.decision, request.routing):
            timeout_s = await self._before_call(call, candidate, deadline)
            if timeout_s is None:
                continue
            entry = self.registry.by_key(candidate.key)
            provider = self.providers[candidate.provider_id]
            started = self.clock()
            scope = self.observer.attempt_started(operation, entry, request)
            try:
                reply = await ask(provider, entry, timeout_s)
            except (ProviderFailure, ProviderAuthError) as exc:
                self._on_failure(call, candidate, exc, started, timeout_s, deadline, operation, scope)
                continue
            except ProviderRejection as exc:
                raise self._on_rejection(call, candidate, exc, started, operation, scope) from None
            except _NextCandidate as answered:
                await answered.book(candidate, entry, started, scope)
                continue
            except BaseException:
                self.breakers.get(candidate.provider_id).release()
                self.observer.attempt_cancelled(scope)
                raise
            return _Answer(candidate, entry, started, scope, reply)
        raise self._exhausted(call)


class _NextCandidate(Exception):
    """An answer the caller's options reject (non-conforming JSON): `book` pays for it, then the
    attempt loop moves on to the next candidate."""

    def __init__(self, book: Callable[[d.Candidate, Any, float, Any], Awaitable[None]]) -> None:
        super().__init__("answer rejected by the request's options")
        self.book = book


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
    call: _Call, reply: Any, usage: d.Usage, cost: d.Cost, conformance: d.Conformance | None
) -> d.ChatResult:
    return d.ChatResult(
        request_id=call.request_id,
        text=reply.text,
        finish_reason=reply.finish_reason,
        usage=usage,
        cost=cost,
        decision=call.decision,
        attempts=call.attempts,
        response_model=reply.response_model,
        tool_calls=reply.tool_calls,
        reasoning=reply.reasoning,
        conformance=conformance,
    )


@dataclass(frozen=True, slots=True)
class _Answer:
    """The attempt that answered, for the caller to book."""

    candidate: d.Candidate
    entry: Any
    started: float
    scope: Any
    reply: Any


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
