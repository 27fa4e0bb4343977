"""Fakes at the network edge: real servers on loopback that tests and benchmarks script.

Names are loaded lazily so that ``python -m testkit.fake_provider`` does not import the
module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testkit.fake_provider import Behaviour, FakeProvider, RecordedRequest

__all__ = ["Behaviour", "FakeProvider", "RecordedRequest"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from testkit import fake_provider

        return getattr(fake_provider, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
