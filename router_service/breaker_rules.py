"""The circuit breaker's rules: the one home of when a breaker opens, half-opens and closes.

Every breaker applies these rules and none has its own: the local breaker
(`router_service.breaker.CircuitBreaker`), the shared breaker's mirror
(`router_service.shared_breaker`) and the state stores run `apply_breaker_event`, and the Redis
store runs `LUA_RULES`, its port to Lua (Redis cannot call Python; the two sit side by side here
so they change together, and `tests/unit/test_state_redis.py` checks them against each other on
random event sequences). The settings the rules read are `RULE_PARAMETERS`, which also fixes the
order the Lua script receives them in.

The rules (docs/ARCHITECTURE.md §4), over a `BreakerRecord` and one call outcome at time `now`:

====================  =========  ==============================================================
state                 outcome    then
====================  =========  ==============================================================
closed                success    consecutive failures := 0; the success enters the window
closed                failure    consecutive failures + 1; the failure enters the window; open
                                 when consecutive failures >= failure_threshold, or when the
                                 window holds >= minimum_calls and its failure rate >=
                                 failure_rate_threshold (until now + the opening's reset time,
                                 or the Retry-After if later); below the thresholds, a Retry-After alone
                                 opens it until now + Retry-After
open, before reset    success    nothing (a call admitted before the breaker opened proves little)
open, before reset    failure    a Retry-After later than the reset time extends it
half-open             success    closed, with a fresh window
half-open             failure    open again, for longer (see below), or until the Retry-After
====================  =========  ==============================================================

The n-th opening since the breaker last closed lasts `reset_timeout_for(n)`:
`initial_reset_timeout_s` doubling with each reopening, at most `reset_timeout_s`.

Half-open is not stored: it is an open breaker whose reset time has passed, so no timer is
needed and every replica agrees on it from the record alone. Each opening starts a new
`generation`, so half-open probe permits of one open period never admit a probe of another.
How many probes a half-open breaker admits (`half_open_max_probes`) is admission, not a rule
about outcomes: each breaker counts its probes itself (the shared one with permits in the store).
A success slower than `slow_call_threshold_s` is reported as a failure of kind `slow` before it
gets here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol

__all__ = [
    "CLOSED_RECORD",
    "LUA_RULES",
    "RULE_PARAMETERS",
    "BreakerEvent",
    "BreakerRecord",
    "BreakerSettings",
    "apply_breaker_event",
    "lua_rule_arguments",
    "reset_timeout_for",
]


class BreakerSettings(Protocol):
    """The fields of `router_service.config.CircuitBreakerConfig` the rules read (a Protocol, so
    that this module, which the state stores import, does not import the config module)."""

    @property
    def failure_threshold(self) -> int: ...
    @property
    def failure_rate_threshold(self) -> float: ...
    @property
    def window_size(self) -> int: ...
    @property
    def minimum_calls(self) -> int: ...
    @property
    def reset_timeout_s(self) -> float: ...
    @property
    def initial_reset_timeout_s(self) -> float: ...
    @property
    def half_open_max_probes(self) -> int: ...


# The settings `apply_breaker_event` reads, in the order `LUA_RULES` receives them as ARGV.
RULE_PARAMETERS: tuple[str, ...] = (
    "failure_threshold",
    "failure_rate_threshold",
    "window_size",
    "minimum_calls",
    "reset_timeout_s",
    "initial_reset_timeout_s",
)

# Openings beyond this many in a row all last reset_timeout_s (and 2**n stays a small float).
_MAX_DOUBLINGS = 32


def reset_timeout_for(opens: int, settings: BreakerSettings) -> float:
    """How long the `opens`-th opening since the breaker last closed lasts (1 = the first):
    `initial_reset_timeout_s`, doubling with each reopening, at most `reset_timeout_s` (Envoy's
    outlier detection does the same: a provider that just failed is tried again soon, one that
    keeps failing less and less often). `reset_for` in `LUA_RULES` is its port.
    """
    initial = min(settings.initial_reset_timeout_s, settings.reset_timeout_s)
    doublings = min(max(opens - 1, 0), _MAX_DOUBLINGS)
    return min(settings.reset_timeout_s, initial * 2.0**doublings)


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """A breaker's state. HALF_OPEN is not stored: it is OPEN with `open_until` passed.

    `generation` grows each time the breaker opens; half-open probe permits belong to one
    generation, so permits of an earlier open period can never admit a probe of a later one.
    `opens` counts the openings since the breaker last closed (each lasts longer, see
    `reset_timeout_for`). `window` holds the last calls oldest first, True for a failure. Times
    are on the clock of whoever applies the events (monotonic for the local breaker, epoch
    seconds when shared).
    """

    state: Literal["closed", "open"] = "closed"
    open_until: float = 0.0
    opened_at: float | None = None
    consecutive_failures: int = 0
    window: tuple[bool, ...] = ()
    generation: int = 0
    opens: int = 0

    def half_open(self, now: float) -> bool:
        return self.state == "open" and now >= self.open_until

    @property
    def window_failures(self) -> int:
        return sum(self.window)


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    """One call outcome. Slow successes arrive already turned into failures of kind `slow`."""

    failed: bool
    at: float
    kind: str = ""
    retry_after_s: float | None = None


CLOSED_RECORD = BreakerRecord()


def apply_breaker_event(
    record: BreakerRecord, event: BreakerEvent, settings: BreakerSettings
) -> BreakerRecord:
    """The record after one call outcome, by the rules of the module docstring."""
    now = event.at
    retry_after = event.retry_after_s
    cooldown_until = now + retry_after if retry_after is not None and retry_after > 0 else None
    half_open = record.half_open(now)
    if not event.failed:
        if record.state == "closed":
            return replace(record, consecutive_failures=0, window=_push(record.window, False, settings))
        if half_open:
            return BreakerRecord(generation=record.generation)
        return record
    if record.state == "closed":
        window = _push(record.window, True, settings)
        failures = record.consecutive_failures + 1
        record = replace(record, consecutive_failures=failures, window=window)
        if _thresholds_reached(failures, window, settings):
            return _open(record, now, now + reset_timeout_for(record.opens + 1, settings), cooldown_until)
        if cooldown_until is not None:
            return _open(record, now, now, cooldown_until)
        return record
    if half_open:
        record = replace(record, consecutive_failures=record.consecutive_failures + 1)
        return _open(record, now, now + reset_timeout_for(record.opens + 1, settings), cooldown_until)
    if cooldown_until is not None and cooldown_until > record.open_until:
        return replace(record, open_until=cooldown_until)
    return record


def _push(window: tuple[bool, ...], failed: bool, settings: BreakerSettings) -> tuple[bool, ...]:
    return (*window, failed)[-settings.window_size :]


def _thresholds_reached(failures: int, window: tuple[bool, ...], settings: BreakerSettings) -> bool:
    if failures >= settings.failure_threshold:
        return True
    calls = len(window)
    return calls >= settings.minimum_calls and sum(window) / calls >= settings.failure_rate_threshold


def _open(
    record: BreakerRecord, now: float, open_until: float, cooldown_until: float | None
) -> BreakerRecord:
    if cooldown_until is not None and cooldown_until > open_until:
        open_until = cooldown_until
    return replace(
        record,
        state="open",
        open_until=open_until,
        opened_at=now,
        generation=record.generation + 1,
        opens=record.opens + 1,
    )


def lua_rule_arguments(settings: BreakerSettings) -> list[str]:
    """`settings` as the first ARGV of a script built on `LUA_RULES` (exact decimal text)."""
    return [repr(getattr(settings, name)) for name in RULE_PARAMETERS]


# `apply_breaker_event` in Lua, line for line. A breaker is a table
# {state, open_until, opened_at (string, '' = none), consec, gen, opens, window (list of '0'/'1')}.
# `apply_event(b, failed, now, retry_after)` changes `b` in place and returns true when the
# event closed a half-open breaker (the caller then drops that generation's probe permits).
_LUA_SETTINGS = "".join(
    f"local {name} = tonumber(ARGV[{index}])\n" for index, name in enumerate(RULE_PARAMETERS, start=1)
)
LUA_RULES = (
    _LUA_SETTINGS
    + """
