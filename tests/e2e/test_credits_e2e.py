"""Prepaid credits end to end: the official SDKs through the proxy to the fake upstream.

Overshoot once then refusals in each provider's format, a purchase that works at once,
failures that cost nothing, a client that hangs up mid-stream, 200 concurrent requests
against a small balance, and the ledger replay after all of it."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta
from typing import Any

import anthropic
import openai
import pytest
from tollway.limits.clock import SystemClock
from tollway.limits.credits import Credits
from tollway.limits.meter import Charge
from tollway.limits.money import parse_usd
from tollway.limits.plans import REQUEST_UNIT, Principal
from tollway.limits.prices import cost_micro
from tollway.limits.usage import Usage
from tollway.proxy.cli import main as cli
from tollway.proxy.runtime.app import COUNTER

from tests.support.stack import ENV

ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
    billing: {mode: prepaid}
"""
HELLO = [{"role": "user", "content": "Say hello"}]  # 5 input tokens at the fake
USD = parse_usd


def credits(stack) -> Credits:
    return Credits(stack.store, stack.clock)


def balance(stack):
    return stack.run(credits(stack).balance("acme"))


def price(stack, model: str):
    return stack.holder.current.prices[model]


def ledger(stack) -> list[dict[str, str]]:
    return stack.ledger("acme")


def assert_ledger_replays(stack) -> None:
    b = balance(stack)
    assert stack.run(credits(stack).recompute_from_ledger("acme")) == b.lots_total - b.debt


