"""Every usage field the providers report is charged what the provider bills, to the
micro-USD: cache writes (5-minute and 1-hour / OpenAI 12-hour), cache reads, reasoning,
server tool requests, service tiers and long-context prices, on every route and in JSON
and streams, through the official SDKs. An absurd report is charged the ceiling, flagged.

The expected bill is computed here from the provider's published rules (tokens times USD per
million of the tier and context size the answer used, plus a fee per tool request, one
rounding per request), not with Tollway's `cost_micro`."""

from __future__ import annotations

from fractions import Fraction

import pytest

HELLO = [{"role": "user", "content": "Say hello"}]

# The stack's prices (tests/support/stack.py), USD per million tokens.
GPT5 = {
    None: {"in": "1.25", "out": "10", "cw": "1.50", "cw1h": "2", "cr": "0.125"},
    "priority": {"in": "2.50", "out": "20", "cw": "3", "cw1h": "4", "cr": "0.25"},
    "flex": {"in": "0.625", "out": "5", "cw": "0.625", "cw1h": "0.625", "cr": "0.0625"},
}
GPT5_TOOLS = {"web_search": "0.01", "file_search": "0.0025"}
OPUS = {
    None: {"in": "5", "out": "25", "cw": "6.25", "cw1h": "10", "cr": "0.50"},
    "long": {"in": "10", "out": "37.50", "cw": "12.50", "cw1h": "20", "cr": "1"},
    "batch": {"in": "2.50", "out": "12.50", "cw": "3.125", "cw1h": "5", "cr": "0.25"},
    "fast": {"in": "30", "out": "150", "cw": "37.50", "cw1h": "60", "cr": "3"},
}
OPUS_TOOLS = {"web_search": "0.01", "web_fetch": "0.001"}


def provider_bill(rec: dict, rates: dict, tools: dict) -> int:
    """What the provider bills for one answer as the fake upstream reported it, micro-USD,
    rounded once, half up."""
    short = rec["cache_write_tokens"] - rec["cache_write_1h_tokens"]
    usd = (
        rec["input_tokens"] * Fraction(rates["in"])
        + rec["output_tokens"] * Fraction(rates["out"])
        + short * Fraction(rates["cw"])
        + rec["cache_write_1h_tokens"] * Fraction(rates["cw1h"])
        + rec["cache_read_tokens"] * Fraction(rates["cr"])
    ) / 1_000_000
    for tool, fee in tools.items():
        usd += rec.get(f"{tool}_requests", 0) * Fraction(fee)
    micro = usd * 1_000_000
    return int(micro + Fraction(1, 2))  # half up


def charged(stack) -> int:
    stack.wait_settled()
    return stack.day()["org|cost"]


def setup(stack, **fields) -> None:
    b = stack.fake.behavior
    for name, value in fields.items():
        setattr(b, name, value)


FIELDS = {
    "input_tokens": 1200,
    "output_tokens": 900,
    "cache_write_tokens": 3000,
    "cache_write_1h_tokens": 1000,
    "cache_read_tokens": 5000,
    "reasoning_tokens": 700,
}


@pytest.mark.parametrize("tier", [None, "priority", "flex"])
@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_every_field_and_tier(stack, stream: bool, tier: str | None) -> None:
    # Chat Completions reports no TTL split: every write is priced as a short-TTL one.
    setup(stack, **{**FIELDS, "cache_write_1h_tokens": 0}, service_tier=tier)
    client = stack.openai(stack.key())
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-5.1", messages=HELLO, stream=True))
        assert chunks[-1].service_tier == (tier or "default")
    else:
        reply = client.chat.completions.create(model="gpt-5.1", messages=HELLO)
        assert reply.usage.completion_tokens_details.reasoning_tokens == 700
    rec = stack.fake.responses[-1]
    assert rec["completed"]
    assert charged(stack) == provider_bill(rec, GPT5[tier], {})


