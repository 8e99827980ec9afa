"""Bounded overshoot under concurrency (#12): 200 simultaneous requests from the official
async OpenAI SDK against every kind of money limit. Admission holds each request's
expected cost, so a burst is stopped by money, not by client concurrency: spend stays
within one request of the limit (docs/spend.md).

Every request here costs exactly `cost` micro-USD: the fake upstream reports the proxy's
own input estimate as the input tokens (exact estimates) and OUT output tokens.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from tollway.limits.credits import Credits
from tollway.limits.meter import periods
from tollway.limits.prices import cost_micro
from tollway.limits.spend import Spend
from tollway.limits.usage import Usage
from tollway.proxy.runtime.app import COUNTER

from tests.support.stack import Stack

CAP = 50_000  # $0.05
OUT = 100
MODEL = "gpt-4o"
MESSAGES = [{"role": "user", "content": "hello " * 200}]

CAPS = {  # level: (YAML, key, the cap's name in refusals, the cap's month field)
    "organization": ("spend_caps: {monthly: 0.05}", {}, "organization monthly", "extra:org"),
    "workspace": (
        "workspaces:\n      research: {spend_caps: {monthly: 0.05}}",
        {"workspace": "research"},
        "workspace 'research'",
        "extra:ws=research",
    ),
    "user": (
        "users:\n      alice: {monthly_cap: 0.05}",
        {"user": "alice"},
        "user 'alice'",
        "extra:user=alice",
    ),
    "seat tier": (
        "extra_usage: {enabled: true}\n    seat_tiers:\n"
        "      standard: {included: 0, monthly_cap: 0.05}\n"
        "    users:\n      bob: {seat: standard}",
        {"user": "bob"},
        "seat tier 'standard'",
        "extra:user=bob",
    ),
}


def org_yaml(body: str, mode: str = "postpaid") -> str:
    return f"organizations:\n  acme:\n    billing: {{mode: {mode}}}\n    {body}\n"


def exact(stack: Stack) -> int:
    """Make the upstream report exactly the proxy's estimate; the cost of one request."""
    est = stack.app[COUNTER].estimate_request(
        {"model": MODEL, "messages": MESSAGES}, "/v1/chat/completions"
    )
    stack.fake.behavior.input_tokens, stack.fake.behavior.output_tokens = est, OUT
    return cost_micro(stack.holder.current.prices[MODEL], Usage(est, OUT))


def burst(stack: Stack, key: str, n: int = 200, **kw: Any) -> tuple[list[Any], list[Any]]:
    """`n` chat requests issued at once through one async client: (served, refused)."""

    async def go() -> list[Any]:
        client = stack.async_openai(key, timeout=60)
        try:
            calls = (
                client.chat.completions.create(model=MODEL, messages=MESSAGES, **kw)
                for _ in range(n)
            )
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    results = stack.run(go())
    stack.wait_settled()
    served = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(served) + len(refused) == n, [r for r in results if isinstance(r, Exception)][:3]
    return served, refused


def spend(stack: Stack) -> Spend:
    return Spend(stack.store, stack.clock, lambda: stack.holder.current)


def month(stack: Stack) -> dict[str, int]:
    label = periods(stack.clock.now_ms(), stack.holder.current.server.tzinfo)[0]
    raw = stack.redis.hgetall(stack.keys.month("acme", label))
    return {k: int(v) for k, v in raw.items()}


@pytest.mark.parametrize("level", list(CAPS))
def test_a_burst_against_a_cap_overshoots_by_at_most_one_request(stack_factory, level):
    body, who, label, field = CAPS[level]
    stack = stack_factory(org_yaml(body))
    cost = exact(stack)
    served, refused = burst(stack, stack.key(**who), max_tokens=OUT)
    spent = month(stack)["spend:org"]
    assert spent == len(served) * cost
    assert spent <= CAP + cost
    # Exact holds: every request that fitted under the cap was admitted.
    assert len(served) >= CAP // cost
    assert refused and all(label in r.body["message"] for r in refused)
    assert all(r.code == "insufficient_quota" for r in refused)
    assert stack.redis.hgetall(stack.keys.held("acme")) == {}  # every hold given back
    # The overshoot is visible: one request crossed the cap, by this much.
    mtd = stack.run(spend(stack).month_to_date("acme"))
    assert mtd["overshoot"] == {field: spent - CAP} and mtd["held"] == {}


