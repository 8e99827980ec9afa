"""A key's own ceilings under concurrency, through the official SDKs: a key at its
max_in_flight gets a 429 in the provider's format and every way a request ends (served,
abandoned by the client, failed upstream) gives its slot back; a session budget holds what
the session's requests in flight are expected to cost, so a burst overshoots it by at most
one request; a client's x-tollway-session-budget is bounded like a budget, and a bad one
is a 400 that changes nothing."""

from __future__ import annotations

import anthropic
import openai
import pytest
from tollway.limits.apikeys import KeySettings
from tollway.limits.plans import KeyLimits

from tests.e2e.test_reservations import OUT, burst, exact

HELLO = [{"role": "user", "content": "Say hello"}]


def held(stack) -> dict[str, str]:
    return stack.redis.hgetall(stack.keys.held("acme"))


def test_a_key_at_its_max_in_flight_is_429_and_every_ending_gives_the_slot_back(stack):
    record, secret = stack.key_record(settings=KeySettings(limits=KeyLimits(max_in_flight=1)))
    other = stack.key()
    stack.fake.behavior.pause_after_chunks = 0  # streams wait for release()
    flight = f"flight:key={record.key_id}"

    async def abandoned_while_the_next_is_refused() -> None:
        client = stack.async_openai(secret, timeout=60)
        aclient = stack.async_anthropic(secret, timeout=60)
        try:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True
            )
            with pytest.raises(openai.RateLimitError) as e:
                await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            assert f"max_in_flight of key={record.key_id}" in e.value.message
            assert e.value.response.headers["retry-after"]
            with pytest.raises(anthropic.RateLimitError) as a:
                await aclient.messages.create(
                    model="claude-haiku-4-5", max_tokens=20, messages=HELLO
                )
            assert a.value.body["error"]["type"] == "rate_limit_error"
            # The organization's other keys are not held back by this key's ceiling.
            await stack.async_openai(other).chat.completions.create(
                model="gpt-4o-mini", messages=HELLO
            )
            await stream.close()  # the client leaves mid-stream
        finally:
            await client.close()
            await aclient.close()

    stack.run(abandoned_while_the_next_is_refused())
    assert held(stack).get(flight) == "1"  # Tollway still drains the upstream's answer
    stack.fake.release()
    stack.wait_settled()
    assert held(stack) == {}
    stack.fake.behavior.pause_after_chunks = None
    stack.fake.behavior.status = 500  # a failed request gives its slot back too
    with pytest.raises(openai.InternalServerError):
        stack.openai(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    assert held(stack) == {}
    stack.fake.behavior.status = 200
    for _ in range(2):  # one after the other: each finds the slot free
        stack.openai(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        stack.wait_settled()
    assert held(stack) == {}


def test_a_session_burst_overshoots_its_budget_by_at_most_one_request(stack):
    cost = exact(stack)
    budget = 10 * cost + cost // 2
    limits = KeyLimits(session_budget=budget)
    _, secret = stack.key_record(settings=KeySettings(limits=limits))
    session = "fix bug #12 in the api"  # any text: spaces too
    # Every answer waits a little, so all 30 are admitted before the first one settles.
    stack.fake.behavior.delay_first_byte = 0.3
    served, refused = burst(
        stack, secret, n=30, max_tokens=OUT, extra_headers={"x-tollway-session": session}
    )
    spent = int(stack.redis.hget(stack.keys.session("acme", session), "cost"))
    assert spent == len(served) * cost
    assert spent <= budget + cost  # at most one request past the budget
    assert len(served) >= budget // cost  # held exactly: no false refusal
    assert refused and all(f"session '{session}' budget" in r.body["message"] for r in refused)
    assert held(stack) == {}  # every hold given back
    # Another session of the same key has its own budget; a request with no session none.
    other, _ = burst(stack, secret, n=2, max_tokens=OUT, extra_headers={"x-tollway-session": "b"})
    assert len(other) == 2
    assert len(burst(stack, secret, n=2, max_tokens=OUT)[0]) == 2


def test_a_client_session_budget_is_a_cap_on_the_burst_too(stack):
    cost = exact(stack)
    budget = f"{(5 * cost + cost // 2) / 1e6:.6f}"
    stack.fake.behavior.delay_first_byte = 0.3
    headers = {"x-tollway-session": "task", "x-tollway-session-budget": budget}
    served, refused = burst(stack, stack.key(), n=30, max_tokens=OUT, extra_headers=headers)
    assert 5 <= len(served) <= 6 and len(refused) == 30 - len(served)
    assert held(stack) == {}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "must be more than 0 USD"),
        ("0.0000001", "more than 6 decimal places"),
        ("1000000000.000001", "at most 1000000000 USD"),
        ("-1", "x-tollway-session-budget"),
        ("five", "not an amount in USD"),
        ("1e3", "not an amount in USD"),
    ],
)
def test_a_bad_session_budget_header_is_a_400_that_changes_nothing(stack, value, problem):
    secret = stack.key()
    stack.openai(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    before, calls = stack.snapshot(), len(stack.fake.requests)
    headers = {"x-tollway-session": "t", "x-tollway-session-budget": value}
    with pytest.raises(openai.BadRequestError) as e:
        stack.openai(secret).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, extra_headers=headers
        )
    assert "x-tollway-session-budget" in e.value.message and problem in e.value.message
    with pytest.raises(anthropic.BadRequestError) as a:
        stack.anthropic(secret).messages.create(
            model="claude-haiku-4-5", max_tokens=20, messages=HELLO, extra_headers=headers
        )
    assert a.value.body["error"]["type"] == "invalid_request_error"
    stack.wait_settled()
    assert stack.snapshot() == before and len(stack.fake.requests) == calls


def test_the_largest_session_budget_header_is_accepted(stack):
    headers = {"x-tollway-session": "t", "x-tollway-session-budget": "1000000000"}
    secret = stack.key()
    stack.openai(secret).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers=headers
    )
