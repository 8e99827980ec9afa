"""Budgets and caps per calendar window, through the official SDKs: a key's budget stops
it one request past it (refused like a spend cap, naming the budget and when it resets);
a daily cap resets at local midnight of server.timezone and a weekly one on Monday; both
live in the same admit and settle round trips as the monthly caps."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import anthropic
import openai
import pytest
from tollway.limits.apikeys import KeySettings
from tollway.limits.plans import KeyLimits

HELLO = [{"role": "user", "content": "Say hello"}]
NY = ZoneInfo("America/New_York")


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=NY).timestamp() * 1000)


def chat(client) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)


def cost_of_one(stack) -> int:
    """What one chat request costs (the fake upstream answers the same every time)."""
    secret = stack.key("free")
    chat(stack.openai(secret))
    stack.wait_settled()
    return int(stack.redis.hget(stack.keys.month("free", "2026-01"), "spend:org"))


def test_a_key_budget_stops_it_one_request_past_it(stack_factory):
    stack = stack_factory("organizations:\n  free: {}\n")
    c = cost_of_one(stack)
    limits = KeyLimits(budget=c + c // 2, budget_period="day")
    record, secret = stack.key_record("free", settings=KeySettings(name="ci", limits=limits))
    client = stack.openai(secret)
    chat(client)  # c of 1.5c
    chat(client)  # 2c: one request past the budget, as sequential traffic overshoots
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError) as e:
        chat(client)
    assert f"key '{record.key_id}' daily budget" in e.value.message
    assert "2026-01-02T00:00:00" in e.value.message  # midnight UTC, the server's zone
    with pytest.raises(anthropic.BadRequestError) as a:
        stack.anthropic(secret).messages.create(
            model="claude-haiku-4-5", max_tokens=20, messages=HELLO
        )
    assert "daily budget" in a.value.message
    chat(stack.openai(stack.key("free")))  # the organization's other keys go on
    stack.clock.advance(seconds=86_400)
    chat(client)  # a new day, a new budget


def test_a_daily_cap_resets_at_local_midnight(stack_factory):
    stack = stack_factory("organizations:\n  free: {}\n")
    c = cost_of_one(stack)
    yaml = (
        "server: {timezone: America/New_York}\n"
        "organizations:\n  free: {}\n  acme:\n    extra_usage: {enabled: true}\n"
        f"    spend_caps: {{daily: {c / 1e6:.6f}, weekly: {3 * c / 1e6:.6f}}}\n"
    )
    stack.reconfigure("", yaml)
    stack.clock.set(ms(2026, 1, 6, 23, 0))  # a Tuesday, 11 pm in New York (04:00Z on the 7th)
    client = stack.openai(stack.key("acme"))
    chat(client)
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError) as e:
        chat(client)
    assert "organization daily spend cap" in e.value.message
    assert "2026-01-07T05:00:00" in e.value.message  # local midnight, in UTC
    stack.clock.set(ms(2026, 1, 6, 23, 59, 59))
    with pytest.raises(openai.RateLimitError):
        chat(client)  # UTC has long passed midnight; New York has not
    stack.clock.set(ms(2026, 1, 7, 0, 0, 0))
    chat(client)  # local midnight: a new day
    stack.wait_settled()
    stack.clock.set(ms(2026, 1, 8, 12, 0))
    chat(client)  # 3c this week: the weekly cap is reached
    stack.wait_settled()
    stack.clock.set(ms(2026, 1, 9, 12, 0))
    with pytest.raises(openai.RateLimitError) as e:
        chat(client)
    assert "organization weekly spend cap" in e.value.message
    assert "2026-01-12T05:00:00" in e.value.message  # Monday, local midnight
    stack.clock.set(ms(2026, 1, 12, 0, 0, 1))
    chat(client)


def test_a_session_budget_set_on_the_key_or_sent_by_the_client(stack_factory):
    stack = stack_factory("organizations:\n  free: {}\n")
    c = cost_of_one(stack)
    limits = KeyLimits(session_budget=c + c // 2)
    _, secret = stack.key_record("free", settings=KeySettings(limits=limits))
    client = stack.openai(secret)

    def in_session(client, session: str, **headers: str) -> None:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            extra_headers={"x-tollway-session": session, **headers},
        )
        stack.wait_settled()

    in_session(client, "task-1")
    in_session(client, "task-1")  # one request past the budget
    with pytest.raises(openai.RateLimitError) as e:
        in_session(client, "task-1")
    assert "session 'task-1' budget" in e.value.message
    assert "does not reset" in e.value.message
    in_session(client, "task-2")  # another task, another budget
    chat(client)  # no session: no session budget
    # A client asks for a lower budget with a header (it can never raise the key's).
    plain = stack.openai(stack.key("free"))
    budget = {"x-tollway-session-budget": f"{c / 1e6:.6f}"}
    in_session(plain, "task-3", **budget)
    with pytest.raises(openai.RateLimitError):
        in_session(plain, "task-3", **budget)
    in_session(plain, "task-3")  # without the header, no budget for it
    assert all(
        "x-tollway-session-budget" not in {k.lower() for k in r.headers}
        for r in stack.fake.requests
    )
    with pytest.raises(openai.BadRequestError):
        in_session(plain, "task-4", **{"x-tollway-session-budget": "five"})


def test_a_model_cap_holds_whichever_model_of_its_pattern_is_used(stack_factory):
    stack = stack_factory("organizations:\n  free: {}\n")
    c = cost_of_one(stack)
    yaml = (
        "organizations:\n  free: {}\n  acme:\n    extra_usage: {enabled: true}\n"
        f"    model_caps: {{'gpt-4o*': {{daily: {(c + c // 2) / 1e6:.6f}}}}}\n"
    )
    stack.reconfigure("", yaml)
    secret = stack.key("acme")
    client = stack.openai(secret)
    chat(client)
    chat(client)  # one request past the cap
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError) as e:
        chat(client)
    assert "model 'gpt-4o*' daily spend cap" in e.value.message
    with pytest.raises(openai.RateLimitError):  # another model of the pattern: no dodge
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    stack.anthropic(secret).messages.create(  # a model outside the pattern goes on
        model="claude-haiku-4-5", max_tokens=20, messages=HELLO
    )
    stack.clock.advance(seconds=86_400)
    chat(client)
