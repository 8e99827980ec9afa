"""The price book: which price entry prices a model at an instant (`PriceBook.find`).

It lives with the config it is built from (`Config.price_book`), at the bottom of the
layers; the arithmetic of a price (`cost_micro`, the one rounding rule) is
`tollway.limits.prices`, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tollway.config.pricing import Price, PriceInForce

_WILDCARDS = frozenset("*?[")


def in_force(price: Price, at_ms: int) -> PriceInForce | None:
    """The version of `price` in force at `at_ms`: its latest change whose ``since`` is
    at or before it, else the price itself unless it starts later (None: not yet)."""
    for change in reversed(price.changes):
        if change.since <= at_ms:
            return change
    return price if price.since is None or price.since <= at_ms else None


def _specificity(pattern: str) -> int:
    return sum(1 for c in pattern if c not in _WILDCARDS)


class PriceBook:
    """Model name → price entry: exact names win, then aliases, then patterns (the most
    literal characters first; a tie goes to the one written first). Built once per
    config; lookups of a name are cached."""

    def __init__(self, prices: Mapping[str, Price], aliases: Mapping[str, str]) -> None:
        self._prices = prices
        self._exact = {name: p for name, p in prices.items() if not _WILDCARDS & set(name)}
        self._aliases = aliases
        patterns = [name for name in prices if _WILDCARDS & set(name)]
        # sorted() is stable: among equally specific patterns the first written stays first.
        self._patterns: Sequence[str] = sorted(patterns, key=_specificity, reverse=True)
        self._cache: dict[str, str | None] = {}

    def entry_name(self, model: str) -> str | None:
        """The key of the price book entry that prices `model` (None: no entry)."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        if model in self._exact:
            found: str | None = model
        elif model in self._aliases:
            found = self._aliases[model]
        else:
            found = next((p for p in self._patterns if fnmatchcase(model, p)), None)
        if len(self._cache) > 10_000:  # model names come from clients: keep it bounded
            self._cache.clear()
        self._cache[model] = found
        return found

    def find(self, model: str, at_ms: int) -> PriceInForce | None:
        """The price of `model` in force at `at_ms` (None: the model has no price then)."""
        name = self.entry_name(model)
        return None if name is None else in_force(self._prices[name], at_ms)
