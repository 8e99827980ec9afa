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

from typing import Protocol

from tollway.config.pricebook import PriceBook as PriceBook
from tollway.config.pricebook import in_force as in_force
from tollway.limits.money import div_half_up
from tollway.limits.usage import Usage

PER_MILLION = 1_000_000


class Rates(Protocol):
    input: int
    output: int
    cache_write: int
    cache_read: int


def round_micro(exact: int) -> int:
    """The rounding rule: an amount in 10⁻⁶ micro-USD → micro-USD, half up."""
    return div_half_up(exact, PER_MILLION)


def rates_for(price: Rates, usage: Usage) -> Rates:
    """The block of `price` that prices `usage`: its tier's, then its long-context one."""
    tiers = getattr(price, "tiers", None) or {}
    block = tiers.get(usage.tier, price) if usage.tier is not None else price
    chosen = block
    for lc in getattr(block, "long_context", ()):
        if usage.prompt_tokens > lc.above:
            chosen = lc
    return chosen


def cost_micro(price: Rates, usage: Usage) -> int:
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