local function reset_for(opens)
  local initial = math.min(initial_reset_timeout_s, reset_timeout_s)
  return math.min(reset_timeout_s, initial * 2 ^ math.min(math.max(opens - 1, 0), 32))
end
local function push(b, v)
  b.window[#b.window + 1] = v
  while #b.window > window_size do table.remove(b.window, 1) end
end
local function thresholds_reached(b)
  if b.consec >= failure_threshold then return true end
  local calls = #b.window
  if calls < minimum_calls then return false end
  local failures = 0
  for _, v in ipairs(b.window) do if v == '1' then failures = failures + 1 end end
  return failures / calls >= failure_rate_threshold
end
local function open(b, now, open_until, cooldown)
  if cooldown and cooldown > open_until then open_until = cooldown end
  b.state = 'open'
  b.open_until = open_until
  b.opened_at = string.format('%.17g', now)
  b.gen = b.gen + 1
  b.opens = b.opens + 1
end
local function apply_event(b, failed, now, retry_after)
  local cooldown = nil
  if retry_after and retry_after > 0 then cooldown = now + retry_after end
  local half_open = b.state == 'open' and now >= b.open_until
  if not failed then
    if b.state == 'closed' then
      b.consec = 0
      push(b, '0')
    elseif half_open then
      b.state, b.open_until, b.opened_at, b.consec, b.window, b.opens = 'closed', 0, '', 0, {}, 0
      return true
    end
    return false
  end
  if b.state == 'closed' then
    b.consec = b.consec + 1
    push(b, '1')
    if thresholds_reached(b) then
      open(b, now, now + reset_for(b.opens + 1), cooldown)
    elseif cooldown then
      open(b, now, now, cooldown)
    end
  elseif half_open then
    b.consec = b.consec + 1
    open(b, now, now + reset_for(b.opens + 1), cooldown)
  elseif cooldown and cooldown > b.open_until then
    b.open_until = cooldown
  end
  return false
end
"""
)
