"""The price book and the one rounding rule for money.

Prices are integer micro-USD per million tokens (``0.15`` USD/M → ``150_000``); tool fees
are integer micro-USD per request. The cost of a request is computed exactly, in units of
10⁻⁶ micro-USD, as the sum over its token kinds and tool requests, and rounded ONCE, half
up, to an integer number of micro-USD. Nowhere else in Tollway is money rounded.

Which prices apply (the shape is ``tollway.config.pricing``):

1. `PriceBook.find(model, at_ms)`: the entry named exactly, else the alias's entry, else
   the most specific matching pattern; then the version in force at ``at_ms`` (the
   request's admission). None: the model has no price (it is refused, never free).
2. `cost_micro(price, usage)`: the block of the tier the upstream reported (the base
   block for the standard tier or a tier the entry does not price), then the highest
   long-context block whose ``above`` the whole input exceeds; every token and tool
   request of the request is priced from that one block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, Protocol

from tollway.limits.money import div_half_up
from tollway.limits.usage import Usage

PER_MILLION = 1_000_000
_WILDCARDS = frozenset("*?[")


class Rates(Protocol):
    input: int
    output: int
    cache_write: int
    cache_read: int


def round_micro(exact: int) -> int:
    """The rounding rule: an amount in 10⁻⁶ micro-USD → micro-USD, half up."""
    return div_half_up(exact, PER_MILLION)


def rates_for(price: Any, usage: Usage) -> Any:
    """The block of `price` that prices `usage`: its tier's, then its long-context one."""
    tiers = getattr(price, "tiers", None) or {}
    block = tiers.get(usage.tier, price) if usage.tier is not None else price
    chosen = block
    for lc in getattr(block, "long_context", ()):
        if usage.prompt_tokens > lc.above:
            chosen = lc
    return chosen


def cost_micro(price: Any, usage: Usage) -> int:
    """Cost of `usage` at `price` (a config ``Price`` or any object with the four token
    prices of `Rates`), in integer micro-USD."""
    r = rates_for(price, usage)
    long_ttl = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
    exact = (
        usage.input_tokens * r.input
        + usage.output_tokens * r.output
        + (usage.cache_write_tokens - long_ttl) * r.cache_write
        + long_ttl * getattr(r, "cache_write_1h", r.cache_write)
        + usage.cache_read_tokens * r.cache_read
    )
    fees = getattr(price, "tools", None)
    if fees:
        for tool, n in usage.tool_requests().items():
            exact += n * fees.get(tool, 0) * PER_MILLION
    return round_micro(exact)


def in_force(price: Any, at_ms: int) -> Any | None:
    """The version of `price` in force at `at_ms`: its latest change whose ``since`` is
    at or before it, else the price itself unless it starts later (None: not yet)."""
    for change in reversed(getattr(price, "changes", ())):
        if change.since <= at_ms:
            return change
    since = getattr(price, "since", None)
    return price if since is None or since <= at_ms else None


def _specificity(pattern: str) -> int:
    return sum(1 for c in pattern if c not in _WILDCARDS)


class PriceBook:
    """Model name → price entry: exact names win, then aliases, then patterns (the most
    literal characters first; a tie goes to the one written first). Built once per
    config; lookups of a name are cached."""

    def __init__(self, prices: Mapping[str, Any], aliases: Mapping[str, str]) -> None:
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

    def find(self, model: str, at_ms: int) -> Any | None:
        """The price of `model` in force at `at_ms` (None: the model has no price then)."""
        name = self.entry_name(model)
        return None if name is None else in_force(self._prices[name], at_ms)
