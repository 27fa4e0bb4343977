"""The batch sizer: texts per embedding call from measured seconds per text, with a fake clock.

Measurements are handed to `observe` as numbers, so nothing here depends on how fast the
machine is. Router timeout 30 s and call_fraction 0.25 give a budget of 7.5 s per call.
"""

from __future__ import annotations

import logging

import pytest

from embedding_service.batching import BatchSizer
from embedding_service.config import BatchingConfig
from testkit.harness import FakeClock

CPU = "local/all-minilm-l6-v2"
REMOTE = "openai/text-embedding-3-small"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sizer(clock: FakeClock) -> BatchSizer:
    return BatchSizer(BatchingConfig(initial_size=16, min_size=1, call_fraction=0.25), 30.0, clock=clock)


def call(sizer: BatchSizer, model: str | None, texts: int, seconds_per_text: float) -> None:
    sizer.observe(model, model, texts, texts * seconds_per_text)


def test_an_unknown_model_starts_with_the_initial_size_within_the_callers_limit(sizer: BatchSizer) -> None:
    assert sizer.size([CPU], 256) == 16
    assert sizer.size([CPU], 5) == 5
    assert sizer.size([None], 256) == 16


def test_sizes_grow_at_most_twofold_until_a_call_fills_the_budget(sizer: BatchSizer) -> None:
    # 256 texts in 12.8 s, as the CPU model on a small machine: 0.05 s per text, 150 fit in 7.5 s.
    sizes = []
    for _ in range(6):
        size = sizer.size([CPU], 256)
        sizes.append(size)
        call(sizer, CPU, size, 0.05)
    assert sizes == [16, 32, 64, 128, 150, 150]


def test_a_fast_model_reaches_the_callers_limit(sizer: BatchSizer) -> None:
    for _ in range(6):
        call(sizer, REMOTE, sizer.size([REMOTE], 256), 0.001)
    assert sizer.size([REMOTE], 256) == 256


def test_a_slower_call_shrinks_the_next_and_a_faster_one_grows_it_back(sizer: BatchSizer) -> None:
    for size in (16, 32, 64, 128, 150):
        call(sizer, CPU, size, 0.05)
    assert sizer.size([CPU], 256) == 150
    call(sizer, CPU, 150, 0.125)  # under load: 256 texts would take 32 s
    assert sizer.seconds_per_text(CPU) == pytest.approx(0.125)
    assert sizer.size([CPU], 256) == 60
    call(sizer, CPU, 60, 0.05)  # the load is gone
    assert sizer.size([CPU], 256) == 150


def test_a_slow_first_call_that_warmed_the_model_up_holds_sizes_down_briefly(sizer: BatchSizer) -> None:
    sizes = []
    for seconds_per_text in (0.5, 0.05, 0.05, 0.05, 0.05, 0.05):  # 8 s for the first 16 texts
        size = sizer.size([CPU], 256)
        sizes.append(size)
        call(sizer, CPU, size, seconds_per_text)
    assert sizes == [16, 15, 32, 64, 128, 150]  # growth is capped by the largest call, 16


def test_the_remaining_deadline_shrinks_calls_as_it_approaches(sizer: BatchSizer, clock: FakeClock) -> None:
    for size in (16, 32, 64, 128):
        call(sizer, CPU, size, 0.05)
    deadline = sizer.deadline(4.0)  # a quarter of 4 s is 1 s: 20 texts
    assert sizer.size([CPU], 256, deadline) == 20
    clock.advance(3.0)
    assert sizer.size([CPU], 256, deadline) == 5
    clock.advance(5.0)  # past it: the smallest call, the router call times out on its own
    assert sizer.size([CPU], 256, deadline) == 1
    assert sizer.size([CPU], 256, sizer.deadline(None)) == 150  # no deadline: the router timeout


def test_small_calls_such_as_search_queries_are_not_measured(sizer: BatchSizer) -> None:
    sizer.observe(CPU, CPU, 1, 2.0)  # a one-text query that waited behind a batch
    sizer.observe(CPU, CPU, 7, 7.0)  # an upsert of 7 documents, less than half the first call
    assert sizer.seconds_per_text(CPU) is None
    for size in (16, 32, 64, 128):
        call(sizer, CPU, size, 0.05)
    sizer.observe(CPU, CPU, 3, 3.0)
    assert sizer.size([CPU], 256) == 150


def test_a_timed_out_call_counts_as_a_lower_bound(
    sizer: BatchSizer, caplog: pytest.LogCaptureFixture
) -> None:
    for size in (16, 32, 64, 128, 150):
        call(sizer, CPU, size, 0.05)
    with caplog.at_level(logging.WARNING, logger="embedding_service.batching"):
        sizer.observe(CPU, None, 150, 30.0, timed_out=True)  # at least 0.2 s per text
    assert sizer.size([CPU], 256) == 37
    assert "timed out after 30.0s with 150 texts; later calls carry at most 37" in caplog.text
    sizer.observe(CPU, None, 150, 0.3, timed_out=True)  # a timeout never speeds the estimate up
    assert sizer.size([CPU], 256) == 37


def test_a_first_call_that_times_out_halves_and_then_sizes_by_its_time(sizer: BatchSizer) -> None:
    sizer.observe(CPU, None, 16, 30.0, timed_out=True)  # 1.875 s per text at least
    assert sizer.size([CPU], 256) == 4


def test_the_slowest_model_of_a_dual_write_sizes_the_batch(sizer: BatchSizer) -> None:
    for size in (16, 32, 64, 128, 256):
        call(sizer, REMOTE, size, 0.001)
    for size in (16, 32, 64):
        call(sizer, CPU, size, 0.05)
    assert sizer.size([REMOTE, CPU], 256) == 128
    assert sizer.size([REMOTE], 256) == 256


def test_a_call_without_a_model_teaches_both_the_default_and_the_model_that_answered(
    sizer: BatchSizer,
) -> None:
    sizer.observe(None, CPU, 16, 0.8)
    assert sizer.seconds_per_text(None) == pytest.approx(0.05)
    assert sizer.seconds_per_text(CPU) == pytest.approx(0.05)


def test_min_size_and_reconfigure(clock: FakeClock) -> None:
    sizer = BatchSizer(BatchingConfig(initial_size=8, min_size=4, call_fraction=0.5), 2.0, clock=clock)
    sizer.observe(CPU, CPU, 8, 8.0)  # 1 s per text: 1 text fits in a 1 s budget
    assert sizer.size([CPU], 256) == 4
    assert sizer.size([CPU], 3) == 3  # the caller's limit wins over the minimum
    sizer.reconfigure(BatchingConfig(initial_size=8, min_size=1, call_fraction=0.5), 20.0)
    assert sizer.size([CPU], 256) == 10  # what was measured is kept; the budget is now 10 s
