"""Routing: which provider models may serve a request, in which order.

The rules, applied in this order to the models configured for the request's task:

1. task: only models configured for the task;
2. preferred model: must exist (NotFoundError) and serve the task with the required
   capabilities (NoRouteError naming what it lacks); it goes first, the others stay as
   fallbacks unless the caller disabled fallback;
3. capabilities: the required ones, plus what the request itself needs (vision for images,
   tools for tools, structured output for a JSON schema, reasoning for a reasoning effort);
   a rejected model's reason names what it lacks and why the request needs it, and since
   every candidate has them, a fallback never serves less than the caller asked for;
4. provider disabled at run time (e.g. its credentials were rejected): skipped;
5. circuit breaker open: skipped (read without taking a probe permit);
6. context window: skipped when input + output tokens exceed it;
7. cost ceiling: with `max_cost_usd`, models with an unknown price and models whose estimate
   exceeds the ceiling are skipped;
8. order: provider priority (lower first), then estimated cost (unknown after known), then key.

When nothing is left the error says why, the permanent reasons first (waiting does not help):
the context window (NoRouteError), the cost ceiling (CostLimitExceededError), disabled providers
and finally open breakers (UnavailableError with the wait until the first one half-opens).

`decide` is on every request's path: the per-task model lists, prices and ready-made candidates
are precomputed at construction, and the hot path neither logs nor builds large structures.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence

from router_service.breaker import Breakers
from router_service.domain import (
    Candidate,
    Capability,
    RejectedCandidate,
    RoutingDecision,
    RoutingPreferences,
    Task,
)
from router_service.model_registry import ModelEntry, Registry
from router_service.pricing import PriceTable
from sekha_runtime.errors import (
    CostLimitExceededError,
    GatewayError,
    NoRouteError,
    NotFoundError,
    UnavailableError,
)

__all__ = ["Router"]

_NO_CONTEXT_LIMIT = sys.maxsize
_VISION_ONLY = frozenset({Capability.VISION})


class _Slot:
    """A model entry flattened for the hot loop (attribute reads on a slotted object are cheap)."""

    __slots__ = (
        "caps",
        "context",
        "entry",
        "fixed_candidate",
        "index",
        "key",
        "lacks_cache",
        "model",
        "price",
        "price_known",
        "priority",
        "provider_id",
        "rejected_breaker_open",
        "rejected_context",
        "rejected_over_cost",
        "rejected_price_unknown",
    )

    def __init__(self, entry: ModelEntry, index: int, prices: PriceTable) -> None:
        price = prices.price(entry.key) if entry.key in prices else entry.price
        self.entry = entry
        self.index = index
        self.key = entry.key
        self.provider_id = entry.provider_id
        self.model = entry.model
        self.priority = entry.priority
        self.caps = entry.capabilities
        self.context = entry.context_window or _NO_CONTEXT_LIMIT
        self.price_known = price is not None
        self.price = price
        # Candidates are immutable, so one whose estimate never changes (free, or price unknown)
        # is built once and shared by every decision.
        fixed: Candidate | None = None
        if price is None:
            fixed = Candidate(entry.provider_id, entry.model, entry.priority, None)
        elif price.input_per_million == 0.0 and price.output_per_million == 0.0:
            fixed = Candidate(entry.provider_id, entry.model, entry.priority, 0.0)
        self.fixed_candidate = fixed
        # Rejections are immutable too, and in a decision that walks every model they are most
        # of the work, so the ones whose wording does not depend on the request are built here.
        provider_id, model = entry.provider_id, entry.model
        self.rejected_breaker_open = RejectedCandidate(provider_id, model, "circuit breaker open")
        self.rejected_context = RejectedCandidate(
            provider_id, model, f"context window of {self.context} tokens is too small for the request"
        )
        self.rejected_over_cost = RejectedCandidate(provider_id, model, "estimated cost exceeds max_cost")
        self.rejected_price_unknown = RejectedCandidate(
            provider_id, model, "price unknown and max_cost is set"
        )
        self.lacks_cache: dict[tuple[frozenset[Capability], frozenset[Capability]], RejectedCandidate] = {}

    def rejected_lacking(
        self, required: frozenset[Capability], because: frozenset[Capability]
    ) -> RejectedCandidate:
        """The rejection for missing capabilities (at most 4**len(Capability) distinct ones)."""
        key = (required, because)
        rejection = self.lacks_cache.get(key)
        if rejection is None:
            rejection = RejectedCandidate(self.provider_id, self.model, _lacks(required, self.caps, because))
            self.lacks_cache[key] = rejection
        return rejection

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        """The estimate (`Price.cost`, the router's one cost formula); None when the price is unknown."""
        price = self.price
        return None if price is None else price.cost(input_tokens, output_tokens)


_Group = tuple[tuple[_Slot, ...], tuple[str, ...]]  # slots of one priority, and their provider ids


class Router:
    """Turns (task, preferences, token estimate) into an ordered list of candidates."""

    def __init__(
        self,
        registry: Registry,
        prices: PriceTable,
        breakers: Breakers,
        *,
        max_candidates: int | None = None,
    ) -> None:
        self._registry = registry
        self._breakers = breakers
        self._disabled = registry.disabled  # live read-only view
        self._max_candidates = (
            max_candidates if max_candidates is not None else registry.config.routing.max_candidates
        )
        ordered = sorted(registry.entries, key=lambda e: (e.priority, e.key))
        self._slots = {entry.key: _Slot(entry, index, prices) for index, entry in enumerate(ordered)}
        self._task_slots: dict[Task, tuple[_Slot, ...]] = {
            task: tuple(self._slots[e.key] for e in registry.for_task(task)) for task in Task
        }
        self._task_groups: dict[Task, tuple[_Group, ...]] = {
            task: _priority_groups(slots) for task, slots in self._task_slots.items()
        }
        # Validated preferred models: (name, task, capabilities) -> their slots as a group. Only
        # names that exist are stored, so its size is bounded by the configuration.
        self._preferred_cache: dict[
            tuple[str, Task, frozenset[Capability], frozenset[Capability]], tuple[_Group, frozenset[str]]
        ] = {}

    def decide(
        self,
        task: Task,
        prefs: RoutingPreferences,
        input_tokens: int,
        output_tokens: int,
        has_images: bool,
        needed: frozenset[Capability] = frozenset(),
    ) -> RoutingDecision:
        """Order the candidates for a request; raise the error that explains an empty list.

        `needed` are the capabilities the request's own content requires (tools, a JSON schema,
        a reasoning effort: `ChatRequest.needed_capabilities`), on top of the caller's list.

        Priority groups are examined in order and the walk stops once `max_candidates` models
        are found, so `rejected` lists the models examined and excluded, not lower-priority
        models that were never needed.
        """
        groups = self._task_groups.get(task)
        if not groups:
            raise NoRouteError(
                f"no configured model serves task {task}",
                subject="routing.task",
                violation_type="NO_MODEL_FOR_TASK",
            )
        required = prefs.required_capabilities
        because = needed | _VISION_ONLY if has_images else needed
        if because and not because <= required:
            required = required | because
        preferred = prefs.preferred_model
        preferred_group: _Group | None = None
        preferred_keys: frozenset[str] = frozenset()
        if preferred:
            preferred_group, preferred_keys = self._preferred_group(preferred, task, required, because)
            if prefs.disable_fallback:
                groups = (preferred_group,)
            else:
                groups = (preferred_group, *groups)
        limit = 1 if prefs.disable_fallback else self._max_candidates

        disabled = self._disabled
        is_available = self._breakers.is_available
        total_tokens = input_tokens + output_tokens
        max_cost = prefs.max_cost_usd
        chosen: list[tuple[int, float, int, _Slot, float | None]] = []
        rejected: list[RejectedCandidate] = []
        for group_index, (slots, provider_ids) in enumerate(groups):
            # Provider-level state, read once per provider of the group rather than per model.
            # Value: why the provider is disabled, or "" when its breaker is open.
            blocked: dict[str, str] | None = None
            for provider_id in provider_ids:
                reason = disabled.get(provider_id)
                if reason is not None:
                    reason = "provider disabled: " + reason
                elif not is_available(provider_id):
                    reason = ""
                else:
                    continue
                if blocked is None:
                    blocked = {}
                blocked[provider_id] = reason
            skip_preferred = preferred_group is not None and group_index > 0
            found: list[tuple[int, float, int, _Slot, float | None]] = []
            for slot in slots:
                if skip_preferred and slot.key in preferred_keys:
                    continue  # examined in the preferred group
                if required and not required <= slot.caps:
                    rejected.append(slot.rejected_lacking(required, because))
                    continue
                if blocked is not None:
                    reason = blocked.get(slot.provider_id)
                    if reason is not None:
                        rejected.append(
                            RejectedCandidate(slot.provider_id, slot.model, reason)
                            if reason
                            else slot.rejected_breaker_open
                        )
                        continue
                if total_tokens > slot.context:
                    rejected.append(slot.rejected_context)
                    continue
                if slot.price is not None:
                    cost = slot.price.cost(input_tokens, output_tokens)
                    if max_cost is not None and cost > max_cost:
                        rejected.append(slot.rejected_over_cost)
                        continue
                    found.append((slot.priority, cost, slot.index, slot, cost))
                elif max_cost is not None:
                    rejected.append(slot.rejected_price_unknown)
                else:
                    found.append((slot.priority, math.inf, slot.index, slot, None))
            if found:
                if len(found) > 1:
                    found.sort()  # index is unique, so slot objects are never compared
                chosen.extend(found)
                if len(chosen) >= limit:
                    break

        if not chosen:
            considered = (
                preferred_group[0] if preferred_group is not None and prefs.disable_fallback else None
            )
            raise self._explain_empty(
                task,
                considered if considered is not None else self._task_slots[task],
                required,
                because,
                input_tokens,
                output_tokens,
                max_cost,
            )

        candidates = tuple(
            [
                slot.fixed_candidate
                if slot.fixed_candidate is not None
                else Candidate(slot.provider_id, slot.model, slot.priority, cost)
                for _, _, _, slot, cost in chosen[:limit]
            ]
        )
        _, _, _, first, first_cost = chosen[0]
        estimate = f"est ${first_cost:.6f}" if first_cost is not None else "price unknown"
        if not preferred:
            reason = f"task {task}; priority {first.priority}; {estimate}"
        elif first.key in preferred_keys:
            reason = f"task {task}; preferred model {preferred}; priority {first.priority}; {estimate}"
        else:
            reason = f"task {task}; preferred model {preferred} not eligible; "
            reason += f"priority {first.priority}; {estimate}"
        return RoutingDecision(
            candidates=candidates,
            reason=reason,
            task=task,
            estimated_input_tokens=input_tokens,
            estimated_output_tokens=output_tokens,
            rejected=tuple(rejected),
        )

    # -- preferred model ------------------------------------------------------------------

    def _preferred_group(
        self, name: str, task: Task, required: frozenset[Capability], because: frozenset[Capability]
    ) -> tuple[_Group, frozenset[str]]:
        cache_key = (name, task, required, because)
        cached = self._preferred_cache.get(cache_key)
        if cached is not None:
            return cached
        entries = self._registry.find(name)
        if not entries:
            raise NotFoundError("model", name)
        serving = [e for e in entries if task in e.tasks]
        if not serving:
            serves = ", ".join(sorted({str(t) for e in entries for t in e.tasks}))
            raise NoRouteError(
                f"model {name!r} cannot serve task {task}; it serves {serves}",
                subject="routing.preferred_model",
                violation_type="MODEL_LACKS_TASK",
            )
        capable = [e for e in serving if required <= e.capabilities]
        if not capable:
            raise NoRouteError(
                f"model {name!r} {_lacks(required, serving[0].capabilities, because)}",
                subject="routing.preferred_model",
                violation_type="MODEL_LACKS_CAPABILITY",
            )
        slots = tuple(sorted((self._slots[e.key] for e in capable), key=lambda s: s.index))
        group = (slots, tuple(dict.fromkeys(s.provider_id for s in slots)))
        cached = (group, frozenset(s.key for s in slots))
        self._preferred_cache[cache_key] = cached
        return cached

    # -- errors (slow path) ---------------------------------------------------------------

    def _explain_empty(
        self,
        task: Task,
        considered: Sequence[_Slot],
        required: frozenset[Capability],
        because: frozenset[Capability],
        input_tokens: int,
        output_tokens: int,
        max_cost: float | None,
    ) -> GatewayError:
        capable = [s for s in considered if required <= s.caps]
        if not capable:
            asked = ", ".join(sorted(str(c) for c in required))
            return NoRouteError(
                f"no configured model serves task {task} with capabilities {asked}{_why(required, because)}",
                subject="routing.required_capabilities",
                violation_type="NO_MODEL_WITH_CAPABILITY",
            )
        total = input_tokens + output_tokens
        fitting = [s for s in capable if total <= s.context]
        if not fitting:
            largest = max(s.context for s in capable)
            return NoRouteError(
                f"the request needs about {total} tokens ({input_tokens} input + {output_tokens} output), "
                f"more than the context window of every model for task {task} (largest {largest})",
                subject="messages",
                violation_type="CONTEXT_WINDOW",
            )
        within = fitting
        if max_cost is not None:
            within = []
            cheapest: float | None = None
            unknown = 0
            for slot in fitting:
                cost = slot.cost(input_tokens, output_tokens)
                if cost is None:
                    unknown += 1
                elif cost > max_cost:
                    cheapest = cost if cheapest is None else min(cheapest, cost)
                else:
                    within.append(slot)
            if not within:
                unknown_note = f"; {unknown} model(s) with an unknown price were left out" if unknown else ""
                if cheapest is None:
                    message = (
                        f"no model for task {task} has a known price, and max_cost_usd is set{unknown_note}"
                    )
                else:
                    message = (
                        f"every model for task {task} is estimated above max_cost_usd ${max_cost:.6f}; "
                        f"the cheapest estimate is ${cheapest:.6f}{unknown_note}"
                    )
                return CostLimitExceededError(message, cheapest_usd=cheapest)
        enabled = [s for s in within if s.provider_id not in self._disabled]
        if not enabled:
            reasons = "; ".join(
                f"{provider_id}: {self._disabled[provider_id]}"
                for provider_id in dict.fromkeys(s.provider_id for s in within)
            )
            return UnavailableError(
                f"every provider that can serve task {task} is disabled ({reasons})",
                reason="PROVIDERS_DISABLED",
            )
        retry_after = self._breakers.seconds_until_available(_unique(s.provider_id for s in enabled))
        return UnavailableError(
            f"the circuit breaker of every provider that can serve task {task} is open; "
            f"retry in {retry_after:.1f}s",
            retry_after_s=retry_after,
            reason="ALL_BREAKERS_OPEN",
        )


def _priority_groups(slots: Sequence[_Slot]) -> tuple[_Group, ...]:
    """Split slots already ordered by (priority, key) into runs of equal priority."""
    groups: list[_Group] = []
    run: list[_Slot] = []
    for slot in slots:
        if run and slot.priority != run[0].priority:
            groups.append((tuple(run), tuple(dict.fromkeys(s.provider_id for s in run))))
            run = []
        run.append(slot)
    if run:
        groups.append((tuple(run), tuple(dict.fromkeys(s.provider_id for s in run))))
    return tuple(groups)


# Why a request needs a capability its caller did not list.
_BECAUSE = {
    Capability.VISION: "the request has images",
    Capability.TOOLS: "the request has tools",
    Capability.STRUCTURED_OUTPUT: "the request asks for a JSON schema",
    Capability.REASONING: "the request sets a reasoning effort",
}


def _why(capabilities: frozenset[Capability], because: frozenset[Capability]) -> str:
    reasons = [_BECAUSE[c] for c in sorted(capabilities & because) if c in _BECAUSE]
    return f" ({'; '.join(reasons)})" if reasons else ""


def _lacks(
    required: frozenset[Capability], capabilities: frozenset[Capability], because: frozenset[Capability]
) -> str:
    lacking = required - capabilities
    return "lacks " + ", ".join(sorted(str(c) for c in lacking)) + _why(lacking, because)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
