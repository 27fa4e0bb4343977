"""Test tiers: marks by directory and by fixture, so that `-m` selects a tier without every test
carrying its marks by hand.

The markers (registered in pyproject.toml):
- `e2e`: everything under tests/e2e (both services, or a service and an outside client).
- `slow`: the bench harness's own tests (they run the harness), and, marked in their modules, the
  tests that build, install or load a model.
- `redis`: a test that uses a fixture starting `redis-server`, or runs against the `redis` state
  backend. Not `subprocess`: a redis-server starts in milliseconds, and the unit tier keeps the
  tests that hold the Lua scripts to the Python rules (skipped where no redis-server is installed).
- `subprocess`: a test that starts a service process, a venv or another toolchain; marked in its
  module (`pytestmark`) or on the test, because a process started inside a test is invisible here,
  and by the fixtures below that start one.

`make test-fast` runs the unit tier: `tests/unit -m "not slow and not subprocess"`. `make test` runs
everything. This file sits at the repository root because pytest's testpaths are `tests` and
`bench/tests`, which never import each other.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

DIRECTORY_MARKS: dict[str, tuple[str, ...]] = {
    "tests/e2e": ("e2e",),
    "bench/tests": ("slow",),
}

# Fixtures that start a process: every test that asks for one (directly or through another fixture)
# gets the mark.
FIXTURE_MARKS: dict[str, tuple[str, ...]] = {
    "redis_server": ("redis",),
    "own_server": ("redis",),  # tests/unit/test_state_redis.py: a server a test may stop
    "chroma_server": ("subprocess",),  # `chroma run`
}

# Fixtures that start their process only for some parameters (they call `getfixturevalue`), so
# the parameter, not the fixture name, tells.
PARAMETER_MARKS: dict[tuple[str, str], tuple[str, ...]] = {
    ("backend", "redis"): ("redis",),  # tests/unit/test_spend.py
    ("chroma", "http"): ("subprocess",),  # tests/unit/test_embedding_store.py: the `chroma run` server
}


def tier_marks(item: pytest.Item) -> set[str]:
    """The marks this file adds to one collected test."""
    marks: set[str] = set()
    relative = Path(str(item.path)).resolve().relative_to(ROOT).as_posix()
    for directory, names in DIRECTORY_MARKS.items():
        if relative.startswith(directory + "/"):
            marks.update(names)
    for fixture in getattr(item, "fixturenames", ()):
        marks.update(FIXTURE_MARKS.get(fixture, ()))
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for name, value in callspec.params.items():
            if isinstance(value, str):
                marks.update(PARAMETER_MARKS.get((name, value), ()))
    return marks


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        present = {mark.name for mark in item.iter_markers()}
        for name in sorted(tier_marks(item) - present):
            item.add_marker(getattr(pytest.mark, name))
