"""Helpers shared by the seat, cap and limit-request tests.

Requests are priced so that the arithmetic stays readable: with `priced(stack)` every
upstream answer reports 2000 input and 500 output tokens, so a gpt-4o request costs exactly
2000 * $2.50/M + 500 * $10.00/M = $0.005 + $0.005 = $0.01 = 10_000 micro-USD and a
claude-haiku-4-5 one 2000 * $1/M + 500 * $5/M = 4_500 micro-USD.

`World` drives the meter and `Spend` without HTTP, on a config the test controls.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tollway.config import parse_config_text
from tollway.limits.apikeys import ApiKeys
from tollway.limits.credits import Credits
from tollway.limits.increases import LimitIncreases
from tollway.limits.meter import Charge, Meter
from tollway.limits.money import parse_usd
from tollway.limits.plans import Principal
from tollway.limits.spend import Spend
from tollway.limits.usage import Usage

from tests.support.stack import Stack

MODEL = "gpt-4o"
CLAUDE = "claude-haiku-4-5"
C = 10_000  # micro-USD: a cent, the cost of one priced gpt-4o request
CLAUDE_COST = 4_500


def priced(stack: Stack, input_tokens: int = 2000, output_tokens: int = 500) -> None:
    """Make every upstream answer report these token counts."""
    stack.fake.behavior.input_tokens = input_tokens
    stack.fake.behavior.output_tokens = output_tokens


def chat(stack: Stack, key: str) -> Any:
    """One chat completion through the official OpenAI SDK (raises its errors)."""
    return stack.openai(key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}]
    )


def message(stack: Stack, key: str) -> Any:
    """One message through the official Anthropic SDK (raises its errors)."""
    return stack.anthropic(key).messages.create(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Say hello"}]
    )


def mtd(stack: Stack, month: str, org: str = "acme") -> dict[str, int]:
    """The raw month-to-date hash as integers."""
    raw = stack.redis.hgetall(stack.keys.month(org, month))
    return {k: int(v) for k, v in raw.items()}


def buy(stack: Stack, amount_usd: str, org: str = "acme") -> str:
    """Buy credit for `org` (a purchased lot, valid one year) at the stack's clock; return
    the lot's id."""
    return stack.run(Credits(stack.store, stack.clock).buy(org, parse_usd(amount_usd))).id


def balance(stack: Stack, org: str = "acme") -> int:
    return int(stack.redis.hget(stack.keys.account(org), "balance") or 0)


def debits(stack: Stack, org: str = "acme") -> list[dict[str, str]]:
    """The ledger's debit events, in ledger order."""
    return stack.ledger(org, "debit")


# --- without HTTP: the meter and Spend on a config the test controls ---------------------
ENV = {"OPENAI_API_KEY": "x"}
HEAD = """
upstreams:
  openai: {base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}
prices:
  m: {input: 1, output: 1}
"""


class World:
    """A meter, a `Spend` and its `LimitIncreases` on one config that tests can swap
    (`reconfigure`)."""

    def __init__(self, store, clock, orgs: str, extra: str = "") -> None:
        self.store, self.clock = store, clock
        self.holder = SimpleNamespace(current=None)
        self.reconfigure(orgs, extra)
        self.meter = Meter(store, clock, lambda: self.holder.current)
        self.spend = Spend(store, clock, lambda: self.holder.current)
        self.increases = LimitIncreases(self.spend)
        self.apikeys = ApiKeys(store)
        self.n = 0

    def reconfigure(self, orgs: str, extra: str = "") -> None:
        self.holder.current = parse_config_text(HEAD + extra + orgs, "test.yaml", ENV)

    async def principal(self, user: str | None = None, org: str = "acme", **kw) -> Principal:
        record, _ = await self.apikeys.create(org, self.clock.now_ms(), user=user, **kw)
        return record.principal

    async def request(self, p: Principal, cost: int = C):
        """Admit one request and, when admitted, settle it at `cost`; the Decision."""
        self.n += 1
        rid = f"r{self.n}"
        d = await self.meter.admit(p, rid, "m", 1, 1)
        if d.admitted:
            await self.meter.settle(Charge(p, rid, "m", Usage(input_tokens=cost), cost, True))
        return d


async def spend_until_refused(w: World, p: Principal, limit: int = 50):
    """(admitted count, the refusing Decision)."""
    for n in range(limit):
        d = await w.request(p)
        if not d.admitted:
            return n, d
    raise AssertionError("never refused")
