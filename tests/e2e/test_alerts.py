"""Threshold alerts, through the official SDK: as an organization's spend crosses 50, 80
and 100 % of its cap, the alert webhook receives each threshold once (signed), however
many replicas serve the traffic and however many requests follow; a failed delivery is
retried with back-off; a low balance is announced once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import openai
import pytest
from aiohttp import web
from tollway.limits.apikeys import KeySettings
from tollway.limits.caps import Caps
from tollway.limits.credits import Credits
from tollway.limits.plans import KeyLimits
from tollway.limits.spend import Spend
from tollway.proxy.runtime.app import ALERTS, USERS

import tests.support.stack as stack_module

SECRET = "alert-signing-secret"
HELLO = [{"role": "user", "content": "Say hello"}]
ORGS = """
organizations:
  acme:
    extra_usage: {enabled: true}
  prepaid:
    billing: {mode: prepaid}
"""


class Receiver:
    """A webhook that records what it receives; fails the first `fail` deliveries."""

    def __init__(self, fail: int = 0) -> None:
        self.got: list[dict] = []
        self.fail = fail
        self.attempts = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert request.headers["X-Tollway-Signature"] == expected
        self.attempts += 1
        if self.attempts <= self.fail:
            return web.Response(status=503)
        self.got.append(await request.json())
        return web.Response(status=204)


def start(stack, receiver: Receiver, extra: str = "") -> None:
    async def serve() -> str:
        app = web.Application()
        app.router.add_post("/alerts", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        stack._extra_runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/alerts"

    url = stack.run(serve())
    stack.reconfigure(
        ORGS,
        f"notifications:\n  alerts: {{webhook_url: '{url}', secret_env: ALERT_SECRET{extra}}}\n",
    )


@pytest.fixture
def stack(stack_factory, monkeypatch):
    monkeypatch.setitem(stack_module.ENV, "ALERT_SECRET", SECRET)
    return stack_factory(ORGS)


def chat(client) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)


def settle_alerts(stack) -> None:
    stack.wait_settled()

    async def drain() -> None:
        for _ in range(500):
            if not stack.app[ALERTS].tasks:
                return
            await asyncio.sleep(0.01)

    stack.run(drain())


def thresholds(receiver: Receiver, expected: list[int]) -> list[int]:
    """The thresholds received, once `expected` arrived (or after 5 s): the second
    replica's deliveries are not drained by `settle_alerts`."""
    deadline = time.monotonic() + 5
    while sorted(a["threshold"] for a in receiver.got) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    time.sleep(0.1)  # and nothing more comes
    return sorted(a["threshold"] for a in receiver.got)


def test_each_threshold_of_a_cap_reaches_the_webhook_once(stack):
    receiver = Receiver()
    start(stack, receiver)
    key = stack.key("acme")
    one = stack.openai(key)
    two = openai.OpenAI(base_url=stack.second_proxy() + "/v1", api_key=key, max_retries=0)
    chat(one)
    settle_alerts(stack)
    cost = int(stack.redis.hget(stack.keys.month("acme", "2026-01"), "spend:org"))
    assert cost > 0 and receiver.got == []  # no cap yet: nothing to announce
    spend = Spend(stack.store, stack.clock, lambda: stack.holder.current)
    stack.run(spend.set_cap("acme", "org", None, 4 * cost))
    chat(two)  # 2 of 4: 50 %
    settle_alerts(stack)
    assert thresholds(receiver, [50]) == [50]
    chat(one)  # 75 %: no new threshold
    chat(two)  # 100 %: 80 and 100 at once
    settle_alerts(stack)
    assert thresholds(receiver, [50, 80, 100]) == [50, 80, 100]
    first = min(receiver.got, key=lambda a: a["threshold"])
    assert (first["org"], first["kind"], first["subject"]) == (
        "acme",
        "cap",
        "organization monthly spend cap",
    )
    assert first["limit"] == 4 * cost and first["period"] == "2026-01"
    # Raising the cap lets traffic through again: the thresholds already sent stay sent.
    stack.run(spend.set_cap("acme", "org", None, 100 * cost))
    for client in (one, two, one):
        chat(client)
    settle_alerts(stack)
    assert thresholds(receiver, [50, 80, 100]) == [50, 80, 100]