def test_held_amounts_are_visible_while_requests_are_in_flight(stack_factory):
    stack = stack_factory(org_yaml("", mode="prepaid"))
    credits = Credits(stack.store, stack.clock)
    stack.run(credits.buy("acme", CAP))
    cost = exact(stack)
    key = stack.key()
    stack.fake.behavior.pause_after_chunks = 0  # answers wait for release()

    async def go() -> None:
        client = stack.async_openai(key, timeout=60)
        try:

            async def one() -> None:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=OUT, stream=True
                )
                async for _ in stream:
                    pass

            tasks = [asyncio.ensure_future(one()) for _ in range(3)]
            for _ in range(500):  # bounded: the three reach the upstream at once
                if len(stack.fake.requests) == 3:
                    break
                await asyncio.sleep(0.01)
            b = await credits.balance("acme")
            assert (b.held, b.available) == (3 * cost, CAP - 3 * cost)
            held = (await spend(stack).month_to_date("acme"))["held"]
            assert held["extra:org"] == 3 * cost
            stack.fake.release()
            await asyncio.gather(*tasks)
        finally:
            await client.close()

    stack.run(go())
    stack.wait_settled()
    b = stack.run(credits.balance("acme"))
    assert (b.held, b.lots_total) == (0, CAP - 3 * cost)
    assert stack.run(spend(stack).month_to_date("acme"))["held"] == {}


def test_included_usage_without_extra_usage_is_never_crossed_by_a_burst(stack_factory):
    stack = stack_factory(
        org_yaml(
            "extra_usage: {enabled: false}\n    seat_tiers:\n"
            "      standard: {included: 0.05}\n    users:\n      carol: {seat: standard}"
        )
    )
    cost = exact(stack)
    served, refused = burst(stack, stack.key(user="carol"), max_tokens=OUT)
    m = month(stack)
    assert m["spend:user=carol"] == len(served) * cost <= CAP + cost
    assert len(served) >= CAP // cost - 1  # held like a cap: no false refusal
    assert m.get("extra:user=carol", 0) == 0 and m.get("extra:org", 0) == 0
    assert refused and all("included in your seat" in r.body["message"] for r in refused)


def test_a_prepaid_balance_ends_at_most_one_request_in_debt(stack_factory):
    stack = stack_factory(org_yaml("", mode="prepaid"))
    credits = Credits(stack.store, stack.clock)
    stack.run(credits.buy("acme", CAP))
    cost = exact(stack)
    served, refused = burst(stack, stack.key(), max_tokens=OUT)
    b = stack.run(credits.balance("acme"))
    assert b.lots_total - b.debt == CAP - len(served) * cost
    assert b.lots_total - b.debt >= -cost
    assert b.held == 0
    assert refused and all(r.code == "insufficient_quota" for r in refused)


def test_no_false_refusals_once_the_output_is_learned(stack_factory):
    """Claude Code declares a 32k-64k output maximum on every request: holding it would
    refuse a team whose real spend is far below its cap. Once settlements taught the
    organization's real output on the model, a burst whose real total stays 20 % under
    the cap is admitted whole."""
    stack = stack_factory(org_yaml(CAPS["organization"][0]))
    cost = exact(stack)
    key = stack.key()
    warm, refused = burst(stack, key, n=3, max_tokens=64000)
    assert len(warm) == 3 and not refused
    n = (CAP * 8 // 10) // cost - 3
    served, refused = burst(stack, key, n=n, max_tokens=64000)
    assert len(served) == n and not refused
    assert month(stack)["spend:org"] == (n + 3) * cost <= CAP * 8 // 10


def test_max_in_flight_bounds_the_requests_out_at_once(stack_factory):
    stack = stack_factory(
        "organizations:\n  acme:\n    users:\n      alice: {limits: {max_in_flight: 2}}\n"
    )
    exact(stack)
    key = stack.key(user="alice")
    stack.fake.behavior.pause_after_chunks = 0  # answers wait for release()

    async def go() -> list[Any]:
        client = stack.async_openai(key, timeout=60)

        async def one() -> bool:
            try:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, stream=True
                )
            except openai.RateLimitError as e:
                assert "max_in_flight of user=alice" in e.body["message"]
                return False
            async for _ in stream:
                pass
            return True

        try:
            tasks = [asyncio.ensure_future(one()) for _ in range(6)]
            for _ in range(2000):  # bounded: four refusals come back at once, and the two
                # admitted reach the upstream (which may come after the refusals: the six
                # admissions share one round trip, then only two of them are forwarded)
                if sum(t.done() for t in tasks) == 4 and len(stack.fake.requests) == 2:
                    break
                await asyncio.sleep(0.01)
            assert sum(t.done() for t in tasks) == 4 and len(stack.fake.requests) == 2
            stack.fake.release()
            return await asyncio.gather(*tasks)
        finally:
            await client.close()

    assert sorted(stack.run(go())) == [False] * 4 + [True] * 2
    stack.wait_settled()
    assert stack.redis.hgetall(stack.keys.held("acme")) == {}
    stack.fake.behavior.pause_after_chunks = None
    assert burst(stack, key, n=1)[0]  # the ceiling is free again