# --- overshoot, refusal, purchase ---------------------------------------------------------
def test_overshoot_once_then_refused_in_both_formats_then_a_purchase_works_at_once(
    stack_factory, monkeypatch, capsys
):
    stack = stack_factory(ORGS)
    stack.clock.set(SystemClock().now_ms())  # the CLI below buys on the system clock
    stack.run(credits(stack).buy("acme", USD("0.01")))
    stack.fake.behavior.output_tokens = 2000  # 5 in + 2000 out of gpt-4o: 0.020013 USD
    key = stack.key()
    oa = stack.openai(key)
    r = oa.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert r.usage.completion_tokens == 2000
    stack.wait_settled()
    cost = cost_micro(price(stack, "gpt-4o"), Usage(5, 2000))
    assert cost == 20_013
    b = balance(stack)
    assert (b.available, b.lots_total, b.debt) == (10_000 - cost, 0, cost - 10_000)

    before, upstream_calls = stack.snapshot(), len(stack.fake.requests)
    with pytest.raises(openai.RateLimitError) as e:
        oa.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert e.value.code == "insufficient_quota"
    assert e.value.status_code == 429
    with pytest.raises(anthropic.BadRequestError) as e2:
        stack.anthropic(key).messages.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=HELLO
        )
    assert "credit balance is too low" in e2.value.message
    assert "Plans & Billing" not in e2.value.message
    assert "Ask your Tollway administrator to add credit." in e2.value.message
    assert e2.value.body["error"]["type"] == "invalid_request_error"
    stack.wait_settled()
    assert stack.snapshot() == before  # a refusal takes nothing, records nothing
    assert len(stack.fake.requests) == upstream_calls  # and never reaches the upstream

    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    argv = ["credits", "buy", "--org", "acme", "--amount", "1", "--config", str(stack.config_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "repaid debt: 0.010013 USD" in out and "available:   0.989987 USD" in out
    stack.fake.behavior.output_tokens = None
    r = oa.chat.completions.create(model="gpt-4o", messages=HELLO)  # at once: no cache, no wait
    assert r.choices[0].message.content
    stack.wait_settled()
    assert balance(stack).available == USD("0.989987") - cost_micro(
        price(stack, "gpt-4o"), Usage(5, 5)
    )
    assert_ledger_replays(stack)


# --- failures are free -----------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def fail_500(stack, key: str) -> None:
    stack.fake.behavior.status = 500
    with pytest.raises(openai.InternalServerError):
        stack.openai(key).chat.completions.create(model="gpt-4o", messages=HELLO)


def fail_refused(stack, key: str) -> None:
    stack.point_upstreams_to(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(openai.APIStatusError) as e:
        stack.openai(key).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert e.value.status_code == 502


def fail_timeout(stack, key: str) -> None:
    # Real time: the proxy's read timeout (0.5 s, set in the config) must elapse while
    # the fake holds its first byte back; the whole test waits about that long.
    stack.fake.behavior.delay_first_byte = 1.0
    with pytest.raises(openai.APIStatusError) as e:
        stack.openai(key).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert e.value.status_code == 504


def fail_stream_error(stack, key: str) -> None:
    stack.fake.behavior.stream_error_after_chunks = 2
    client = stack.anthropic(key)
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, messages=HELLO) as s,
    ):
        for _ in s.text_stream:
            pass


@pytest.mark.parametrize(
    "fail", [fail_500, fail_refused, fail_timeout, fail_stream_error], ids=lambda f: f.__name__
)
def test_failures_leave_balance_and_lots_byte_for_byte_unchanged(stack_factory, fail):
    stack = stack_factory(ORGS, "server:\n  upstream_read_timeout: 0.5\n")
    stack.run(credits(stack).buy("acme", USD("5")))
    stack.run(credits(stack).grant("acme", USD("1"), timedelta(days=30)))
    key = stack.key()
    # A successful request first, so that every key a request touches exists already.
    stack.openai(key).chat.completions.create(model="gpt-4o", messages=HELLO)
    stack.wait_settled()
    before = stack.snapshot()

    fail(stack, key)
    stack.wait_settled()
    after = stack.snapshot()

    # What a failed request may change, and nothing else:
    #  - b:org:rpm   the request bucket keeps the request (SPEC §2.6: the RPM request still
    #                counts): exactly one request's units, the clock did not move;
    #  - the ledger gains one `fail` event (counted in reports), with no tokens and no cost;
    #  - settled:<rid>  the settlement marker that makes the settlement idempotent (new).
    # The tpm bucket got its reservation back exactly; the account (balance, debt, held),
    # the lots, their indexes and the month's spend are untouched.
    k = stack.keys
    rpm = k.bucket("acme", "org", "rpm")
    assert int(after[rpm]["l"]) == int(before[rpm]["l"]) - REQUEST_UNIT
    assert after[rpm]["t"] == before[rpm]["t"]
    lkey = k.ledger("acme")
    [event] = after[lkey][len(before[lkey]) :]
    assert after[lkey][: len(before[lkey])] == before[lkey]
    model = "claude-sonnet-4-6" if fail is fail_stream_error else "gpt-4o"
    assert event["type"] == "fail" and event["model"] == model
    assert not {"cost", "in", "out", "cw", "cr", "extra"} & set(event)
    new = set(after) - set(before)
    assert len(new) == 1 and new.pop().startswith(k.settled("acme", "req_"))
    for name in set(before) - {rpm, lkey}:
        assert after[name] == before[name], name
    assert set(before) <= set(after)
    assert_ledger_replays(stack)


# --- a client that hangs up mid-stream ---------------------------------------------------------
def test_a_client_that_disconnects_mid_stream_pays_what_the_upstream_bills(stack_factory):
    stack = stack_factory(ORGS)
    stack.run(credits(stack).buy("acme", USD("5")))
    b = stack.fake.behavior
    b.text = "The quick brown fox jumps over the lazy dog, again and again, until dusk falls."
    b.chunks = 6
    b.pause_after_chunks = 2
    b.delay_between_chunks = 0.3
    b.reasoning_tokens = 40  # thinking the client never sees, billed in output_tokens
    b.output_tokens = 46
    pieces = [b.text[i * len(b.text) // 6 : (i + 1) * len(b.text) // 6] for i in range(6)]
    client = stack.anthropic(stack.key())
    read = ""
    stream = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=HELLO, stream=True
    )
    for event in stream:
        if event.type == "content_block_delta":
            read += event.delta.text
            if read == pieces[0] + pieces[1]:
                break
    stream.close()
    # Real time: give the proxy's event loop a moment to see the client's connection close
    # before the upstream resumes (there is no event to wait on); 0.3 s is ample.
    time.sleep(0.3)
    stack.fake.release()
    debit = wait_for_debit(stack)

    # The client read two chunks and left. Tollway learns it on its next write and reads
    # on, without relaying, until the upstream's final usage (message_delta): that is
    # what the upstream bills, and what is charged.
    rec = stack.fake.responses[-1]
    assert rec["completed"] is True
    assert (int(debit["in"]), int(debit["out"])) == (5, 46)
    # 5 x 3.00 + 46 x 15.00 USD per million tokens = 705 micro-USD
    assert int(debit["cost"]) == 5 * 3 + 46 * 15 == 705
    assert balance(stack).available == USD("5") - 705
    assert_ledger_replays(stack)


def wait_for_debit(stack, timeout: float = 10.0) -> dict[str, str]:
    # Real time, bounded: the settlement starts only once the proxy has hung up on the
    # upstream, which happens in the background after the client left.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        debits = [e for e in ledger(stack) if e["type"] == "debit"]
        if debits:
            stack.wait_settled()
            return debits[-1]
        time.sleep(0.02)
    raise AssertionError("no debit was recorded")


# --- 200 at once ----------------------------------------------------------------------------------
def test_200_concurrent_requests_against_a_small_balance(stack_factory):
    stack = stack_factory(ORGS)
    start = USD("0.025")
    stack.run(credits(stack).buy("acme", start))
    key = stack.key()
    messages = [{"role": "user", "content": "hello " * 1000}]  # 1003 input tokens at the fake
    gpt4o = price(stack, "gpt-4o")
    est = stack.app[COUNTER].estimate_request(
        {"model": "gpt-4o", "messages": messages}, "/v1/chat/completions"
    )
    hold = cost_micro(gpt4o, Usage(input_tokens=est))

    async def burst() -> list[Any]:
        client = stack.async_openai(key, timeout=60)  # up to 1000 connections by default
        try:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(model="gpt-4o", messages=messages)
                    for _ in range(200)
                ),
                return_exceptions=True,
            )
        finally:
            await client.close()

    results = asyncio.run(burst())
    stack.wait_settled()
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    others = [r for r in results if isinstance(r, BaseException) and r not in refused]
    assert len(ok) + len(refused) == 200, others[:3]
    assert all(r.code == "insufficient_quota" for r in refused)
    assert ok and refused

    done = [r for r in stack.fake.responses if r["completed"]]
    assert len(done) == len(ok)
    costs = [
        cost_micro(gpt4o, Usage(r["input_tokens"], r["output_tokens"], 0, r["cache_read_tokens"]))
        for r in done
    ]
    # Admission needs available > 0, where available = start - settled costs - holds of
    # the requests in flight; every admitted request weighs at least min(hold, cost) in
    # that sum until its end, so at most start / min(hold, cost) + 1 can be admitted.
    weight = min(hold, *costs)
    assert len(ok) <= start // weight + 1
    b = balance(stack)
    assert b.lots_total - b.debt == start - sum(costs)
    assert b.held == 0
    debits = [e for e in ledger(stack) if e["type"] == "debit"]
    assert sorted(int(e["cost"]) for e in debits) == sorted(costs)
    assert_ledger_replays(stack)

    # Replaying every settlement changes nothing: same request ids, same usage, same cost.
    before = stack.snapshot()
    for e in debits:
        usage = Usage(int(e["in"]), int(e["out"]), int(e["cw"]), int(e["cr"]))
        s = stack.run(
            stack.meter.settle(
                Charge(
                    Principal("acme", e["key"]), e["rid"], e["model"], usage, int(e["cost"]), True
                )
            )
        )
        assert s.duplicate
    assert stack.snapshot() == before
    assert_ledger_replays(stack)
