"""Circuit breaker transitions, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from router_service.breaker import BreakerRegistry, BreakerState, CircuitBreaker
from router_service.config import CircuitBreakerConfig
from testkit.harness import FakeClock


def make(clock: FakeClock, **overrides: float) -> CircuitBreaker:
    settings: dict[str, float] = {
        "failure_threshold": 3,
        "failure_rate_threshold": 0.5,
        "window_size": 10,
        "minimum_calls": 6,
        "reset_timeout_s": 30.0,
        "half_open_max_probes": 1,
        "slow_call_threshold_s": 5.0,
    }
    settings.update(overrides)
    return CircuitBreaker("p", CircuitBreakerConfig(**settings), clock=clock, wall_clock=lambda: 5_000.0)


def open_breaker(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.config.failure_threshold):
        breaker.record_failure("timeout")
    assert breaker.state is BreakerState.OPEN


def test_starts_closed_and_admits_calls() -> None:
    breaker = make(FakeClock())
    assert breaker.state is BreakerState.CLOSED
    assert breaker.is_available()
    assert breaker.try_acquire()


def test_consecutive_failures_open_at_threshold() -> None:
    breaker = make(FakeClock())
    breaker.record_failure("5xx")
    breaker.record_failure("5xx")
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure("5xx")
    assert breaker.state is BreakerState.OPEN
    assert not breaker.is_available()
    assert not breaker.try_acquire()


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = make(FakeClock(), failure_rate_threshold=0.9)  # only the consecutive rule matters here
    for _ in range(5):
        breaker.record_failure("5xx")
        breaker.record_failure("5xx")
        breaker.record_success(0.1)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().consecutive_failures == 0


def test_failure_rate_opens_only_after_minimum_calls() -> None:
    breaker = make(FakeClock(), failure_threshold=100)
    # Alternating failure/success: 50% failures, never 3 in a row.
    breaker.record_failure("5xx")
    breaker.record_success(0.1)
    breaker.record_failure("5xx")
    breaker.record_success(0.1)
    breaker.record_failure("5xx")
    assert breaker.state is BreakerState.CLOSED  # 5 calls < minimum_calls 6, though the rate is 60%
    breaker.record_success(0.1)  # 6 calls, 3 failures = 50% -> threshold reached on the next failure check
    assert breaker.state is BreakerState.CLOSED  # a success never opens
    breaker.record_failure("5xx")  # 7 calls, 4 failures = 57%
    assert breaker.state is BreakerState.OPEN


def test_failure_rate_below_threshold_stays_closed() -> None:
    breaker = make(FakeClock(), failure_threshold=100)
    for _ in range(10):
        breaker.record_success(0.1)
        breaker.record_success(0.1)
        breaker.record_failure("5xx")  # 33% < 50%
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().window_calls == 10  # the window slides


def test_open_turns_half_open_after_reset_timeout_without_mutation() -> None:
    clock = FakeClock()
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(29.9)
    assert not breaker.is_available()
    clock.advance(0.1)
    assert breaker.is_available()
    assert breaker.state is BreakerState.HALF_OPEN
    # is_available took no permit: a caller can still acquire the one probe.
    assert breaker.is_available()
    assert breaker.try_acquire()


def test_half_open_admits_a_bounded_number_of_probes() -> None:
    clock = FakeClock()
    breaker = make(clock, half_open_max_probes=2)
    open_breaker(breaker)
    clock.advance(30)
    assert breaker.try_acquire()
    assert breaker.try_acquire()
    assert not breaker.try_acquire()
    assert not breaker.is_available()


def test_probe_success_closes_and_resets_the_window() -> None:
    clock = FakeClock()
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(30)
    assert breaker.try_acquire()
    breaker.record_success(0.2)
    snap = breaker.snapshot()
    assert snap.state is BreakerState.CLOSED
    assert snap.window_calls == 0
    assert snap.consecutive_failures == 0
    assert snap.opened_at is None


def test_probe_failure_reopens_with_a_new_timeout() -> None:
    clock = FakeClock()
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(30)
    assert breaker.try_acquire()
    breaker.record_failure("timeout")
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_available() == pytest.approx(30.0)
    clock.advance(29)
    assert not breaker.is_available()
    clock.advance(1)
    assert breaker.is_available()


def test_release_returns_the_probe_permit() -> None:
    clock = FakeClock()
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(30)
    assert breaker.try_acquire()
    assert not breaker.try_acquire()
    breaker.release()  # e.g. the client cancelled: no outcome
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.try_acquire()


def test_retry_after_holds_the_breaker_open_below_the_thresholds() -> None:
    clock = FakeClock()
    breaker = make(clock)
    breaker.record_failure("429", retry_after_s=12.0)  # one failure, far from the threshold
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_available() == pytest.approx(12.0)
    clock.advance(11.9)
    assert not breaker.try_acquire()
    clock.advance(0.1)
    assert breaker.try_acquire()


def test_retry_after_longer_than_reset_timeout_wins() -> None:
    clock = FakeClock()
    breaker = make(clock)
    breaker.record_failure("5xx")
    breaker.record_failure("5xx")
    breaker.record_failure("429", retry_after_s=90.0)  # reaches the threshold too
    assert breaker.seconds_until_available() == pytest.approx(90.0)
    clock.advance(30)
    assert not breaker.is_available()


def test_retry_after_while_open_extends_the_wait() -> None:
    clock = FakeClock()
    breaker = make(clock)
    open_breaker(breaker)
    clock.advance(10)
    breaker.record_failure("429", retry_after_s=60.0)  # a straggler call comes back with Retry-After
    assert breaker.seconds_until_available() == pytest.approx(60.0)


def test_slow_success_counts_as_a_failure() -> None:
    breaker = make(FakeClock())
    breaker.record_success(5.1)
    breaker.record_success(6.0)
    assert breaker.snapshot().consecutive_failures == 2
    breaker.record_success(9.0)
    assert breaker.state is BreakerState.OPEN
    fast = make(FakeClock())
    fast.record_success(5.0)  # at the threshold: not slow
    assert fast.snapshot().consecutive_failures == 0


def test_listeners_see_every_transition_with_old_and_new_state() -> None:
    clock = FakeClock()
    breaker = make(clock)
    seen: list[tuple[str, BreakerState, BreakerState]] = []
    breaker.add_listener(lambda name, old, new: seen.append((name, old, new)))
    open_breaker(breaker)
    clock.advance(30)
    breaker.try_acquire()
    breaker.record_failure("5xx")
    clock.advance(30)
    breaker.try_acquire()
    breaker.record_success(0.1)
    assert seen == [
        ("p", BreakerState.CLOSED, BreakerState.OPEN),
        ("p", BreakerState.OPEN, BreakerState.HALF_OPEN),
        ("p", BreakerState.HALF_OPEN, BreakerState.OPEN),
        ("p", BreakerState.OPEN, BreakerState.HALF_OPEN),
        ("p", BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_a_failing_listener_does_not_break_the_breaker() -> None:
    breaker = make(FakeClock())

    def broken(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("metrics exporter down")

    breaker.add_listener(broken)
    open_breaker(breaker)
    assert breaker.state is BreakerState.OPEN


def test_snapshot_reports_wall_times_and_rates() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=100)
    breaker.record_success(0.1)
    breaker.record_failure("5xx")
    snap = breaker.snapshot()
    assert snap.window_calls == 2
    assert snap.window_failure_rate == pytest.approx(0.5)
    assert snap.half_open_at is None
    opened = make(clock)
    open_breaker(opened)
    clock.advance(10)
    snap = opened.snapshot()
    assert snap.state is BreakerState.OPEN
    assert snap.opened_at == pytest.approx(5_000.0 - 10)  # wall clock is fixed at 5000 in make()
    assert snap.half_open_at == pytest.approx(5_000.0 + 20)
    assert snap.seconds_until_half_open == pytest.approx(20.0)


def test_success_of_a_call_admitted_before_opening_does_not_close() -> None:
    breaker = make(FakeClock())
    open_breaker(breaker)
    breaker.record_success(0.1)
    assert breaker.state is BreakerState.OPEN


def test_registry_uses_per_provider_config_and_reports_earliest_availability() -> None:
    clock = FakeClock()
    slow_reset = CircuitBreakerConfig(failure_threshold=1, reset_timeout_s=100)
    fast_reset = CircuitBreakerConfig(failure_threshold=1, reset_timeout_s=20)
    configs = {"a": slow_reset, "b": fast_reset}
    registry = BreakerRegistry(lambda pid: configs.get(pid, CircuitBreakerConfig()), clock=clock)
    assert registry.is_available("a")  # no breaker yet: nothing failed
    registry.get("a").record_failure("5xx")
    registry.get("b").record_failure("5xx")
    assert not registry.is_available("a")
    assert registry.seconds_until_available(["a", "b"]) == pytest.approx(20.0)
    assert registry.seconds_until_available(["a", "never-called"]) == 0.0
    seen: list[str] = []
    registry.add_listener(lambda name, old, new: seen.append(f"{name}:{new}"))  # existing breakers too
    clock.advance(20)
    registry.get("b").try_acquire()
    registry.get("new").record_failure("5xx", retry_after_s=1.0)  # and breakers created later
    assert seen == ["b:half_open", "new:open"]


def test_registry_accepts_a_mapping_with_a_default() -> None:
    default = CircuitBreakerConfig(failure_threshold=2)
    registry = BreakerRegistry({"a": CircuitBreakerConfig(failure_threshold=1)}, default=default)
    assert registry.get("a").config.failure_threshold == 1
    assert registry.get("other").config.failure_threshold == 2


def test_a_reload_keeps_unchanged_providers_breakers_and_resets_changed_ones() -> None:
    clock = FakeClock()
    same = CircuitBreakerConfig(failure_threshold=3, reset_timeout_s=30)  # every opening 30 s
    changed = CircuitBreakerConfig(failure_threshold=5, reset_timeout_s=30)
    old = BreakerRegistry({"down": same, "flaky": same, "retuned": same}, clock=clock)
    for _ in range(3):
        old.get("down").record_failure("timeout")
        old.get("retuned").record_failure("timeout")
    old.get("flaky").record_failure("timeout")
    old.get("flaky").record_failure("timeout")
    clock.advance(10)

    transitions: list[tuple[str, BreakerState, BreakerState]] = []
    new = BreakerRegistry({"down": same, "flaky": same, "retuned": changed}, clock=clock)
    new.add_listener(lambda *change: transitions.append(change))
    new.inherit(old, ["down", "flaky", "retuned", "never-called"])

    # "retuned" has new settings, so it starts afresh (no breaker yet: closed)
    assert new.states() == {"down": BreakerState.OPEN, "flaky": BreakerState.CLOSED}
    assert transitions == []  # nothing happened to report
    assert not new.get("down").try_acquire()
    assert new.get("down").seconds_until_available() == pytest.approx(20.0)  # the same reset deadline
    new.get("flaky").record_failure("timeout")  # the third consecutive failure, counted across the reload
    assert new.states()["flaky"] is BreakerState.OPEN
    clock.advance(20)
    assert new.get("down").try_acquire()  # half-open on schedule: one probe
    assert not new.get("down").try_acquire()


def test_after_the_reset_timeout_the_next_outcome_decides_as_for_the_shared_breaker() -> None:
    """One rule set (router_service.breaker_rules): half-open is the time, not an admitted probe, so
    a straggler's outcome reported after the reset timeout decides like a probe's would."""
    clock = FakeClock()
    failed = make(clock)
    open_breaker(failed)
    clock.advance(31)
    failed.record_failure("timeout")  # a call admitted before the breaker opened, failing late
    assert failed.state is BreakerState.OPEN
    assert failed.seconds_until_available() == pytest.approx(30.0)
    recovered = make(clock)
    open_breaker(recovered)
    clock.advance(31)
    recovered.record_success(0.1)
    assert recovered.state is BreakerState.CLOSED
