"""The price book's shape: per model (or pattern) token prices, their variants and dates.

YAML (USD per million tokens; tool fees in USD per request)::

    prices:
      claude-opus-4-*:                 # a pattern: * and ? as in shell globs
        input: 5.00
        output: 25.00
        cache_write: 6.25              # 5-minute cache writes (OpenAI: the default TTL)
        cache_write_1h: 10.00          # 1-hour cache writes (OpenAI: 12-hour ones)
        cache_read: 0.50
        long_context:                  # other prices when the input is above N tokens
          - {above: 200000, input: 10.00, output: 37.50, cache_write: 12.50, cache_read: 1.00}
        tiers:                         # the service tier the upstream reports it used
          batch: {input: 2.50, output: 12.50, cache_read: 0.25}
          priority: {input: 8.75, output: 43.75, cache_read: 0.875}
        tools: {web_search: 0.01}      # per server-side tool request
        changes:                       # later prices, each in force from its instant on
          - {since: 2027-01-01T00:00:00Z, input: 4.00, output: 20.00}
    price_aliases:
      sonnet: claude-sonnet-4-*        # a model name priced as another entry of the book

Defaults: ``cache_write`` and ``cache_read`` default to ``input`` (never free),
``cache_write_1h`` to ``cache_write``. Tier and long-context blocks are whole prices of
their own (the same defaults apply inside them). A tier may have long-context prices of
its own; the base long-context prices apply to the base tier only.

How a request is priced (``tollway.limits.prices``): the entry is found by exact name,
then by alias, then by the most specific matching pattern (most literal characters; a
tie goes to the one written first); ``*`` alone is the default. The price in force is
the entry itself, or its latest change whose ``since`` is at or before the instant the
request was admitted.

The loader refuses a price whose largest single-request cost (every token count at the
``metering.max_tokens_per_request`` ceiling, every tool at ``max_tool_requests``) is
above 2^53 micro-USD: money beyond it is not exact in a double (Lua, JSON readers).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator
from tollway.config.money import format_usd
from tollway.config.values import FrozenModel, ModelMap, ModelName, Money, PositiveInt, fail

MAX_EXACT = 2**53
"""The largest amount (micro-USD) every layer holds exactly (a double's integer range)."""

TierName = Literal["priority", "flex", "scale", "fast", "batch"]
ToolName = Literal["web_search", "web_fetch", "file_search"]
K = TypeVar("K")
V = TypeVar("V")
ReadOnly = Annotated[Mapping[K, V], AfterValidator(MappingProxyType)]


def _one_or_many(value: Any) -> Any:
    """A single mapping where a list is expected is a list of one."""
    return [value] if isinstance(value, Mapping) else value


def _instant(value: Any) -> int:
    """A YAML date (midnight UTC) or timestamp (UTC when it has no zone) → epoch ms."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected a date or an ISO 8601 time, got {value!r}") from None
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        return int(aware.timestamp() * 1000)
    if isinstance(value, dt.date):
        midnight = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
        return int(midnight.timestamp()) * 1000
    raise ValueError("expected a date or an ISO 8601 time")


Instant = Annotated[
    int,
    BeforeValidator(_instant),
    WithJsonSchema({"type": "string", "description": "date or ISO 8601 time (UTC)"}),
]


def _default(*names: str) -> Any:
    """A default taken from the first of `names` present in the already validated data."""

    def factory(data: dict[str, Any]) -> int:
        for name in names:
            if name in data:
                return int(data[name])
        return 0

    return Field(default_factory=factory)


class Rates(FrozenModel):
    """Integer micro-USD per million tokens once loaded (USD per million in YAML)."""

    input: Money
    output: Money
    cache_write: Money = _default("input")
    """Cache writes with the short TTL (Anthropic 5 minutes; OpenAI's default)."""
    cache_write_1h: Money = _default("cache_write", "input")
    """Cache writes with the long TTL (Anthropic 1 hour; OpenAI 12 hours)."""
    cache_read: Money = _default("input")

    @property
    def highest(self) -> tuple[str, int]:
        """(field, price) of the most expensive token kind of this block."""
        kinds = ("input", "output", "cache_write", "cache_write_1h", "cache_read")
        return max(((k, getattr(self, k)) for k in kinds), key=lambda kv: kv[1])

    def per_token_sum(self) -> int:
        """An upper bound of the price of one token of each disjoint kind (input, output,
        either cache write, cache read): the cost of a request with every count at N is
        at most N times this."""
        return (
            self.input
            + self.output
            + max(self.cache_write, self.cache_write_1h)
            + (self.cache_read)
        )


class LongContext(Rates):
    above: PositiveInt
    """These prices apply when the request's input (uncached, cache writes and cache
    reads together) is above this many tokens."""


LongContexts = Annotated[tuple[LongContext, ...], BeforeValidator(_one_or_many)]


class TierPrice(Rates):
    long_context: LongContexts = ()
    """Long-context prices, by ascending ``above``; the highest one exceeded applies."""

    @model_validator(mode="after")
    def _ascending(self) -> TierPrice:
        for i in range(1, len(self.long_context)):
            if self.long_context[i].above <= self.long_context[i - 1].above:
                prev = self.long_context[i - 1].above
                message = f"must be greater than the previous tier's above ({prev})"
                fail("Price", (("long_context", i, "above"), message, self.long_context[i].above))
        return self

    def blocks(self) -> list[tuple[tuple[str | int, ...], Rates]]:
        """This price and its long-context prices, each with its relative key path."""
        out: list[tuple[tuple[str | int, ...], Rates]] = [((), self)]
        out += [(("long_context", i), lc) for i, lc in enumerate(self.long_context)]
        return out


class PriceChange(TierPrice):
    since: Instant
    """The instant (UTC) from which this price applies."""
    tiers: ReadOnly[TierName, TierPrice] = Field(default_factory=dict)
    tools: ReadOnly[ToolName, Money] = Field(default_factory=dict)
    """USD per server-side tool request (web search...)."""


class Price(TierPrice):
    """One entry of the price book (see the module docstring)."""

    since: Instant | None = None
    """The instant (UTC) from which this price applies; null: always (before its changes)."""
    tiers: ReadOnly[TierName, TierPrice] = Field(default_factory=dict)
    """Prices of the service tiers the upstream may report (priority, flex, batch...);
    standard/default/auto and an unlisted tier are priced at the base prices."""
    tools: ReadOnly[ToolName, Money] = Field(default_factory=dict)
    """USD per server-side tool request (web search...)."""
    changes: tuple[PriceChange, ...] = ()
    """Later prices, by ascending ``since``: each applies from its instant on."""

    @model_validator(mode="after")
    def _dates(self) -> Price:
        previous = self.since
        for i, change in enumerate(self.changes):
            if previous is not None and change.since <= previous:
                message = "must be later than the price before it"
                fail("Price", (("changes", i, "since"), message, change.since))
            previous = change.since
        return self

    def versions(self) -> list[tuple[tuple[str | int, ...], PriceChange | Price]]:
        """This price and its changes, each with its relative key path."""
        return [((), self), *((("changes", i), c) for i, c in enumerate(self.changes))]


# A price book entry as in force at an instant (`PriceBook.find`): the entry or one of
# its changes.
PriceInForce = Price | PriceChange


PriceAliases = ModelMap[ModelName]


def worst_case(
    price: Price | PriceChange, max_tokens: int, max_tools: int
) -> tuple[int, tuple[str | int, ...]]:
    """(the largest single-request cost in micro-USD, rounded up; the key path of the
    most expensive price in it) of one version of a price."""
    blocks = price.blocks()
    for name, tier in price.tiers.items():
        blocks += [(("tiers", name, *path), rates) for path, rates in tier.blocks()]
    path, rates = max(blocks, key=lambda b: b[1].per_token_sum())
    tools = sum(price.tools.values()) * max_tools
    exact = rates.per_token_sum() * max_tokens + tools * 1_000_000
    worst = -(-exact // 1_000_000)
    if tools * 1_000_000 > rates.per_token_sum() * max_tokens:
        fee_name = max(price.tools, key=lambda t: price.tools[t])
        return worst, ("tools", fee_name)
    return worst, (*path, rates.highest[0])


def check_prices(
    prices: Mapping[str, Price],
    aliases: Mapping[str, str],
    max_tokens: int,
    max_tools: int,
) -> list[tuple[tuple[str | int, ...], str, Any]]:
    """Errors (loc from the config root, message, value) of a price book: a price whose
    largest single-request cost cannot be represented exactly; an alias of no entry."""
    errors: list[tuple[tuple[str | int, ...], str, Any]] = []
    for model, price in prices.items():
        for vpath, version in price.versions():
            worst, path = worst_case(version, max_tokens, max_tools)
            if worst > MAX_EXACT:
                message = (
                    f"the largest single-request cost at this price, {format_usd(worst)} USD "
                    "(every count at metering.max_tokens_per_request, every tool at "
                    "metering.max_tool_requests), is above 2^53 micro-USD: it cannot be "
                    "counted exactly"
                )
                errors.append((("prices", model, *vpath, *path), message, None))
    for alias, target in aliases.items():
        if target not in prices:
            known = ", ".join(sorted(prices)) or "none defined"
            message = f"unknown price entry {target!r} (known: {known})"
            errors.append((("price_aliases", alias), message, target))
    return errors
