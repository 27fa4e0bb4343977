"""Vectors from the Router service's Embed RPC, so routing, breakers and costs apply to embeddings.

When the domain names a model (a collection's model, `provider_id/model`), the
router must embed with exactly that model: a fallback to another model would
write vectors of another space into the collection. So a named model is
requested with fallback disabled; with no model the router chooses, and the
model that really answered (the last, successful attempt) is reported back.

A router that cannot be reached (no status from it at all) is logged as `router_unreachable`,
and `router_reachable` once it answers again; a router that answered with an error (its
providers failed, say) as `router_embed_failed`. Neither line holds a text or a key.
"""

from __future__ import annotations

from collections.abc import Sequence

from embedding_service.events import EVENTS
from embedding_service.vectors import EmbeddedBatch
from sekha import client as c
from sekha.router.v1 import router_service_pb2 as rt
from sekha_runtime import errors as e


class RouterVectorSource:
    def __init__(self, router: c.RouterClient, timeout_s: float = 30.0) -> None:
        self._router = router
        self._timeout_s = timeout_s
        self._unreachable = False  # the last call found no router (logged once it answers again)

    async def embed(self, texts: Sequence[str], model: str | None) -> EmbeddedBatch:
        request = rt.EmbedRequest(
            inputs=list(texts),
            routing=rt.RoutingPreferences(
                task=rt.TASK_EMBEDDING, preferred_model=model or "", disable_fallback=bool(model)
            ),
        )
        try:
            reply = await self._router.embed(request, timeout_s=self._timeout_s)
        except c.SekhaError as exc:
            self._log_failure(exc, model)
            raise _domain_error(exc, model) from None
        if self._unreachable:
            self._unreachable = False
            EVENTS.info(
                "router_reachable",
                f"the router at {self._target} answers again",
                subject=self._target,
                router=self._target,
            )
        served = reply.attempts[-1] if reply.attempts else reply.routing.chosen
        return EmbeddedBatch(
            vectors=[list(embedding.values) for embedding in reply.embeddings],
            dimension=reply.dimension,
            model=f"{served.provider_id}/{served.model}",
        )

    @property
    def _target(self) -> str:
        return self._router.config.target

    def _log_failure(self, exc: c.SekhaError, model: str | None) -> None:
        code = exc.code.name if exc.code is not None else "UNKNOWN"
        reason = exc.details.reason
        if code == "UNAVAILABLE" and not reason:
            # No ErrorInfo: the status came from the channel, not from the router's code.
            self._unreachable = True
            EVENTS.warning(
                "router_unreachable",
                f"the router at {self._target} cannot be reached",
                subject=self._target,
                router=self._target,
                code=code,
            )
            return
        EVENTS.warning(
            "router_embed_failed",
            f"the router could not embed ({code}{', ' + reason if reason else ''})",
            subject=self._target,
            router=self._target,
            code=code,
            reason=reason,
            model=model or "",
        )


def _domain_error(exc: c.SekhaError, model: str | None) -> e.GatewayError:
    """The router's answer as the domain error the embedding service reports to its caller."""
    if isinstance(exc, c.NotFoundError):
        return e.NotFoundError(
            "model", model or "", f"embedding model {model!r} is not configured on the router"
        )
    if isinstance(exc, c.FailedPreconditionError):
        return e.FailedPreconditionError(
            f"the router cannot embed with {model or 'its default model'}: {exc.message}",
            subject="model",
            violation_type="NO_EMBEDDING_MODEL",
        )
    if isinstance(exc, c.InvalidArgumentError):
        return e.InvalidArgumentError(e.FieldViolation("documents", f"rejected by the router: {exc.message}"))
    if isinstance(exc, c.DeadlineExceededError):
        return e.DeadlineExceededError("the router did not answer within the deadline")
    if isinstance(exc, c.ResourceExhaustedError):
        return e.UnavailableError(
            "the router refused the embedding request for load or budget",
            retry_after_s=exc.details.retry_after_s,
            reason="ROUTER_EXHAUSTED",
        )
    return e.UnavailableError(
        "the router could not embed the texts",
        retry_after_s=exc.details.retry_after_s,
        reason="EMBEDDING_UNAVAILABLE",
    )