@pytest.mark.parametrize("stream", [False, True])
def test_openai_responses_long_ttl_writes_and_tool_calls(stack, stream: bool) -> None:
    setup(stack, **FIELDS, web_search_requests=3, service_tier="priority")
    client = stack.openai(stack.key())
    if stream:
        events = list(client.responses.create(model="gpt-5.1", input="Say hello", stream=True))
        final = events[-1].response
    else:
        final = client.responses.create(model="gpt-5.1", input="Say hello")
    assert [i.type for i in final.output].count("web_search_call") == 3
    assert final.usage.input_tokens_details.cache_write_tokens == 3000
    rec = stack.fake.responses[-1]
    bill = provider_bill(rec, GPT5["priority"], GPT5_TOOLS)
    assert bill == provider_bill(rec, GPT5["priority"], {}) + 3 * 10_000  # 3 searches
    assert charged(stack) == bill


@pytest.mark.parametrize("tier", [None, "batch", "fast"])
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_every_field_and_tier(stack, stream: bool, tier: str | None) -> None:
    setup(stack, **FIELDS, web_search_requests=2, web_fetch_requests=4, service_tier=tier)
    if tier == "fast":  # Anthropic reports fast mode as usage.speed, tier "standard"
        setup(stack, service_tier=None)
        stack.fake.behavior.speed = "fast"
    client = stack.anthropic(stack.key())
    kw = {"model": "claude-opus-4-8", "max_tokens": 4096, "messages": HELLO}
    if stream:
        with client.messages.stream(**kw) as s:
            final = s.get_final_message()
    else:
        final = client.messages.create(**kw)
    assert final.usage.server_tool_use.web_search_requests == 2
    assert final.usage.cache_creation.ephemeral_1h_input_tokens == 1000
    rec = stack.fake.responses[-1]
    assert charged(stack) == provider_bill(rec, OPUS[tier], OPUS_TOOLS)


def test_anthropic_long_context_prices_the_whole_request(stack) -> None:
    # 150k uncached + 30k writes + 25k reads = 205k input tokens: above 200k.
    setup(stack, input_tokens=150_000, cache_write_tokens=30_000, cache_read_tokens=25_000)
    client = stack.anthropic(stack.key())
    client.messages.create(model="claude-opus-4-8", max_tokens=1024, messages=HELLO)
    rec = stack.fake.responses[-1]
    assert charged(stack) == provider_bill(rec, OPUS["long"], {})


def test_absurd_usage_is_charged_the_ceiling_and_flagged(stack) -> None:
    setup(stack, input_tokens=50_000_000_000)  # 50 billion: a broken upstream
    client = stack.openai(stack.key())
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    ceiling = stack.holder.current.metering.max_tokens_per_request
    rec = dict(stack.fake.responses[-1], input_tokens=ceiling)
    rates = {"in": "0.15", "out": "0.60", "cw": "0.15", "cw1h": "0.15", "cr": "0.075"}
    assert charged(stack) == provider_bill(rec, rates, {}) > 1_000_000
    flags = stack.ledger("acme", "absurd_usage")
    assert len(flags) == 1 and flags[0]["input_tokens"] == "50000000000"
    assert stack.metrics.absurd_usage.labels("acme")._value.get() == 1


DATED = """
prices:
  gpt-5*:
    input: 1.00
    output: 10.00
    changes:
      - {since: "2026-01-01T00:00:10Z", input: 2.00, output: 20.00}
"""


def test_a_request_pays_the_price_in_force_when_it_was_admitted(stack_factory) -> None:
    stack = stack_factory(prices_yaml=DATED)  # the stack's clock starts at 2026-01-01T00:00Z
    b = stack.fake.behavior
    b.input_tokens, b.output_tokens = 1000, 100
    b.pause_after_chunks = 1  # admitted, answering, then paused across the price change
    client = stack.openai(stack.key())
    stream = client.chat.completions.create(model="gpt-5.1", messages=HELLO, stream=True)
    next(iter(stream))
    stack.clock.advance(seconds=60)  # the new price is in force before the answer ends
    stack.fake.release()
    list(stream)
    old = charged(stack)
    assert old == 1000 * 1 + 100 * 10  # micro-USD at the admission-time price
    client.chat.completions.create(model="gpt-5.1", messages=HELLO)
    assert charged(stack) - old == 1000 * 2 + 100 * 20  # admitted after the change
