"""Prices and the one rounding rule for money.

Prices are integer micro-USD per million tokens (``0.15`` USD/M → ``150_000``). The cost of
a request is computed exactly, in units of 10⁻⁶ micro-USD, as the sum over its four token
kinds, and rounded ONCE, half up, to an integer number of micro-USD. Nowhere else in
Tollway is money rounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tollway.limits.errors import UnknownPrice
from tollway.limits.usage import Usage

PER_MILLION = 1_000_000


class Price(Protocol):
    input: int
    output: int
    cache_write: int
    cache_read: int


def round_micro(exact: int) -> int:
    """The rounding rule: an amount in 10⁻⁶ micro-USD → micro-USD, half up."""
    return (exact + PER_MILLION // 2) // PER_MILLION


def cost_micro(price: Price, usage: Usage) -> int:
    """Cost of `usage` at `price`, in integer micro-USD."""
    exact = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_write_tokens * price.cache_write
        + usage.cache_read_tokens * price.cache_read
    )
    return round_micro(exact)


def price_for(prices: Mapping[str, Price], model: str) -> Price:
    """The price of `model`, matched exactly; `UnknownPrice` when it has none."""
    try:
        return prices[model]
    except KeyError:
        raise UnknownPrice(model) from None
