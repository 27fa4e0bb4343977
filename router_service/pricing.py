"""Prices and costs.

Where a price comes from, in order: the model's `price:` in the configuration; zero for the
in-process `local` provider (it runs on our own CPU); LiteLLM's bundled price map. Otherwise the
price is unknown (None) and stays unknown: an unknown price is never treated as $0, so a request
with a cost ceiling never lands on a model whose cost nobody knows.

The token counts a cost estimate is made from come from `router_service.tokens`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from router_service.domain import Cost, Price, Usage

if TYPE_CHECKING:
    from router_service.model_registry import ModelEntry, Registry

__all__ = [
    "PriceTable",
    "estimate_cost",
    "real_cost",
    "resolve_price",
]

PRICE_SOURCE_CONFIG = "config"
PRICE_SOURCE_LOCAL = "local"
PRICE_SOURCE_LITELLM = "litellm"
PRICE_SOURCE_UNKNOWN = "unknown"

_FREE = Price(input_per_million=0.0, output_per_million=0.0)


def resolve_price(
    provider_type: str, configured: Price | None, bundled: Price | None
) -> tuple[Price | None, str]:
    """The effective price of a model and where it came from."""
    if configured is not None:
        return configured, PRICE_SOURCE_CONFIG
    if provider_type == "local":
        return _FREE, PRICE_SOURCE_LOCAL
    if bundled is not None:
        return bundled, PRICE_SOURCE_LITELLM
    return None, PRICE_SOURCE_UNKNOWN


def estimate_cost(price: Price | None, input_tokens: int, output_tokens: int) -> float | None:
    """US dollars for the tokens (`Price.cost`), or None when the price is unknown."""
    if price is None:
        return None
    return price.cost(input_tokens, output_tokens)


def real_cost(entry: ModelEntry, usage: Usage) -> Cost:
    """The cost of a finished call from the usage the provider reported (or we counted), cache
    reads and writes and reasoning tokens priced at their own rates (`Cost.of`)."""
    return Cost.of(entry.price, usage)


class PriceTable:
    """Effective prices by model key (`provider_id/model`).

    Built from a Registry (the prices it resolved) or from a plain key -> price mapping.
    Lookups accept a key or a ModelEntry.
    """

    def __init__(self, source: Registry | Mapping[str, Price | None]) -> None:
        if isinstance(source, Mapping):
            self._prices: dict[str, Price | None] = dict(source)
        else:
            self._prices = {entry.key: entry.price for entry in source.entries}

    @classmethod
    def from_registry(cls, registry: Registry) -> PriceTable:
        return cls(registry)

    def price(self, model: str | ModelEntry) -> Price | None:
        """The model's price; None when unknown. Raises KeyError for a model not in the table."""
        return self._prices[model if isinstance(model, str) else model.key]

    def is_unknown(self, model: str | ModelEntry) -> bool:
        return self._prices.get(model if isinstance(model, str) else model.key) is None

    def estimate(self, model: str | ModelEntry, input_tokens: int, output_tokens: int) -> float | None:
        key = model if isinstance(model, str) else model.key
        return estimate_cost(self._prices.get(key), input_tokens, output_tokens)

    def real_cost(self, entry: ModelEntry, usage: Usage) -> Cost:
        """The cost of a finished call at this table's price for the entry (`Cost.of`)."""
        return Cost.of(self._prices.get(entry.key), usage)

    def __contains__(self, key: object) -> bool:
        return key in self._prices
