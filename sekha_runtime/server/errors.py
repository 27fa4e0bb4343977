"""Maps domain errors to gRPC statuses with google.rpc details.

One `ErrorGuard` per server wraps every RPC handler (unary and server
streaming) when it is registered. It is the only place where an exception becomes
a status, so the rules of the error table (docs/ARCHITECTURE.md §3) live here and
nowhere else:

* a `sekha_runtime.errors.GatewayError` becomes its code plus rich details
  (BadRequest, PreconditionFailure, QuotaFailure, RetryInfo, ErrorInfo,
  ResourceInfo);
* anything else becomes INTERNAL with a fixed message and an error id; the
  exception's type and stack are logged under that id, never its text, which
  may hold a provider's response, a prompt or a key;
* no handler can let UNKNOWN reach a client.

The same wrapper enforces the server's concurrency limit, because an RPC
refused for load must be answered fast with RetryInfo, before any work.

The wrapping happens once, at registration (`GuardedRegistry`), not in a server
interceptor: grpc.aio runs an interceptor as two extra coroutines on every call,
about 50 us of CPU per RPC on the benchmark machine, the cost of the whole routing
decision (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sekha_runtime import errors as e
from sekha_runtime.server.messages import bound, bound_strings

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error"
# An error may echo the caller's input (a name it did not find): bounded here, for every error of
# both services, so a status and its details always fit a client's default 16 KiB metadata limit.
MAX_MESSAGE_CHARS = 512
MAX_DETAIL_CHARS = 512
MAX_DETAILS_BYTES = 8192
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."


def _pack(*details: Any) -> list[any_pb2.Any]:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return packed


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(max(seconds, 0.0) * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _error_info(
    reason: str, domain: str, metadata: dict[str, str] | None = None
) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata or {})


def status_for(exc: BaseException, domain: str) -> tuple[status_pb2.Status, str | None]:
    """Return the status for an exception and, for INTERNAL, the error id that was logged."""
    code, details = _classify(exc, domain)
    if code is None:
        error_id = uuid.uuid4().hex[:16]
        status = status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"{INTERNAL_MESSAGE} (error id {error_id})",
            details=_pack(_error_info("INTERNAL", domain, {"error_id": error_id})),
        )
        return status, error_id
    assert isinstance(exc, e.GatewayError)
    return _bounded_status(code, exc.message, details), None


def _bounded_status(code: int, message: str, details: list[Any]) -> status_pb2.Status:
    """The status with its message and every string of its details cut to a bounded size."""
    for detail in details:
        bound_strings(detail, MAX_DETAIL_CHARS)
    packed = _pack(*details)
    if sum(holder.ByteSize() for holder in packed) > MAX_DETAILS_BYTES:
        for detail in details:  # many long strings (twenty violations): shorter still
            bound_strings(detail, MAX_DETAIL_CHARS // 8)
        packed = _pack(*details)
    return status_pb2.Status(code=code, message=bound(message, MAX_MESSAGE_CHARS), details=packed)


def _classify(exc: BaseException, domain: str) -> tuple[int | None, list[Any]]:
    """The code and details for a domain error; (None, []) for anything unexpected."""
    if isinstance(exc, e.InvalidArgumentError):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in exc.violations
        ]
        return code_pb2.INVALID_ARGUMENT, [error_details_pb2.BadRequest(field_violations=violations)]
    if isinstance(exc, e.ProviderRejectedError):
        metadata = {"provider_code": exc.provider_code} if exc.provider_code else {}
        info = _error_info(exc.kind.upper(), domain, metadata)
        if not exc.field_path:  # the provider named no field we know: blame none
            return code_pb2.INVALID_ARGUMENT, [info]
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=exc.field_path, description=exc.message)
            ]
        )
        return code_pb2.INVALID_ARGUMENT, [bad, info]
    if isinstance(exc, e.NoRouteError):  # includes CostLimitExceededError
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=exc.violation_type, subject=exc.subject, description=exc.message
                )
            ]
        )
        metadata = {}
        if isinstance(exc, e.CostLimitExceededError) and exc.cheapest_usd is not None:
            metadata["cheapest_estimate_usd"] = f"{exc.cheapest_usd:.8f}"
        return code_pb2.FAILED_PRECONDITION, [failure, _error_info(exc.reason, domain, metadata)]
    if isinstance(exc, e.DimensionMismatchError):
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="DIMENSION_MISMATCH", subject=exc.collection, description=exc.message
                )
            ]
        )
        return code_pb2.FAILED_PRECONDITION, [failure]
    if isinstance(exc, e.FailedPreconditionError):
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=exc.violation_type, subject=exc.subject, description=exc.message
                )
            ]
        )
        return code_pb2.FAILED_PRECONDITION, [failure]
    if isinstance(exc, e.BudgetExhaustedError):
        quota = error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject=exc.scope, description=exc.message)]
        )
        info = _error_info(exc.reason, domain, {"scope": exc.scope, "period": exc.period})
        return code_pb2.RESOURCE_EXHAUSTED, [quota, info]
    if isinstance(exc, e.RateLimitedError):
        quota = error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject=exc.scope, description=exc.message)]
        )
        return code_pb2.RESOURCE_EXHAUSTED, [
            quota,
            _retry_info(exc.retry_after_s),
            _error_info(exc.reason, domain, {"scope": exc.scope}),
        ]
    if isinstance(exc, e.OverloadedError):
        return code_pb2.RESOURCE_EXHAUSTED, [
            _retry_info(exc.retry_after_s),
            _error_info("OVERLOADED", domain),
        ]
    if isinstance(exc, e.UnavailableError):  # includes StreamInterruptedError
        details: list[Any] = []
        if exc.retry_after_s is not None:
            details.append(_retry_info(exc.retry_after_s))
        attempts = ",".join(f"{a.provider_id}/{a.model}:{a.error_kind}" for a in exc.attempts)
        details.append(_error_info(exc.reason, domain, {"attempts": attempts} if attempts else {}))
        return code_pb2.UNAVAILABLE, details
    if isinstance(exc, e.NotFoundError):
        info = error_details_pb2.ResourceInfo(
            resource_type=exc.resource_type, resource_name=exc.resource_name, description=exc.message
        )
        return code_pb2.NOT_FOUND, [info]
    if isinstance(exc, e.AlreadyExistsError):
        info = error_details_pb2.ResourceInfo(
            resource_type=exc.resource_type, resource_name=exc.resource_name, description=exc.message
        )
        return code_pb2.ALREADY_EXISTS, [info]
    if isinstance(exc, e.UnauthenticatedError):
        return code_pb2.UNAUTHENTICATED, []
    if isinstance(exc, e.PermissionDeniedError):
        return code_pb2.PERMISSION_DENIED, []
    if isinstance(exc, e.DeadlineExceededError):
        return code_pb2.DEADLINE_EXCEEDED, []
    if isinstance(exc, e.UnimplementedError):
        return code_pb2.UNIMPLEMENTED, []
    return None, []


Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


class ErrorGuard:
    """Wraps every RPC handler: concurrency limit first, then domain error -> status mapping."""

    def __init__(
        self,
        domain: str,
        max_concurrent_rpcs: int = 0,
        retry_after_s: float = 1.0,
        request_check: Callable[[Any], None] | None = None,
    ) -> None:
        """`request_check` sees every decoded request before its handler (the service's checks
        that hold for all of its RPCs, such as declared enum values); it raises a domain error."""
        self._domain = domain
        self._request_check = request_check
        self._max_in_flight = max_concurrent_rpcs
        self._retry_after_s = retry_after_s
        self.in_flight = 0
        # Set by `begin_drain` at shutdown: new RPCs are refused, in-flight ones may finish, and
        # health (never counted here) keeps answering NOT_SERVING meanwhile.
        self.draining = False
        self._drained = asyncio.Event()

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler` of the fully qualified `method` (`/pkg.Service/Method`), guarded."""
        limited = not (method.startswith(HEALTH_PREFIX) or method.startswith(REFLECTION_PREFIX))
        return rewrap(
            handler,
            lambda behavior: self._wrap_unary(behavior, method, limited),
            lambda behavior: self._wrap_stream(behavior, method, limited),
            _tolerant(handler.request_deserializer),
        )

    def _check(self, request: Any, limited: bool) -> None:
        _require_decoded(request)
        if limited and self._request_check is not None:  # health and reflection are not ours
            self._request_check(request)

    def _admit(self) -> None:
        if self.draining:
            raise e.UnavailableError(
                "the server is shutting down; retry on another replica", reason="SHUTTING_DOWN"
            )
        if self._max_in_flight and self.in_flight >= self._max_in_flight:
            raise e.OverloadedError(retry_after_s=self._retry_after_s)
        self.in_flight += 1

    def _release(self) -> None:
        self.in_flight -= 1
        if self.draining and self.in_flight == 0:
            self._drained.set()

    def begin_drain(self) -> None:
        """Refuse new RPCs (UNAVAILABLE) from now on; health and reflection stay answered."""
        self.draining = True
        if self.in_flight == 0:
            self._drained.set()

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait until no admitted RPC is running (True) or `timeout_s` passed (False)."""
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    def _wrap_unary(self, behavior: Behavior, method: str, limited: bool) -> Behavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            admitted = False
            try:
                self._check(request, limited)
                if limited:
                    self._admit()
                    admitted = True
                return await behavior(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except BaseException as exc:
                await self._abort(exc, method, context)
            finally:
                if admitted:
                    self._release()

        return wrapped

    def _wrap_stream(self, behavior: Behavior, method: str, limited: bool) -> Behavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            admitted = False
            try:
                self._check(request, limited)
                if limited:
                    self._admit()
                    admitted = True
                async for response in behavior(request, context):
                    yield response
            except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
                raise
            except BaseException as exc:
                await self._abort(exc, method, context)
            finally:
                if admitted:
                    self._release()

        return wrapped

    async def _abort(self, exc: BaseException, method: str, context: grpc.aio.ServicerContext) -> None:
        if isinstance(exc, TimeoutError) and _deadline_passed(context):
            exc = e.DeadlineExceededError("deadline exceeded")
        status, error_id = status_for(exc, self._domain)
        if error_id is not None:
            # The type and stack are enough to debug; the text may carry secrets or prompts.
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("unexpected %s in %s (error id %s)\n%s", type(exc).__name__, method, error_id, frames)
        await context.abort_with_status(rpc_status.to_status(status))


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the handler wrapper can refuse it."""

    __slots__ = ()


_UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that never raises: grpc would answer UNKNOWN with the parser's text."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return _UNDECODABLE

    return deserialize


def _require_decoded(request: Any) -> None:
    if request is _UNDECODABLE:
        raise e.InvalidArgumentError(e.FieldViolation("request", "is not a valid serialized request message"))


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def rewrap(
    handler: grpc.RpcMethodHandler,
    around_coroutine: Callable[[Behavior], Behavior],
    around_generator: Callable[[Behavior], Behavior],
    request_deserializer: Callable[[bytes], Any] | None,
) -> grpc.RpcMethodHandler:
    """`handler` of the same shape with its behaviour wrapped: unary handlers, and streaming ones
    that send with context.write() (grpc's own Health.Watch, our StreamChat), are coroutines and
    go through `around_coroutine`; async-generator streams through `around_generator`. Client
    streaming is not part of our contracts and comes back as it is."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            around_coroutine(handler.unary_unary),
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        stream = handler.unary_stream
        around = around_generator if inspect.isasyncgenfunction(stream) else around_coroutine
        return grpc.unary_stream_rpc_method_handler(
            around(stream),
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class HandlerLayer(Protocol):
    """Wraps one RPC handler once, when it is registered (telemetry, API-key auth, the guard)."""

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler: ...


class _LayeredGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose handlers come out wrapped (each method's wrapped once)."""

    def __init__(self, inner: grpc.GenericRpcHandler, registry: GuardedRegistry) -> None:
        self._inner = inner
        self._registry = registry
        # method -> (the handler it was made from, the wrapped one): a generic handler may build
        # its handler per call, so the wrapped one is kept only while the inner one stays the same.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._registry.wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class GuardedRegistry:
    """The server as service registration sees it: every handler added comes out wrapped by the
    layers (outermost first) around the error guard.

    Generated `add_*Servicer_to_server` functions, health and reflection only call these two
    methods, so they register through this object unchanged.
    """

    def __init__(
        self, server: grpc.aio.Server, guard: ErrorGuard, layers: Sequence[HandlerLayer] = ()
    ) -> None:
        self._server = server
        self._layers: tuple[HandlerLayer, ...] = (*layers, guard)  # outermost first

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler` of the fully qualified `method` (`/pkg.Service/Method`), every layer around it."""
        for layer in reversed(self._layers):  # the guard first: it is the innermost
            handler = layer.wrap(handler, method)
        return handler

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_LayeredGenericHandler(handler, self) for handler in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self.wrap(handler, f"/{service_name}/{name}")
                for name, handler in method_handlers.items()
            },
        )
