"""How many texts one embedding call to the router carries, sized by each model's measured speed.

A fixed count does not fit every model: 256 texts take a remote API a fraction of a second,
and the in-process CPU model 12-16 s on a small machine, about 32 s under load, past the
router call's 30 s timeout. So a call is sized by time: it should take at most
`call_fraction` of the router timeout, or of the request's remaining deadline when that is
shorter.

Per model, the sizer keeps the seconds per text of the last call the service made
(`observe`), so load is felt at the next call, and so is its end (a first call that also
warmed the model up does not hold sizes down for long). A model's first call carries
`initial_size` texts; later ones as many as fit in the budget at that speed, but never more
than twice the largest call measured so far (the speed comes from smaller calls, and a model
may not scale linearly; a lucky fast call can at most double the next), never fewer than
`min_size` and never more than the caller's own maximum (`defaults.write_batch_size`, a
migration's `batch_size`).

Calls much smaller than the size the sizer would choose (a search's one-text query, a small
upsert) say little about a big call, whose time is mostly per text rather than per call, so
they are not measured. A call that ran into its deadline is measured as a lower bound: it
only ever slows the estimate down.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from embedding_service.config import BatchingConfig

_log = logging.getLogger(__name__)


@dataclass
class _Speed:
    seconds_per_text: float
    largest_call: int  # texts in the largest call measured


class BatchSizer:
    """Texts per embedding call for each model, from measured seconds per text."""

    def __init__(
        self, config: BatchingConfig, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._timeout_s = timeout_s
        self._clock = clock
        self._speeds: dict[str, _Speed] = {}

    def reconfigure(self, config: BatchingConfig, timeout_s: float) -> None:
        """New settings (a config reload); what was measured is kept."""
        self._config = config
        self._timeout_s = timeout_s

    def deadline(self, remaining_s: float | None) -> float | None:
        """The absolute time, on this sizer's clock, of a deadline `remaining_s` from now."""
        return None if remaining_s is None else self._clock() + remaining_s

    def size(self, models: Sequence[str | None], limit: int, deadline: float | None = None) -> int:
        """Texts for the next call to each of `models` (the smallest of their sizes), at most `limit`.

        `deadline` (from `deadline()`) is when the request must be done, None when it has none.
        """
        budget = self.budget(deadline)
        chosen = min((self._size_for(model, budget) for model in models), default=self._config.initial_size)
        return max(1, min(limit, max(self._config.min_size, chosen)))

    def budget(self, deadline: float | None = None) -> float:
        """Seconds one call may take: a share of the router timeout or of the time left."""
        available = self._timeout_s
        if deadline is not None:
            available = min(available, max(0.0, deadline - self._clock()))
        return self._config.call_fraction * available

    def _size_for(self, model: str | None, budget: float) -> int:
        speed = self._speeds.get(_key(model))
        return self._config.initial_size if speed is None else _fit(speed, budget)

    def seconds_per_text(self, model: str | None) -> float | None:
        """The speed sizes are chosen by for `model`, None before its first measured call."""
        speed = self._speeds.get(_key(model))
        return None if speed is None else speed.seconds_per_text

    def observe(
        self, requested: str | None, served: str | None, texts: int, seconds: float, timed_out: bool = False
    ) -> None:
        """A call of `texts` texts for model `requested` (answered by `served`) took `seconds`.

        `timed_out`: the call ran into its deadline, so `seconds` is a lower bound.
        """
        if texts < 1 or seconds < 0:
            return
        keys = {_key(requested)} | ({_key(served)} if served else set())
        for key in keys:
            self._measure(key, texts, seconds, timed_out)

    def _measure(self, key: str, texts: int, seconds: float, timed_out: bool) -> None:
        speed = self._speeds.get(key)
        usual = self._config.initial_size if speed is None else _fit(speed, self.budget())
        if not timed_out and 2 * texts < usual:
            return  # too small a call to tell how long a full one takes
        measured = seconds / texts
        if speed is None:
            # A timed-out call took longer than measured: its size is not known to fit, half of it may.
            speed = self._speeds[key] = _Speed(measured, max(1, texts // 2) if timed_out else texts)
        elif not timed_out or measured > speed.seconds_per_text:
            speed.seconds_per_text = measured
        if not timed_out:
            speed.largest_call = max(speed.largest_call, texts)
            return
        _log.warning(
            "embedding call to %s timed out after %.1fs with %d texts; later calls carry at most %d",
            key or "the router's default model",
            seconds,
            texts,
            _fit(speed, self.budget()),
        )


def _fit(speed: _Speed, budget: float) -> int:
    """Texts that fit in `budget` seconds at `speed`, at most twice the largest call measured."""
    growth_cap = 2 * speed.largest_call
    if speed.seconds_per_text <= 0:
        return growth_cap
    return min(math.floor(budget / speed.seconds_per_text), growth_cap)


def _key(model: str | None) -> str:
    # "" stands for the router's choice; a model name never is empty.
    return model or ""