def test_a_failed_delivery_is_retried_and_a_low_balance_announced_once(stack):
    receiver = Receiver(fail=2)
    start(stack, receiver, ", low_balance: 1.00")
    sender = stack.app[ALERTS]
    sender.base_delay = 0.01  # the back-off's shape, not its length, is under test
    credits = Credits(stack.store, stack.clock, lambda: stack.holder.current)
    stack.run(credits.buy("prepaid", 1_000_000))
    key = stack.key("prepaid")
    for _ in range(3):
        chat(stack.openai(key))
    settle_alerts(stack)
    assert receiver.attempts == 3  # two failures, then delivered
    assert [(a["kind"], a["threshold"]) for a in receiver.got] == [("balance", 1_000_000)]
    assert receiver.got[0]["used"] < 1_000_000


def test_a_key_s_daily_budget_alerts_per_day(stack):
    receiver = Receiver()
    start(stack, receiver)
    probe = stack.key("acme")
    chat(stack.openai(probe))
    settle_alerts(stack)
    cost = int(stack.redis.hget(stack.keys.month("acme", "2026-01"), "spend:org"))
    limits = KeyLimits(budget=2 * cost, budget_period="day")
    _, secret = stack.key_record("acme", settings=KeySettings(name="bot", limits=limits))
    client = stack.openai(secret)
    chat(client)
    settle_alerts(stack)
    chat(client)
    settle_alerts(stack)
    got = [(a["kind"], a["threshold"], a["period"]) for a in receiver.got]
    assert sorted(got) == [("budget", t, "d2026-01-01") for t in (50, 80, 100)]
    stack.clock.advance(seconds=86_400)  # a new day: the budget and its alerts start over
    chat(client)
    settle_alerts(stack)
    assert ("budget", 50, "d2026-01-02") in [
        (a["kind"], a["threshold"], a["period"]) for a in receiver.got
    ]


def alerts_of(receiver: Receiver) -> list[tuple[str, int, str]]:
    return sorted((a["subject"], a["threshold"], a["period"]) for a in receiver.got)


def test_a_model_cap_set_at_run_time_alerts_each_threshold_once(stack):
    receiver = Receiver()
    start(stack, receiver)
    key = stack.key("acme")
    client = stack.openai(key)
    chat(client)
    settle_alerts(stack)
    cost = int(stack.redis.hget(stack.keys.month("acme", "2026-01"), "spend:org"))
    caps = Caps(stack.store, lambda: stack.holder.current)
    stack.run(caps.set("acme", "model", "gpt-4o*", 4 * cost))
    stack.run(stack.app[USERS].entries("acme", fresh=True))  # as every replica, within 1 s
    subject = "model 'gpt-4o*' monthly spend cap"
    chat(client)  # counted from the cap on: 1 of 4
    chat(client)  # 2 of 4: 50 %
    settle_alerts(stack)
    assert alerts_of(receiver) == [(subject, 50, "2026-01")]
    chat(client)
    chat(client)  # 4 of 4: 80 and 100 %
    settle_alerts(stack)
    assert alerts_of(receiver) == [(subject, t, "2026-01") for t in (50, 80, 100)]
    stack.run(caps.set("acme", "model", "gpt-4o*", 100 * cost))
    for _ in range(3):
        chat(client)
    stack.anthropic(key).messages.create(  # another model: not under the cap
        model="claude-haiku-4-5", max_tokens=20, messages=HELLO
    )
    settle_alerts(stack)
    assert alerts_of(receiver) == [(subject, t, "2026-01") for t in (50, 80, 100)]
    assert {a["limit"] for a in receiver.got} == {4 * cost}


def test_a_daily_cap_alerts_once_per_threshold_and_day(stack):
    receiver = Receiver()
    start(stack, receiver)
    client = stack.openai(stack.key("acme"))
    chat(client)
    settle_alerts(stack)
    cost = int(stack.redis.hget(stack.keys.month("acme", "2026-01"), "spend:org"))
    caps = Caps(stack.store, lambda: stack.holder.current)
    stack.run(caps.set("acme", "org", None, 3 * cost, "day"))  # 1 of 3 spent today
    chat(client)  # 2 of 3: 50 %
    settle_alerts(stack)
    chat(client)  # 3 of 3: 80 and 100 %
    settle_alerts(stack)
    subject = "organization daily spend cap"
    assert alerts_of(receiver) == [(subject, t, "d2026-01-01") for t in (50, 80, 100)]
    stack.clock.advance(seconds=86_400)  # a new day: the thresholds start over
    chat(client)
    chat(client)
    settle_alerts(stack)
    assert (subject, 50, "d2026-01-02") in alerts_of(receiver)
    assert len([a for a in receiver.got if a["period"] == "d2026-01-02"]) == 1
