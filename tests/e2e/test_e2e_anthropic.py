"""End to end, Anthropic format: the official `anthropic` SDK, sync and async, through the
proxy to the fake upstream."""

from __future__ import annotations

import anthropic
import pytest
import requests

from tests.support.fakeupstream import ANTHROPIC_KEY

HELLO = [{"role": "user", "content": "Say hello"}]  # 5 input tokens at the fake
TEXT = "Hello from the fake upstream!"
MODEL = "claude-sonnet-4-6"
# claude-sonnet-4-6: input 3, output 15, cache write 3.75, cache read 0.30 USD/M
P_IN, P_OUT, P_CW, P_CR = 3_000_000, 15_000_000, 3_750_000, 300_000


def cost(inp: int, out: int, cw: int = 0, cr: int = 0) -> int:
    return (inp * P_IN + out * P_OUT + cw * P_CW + cr * P_CR + 500_000) // 1_000_000


def test_messages_json_with_cache_tokens(stack):
    stack.fake.behavior.cache_write_tokens = 100
    stack.fake.behavior.cache_read_tokens = 2000
    key = stack.key()
    raw = stack.anthropic(key).messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=HELLO
    )
    m = raw.parse()
    assert m.content[0].text == TEXT
    u = m.usage
    assert (u.input_tokens, u.output_tokens) == (5, 5)
    assert (u.cache_creation_input_tokens, u.cache_read_input_tokens) == (100, 2000)
    h = raw.headers
    assert h["request-id"].startswith("req_")
    assert h["anthropic-ratelimit-requests-limit"] == "1000"
    assert h["anthropic-ratelimit-requests-remaining"] == "999"
    assert h["anthropic-ratelimit-tokens-limit"] == "1000000"
    assert h["anthropic-ratelimit-requests-reset"].endswith("Z")
    sent = stack.fake.requests[-1]
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in sent.headers
    assert key not in str(dict(sent.headers))
    stack.wait_settled()
    day = stack.day()
    assert (day["org|in"], day["org|out"], day["org|cw"], day["org|cr"]) == (5, 5, 100, 2000)
    assert day["org|cost"] == cost(5, 5, 100, 2000)


def test_stream_helper_charges_the_last_cumulative_usage(stack):
    stack.fake.behavior.chunks = 7
    with stack.anthropic(stack.key()).messages.stream(
        model=MODEL, max_tokens=100, messages=HELLO
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == TEXT
    assert final.usage.output_tokens == 7
    stack.wait_settled()
    assert (stack.day()["org|in"], stack.day()["org|out"]) == (5, 7)


async def test_async_client_stream(stack):
    client = stack.async_anthropic(stack.key())
    stream = await client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, stream=True)
    events = [e async for e in stream]
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    m = await client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=HELLO)
    assert m.usage.output_tokens == 5
    stack.wait_settled()
    assert stack.day()["org|req"] == 2


def test_stream_ending_in_error_event_is_free(stack):
    stack.fake.behavior.stream_error_after_chunks = 2
    client = stack.anthropic(stack.key())
    with (
        pytest.raises(anthropic.APIStatusError) as e,
        client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as s,
    ):
        for _ in s.text_stream:
            pass
    assert e.value.body["error"]["type"] == "overloaded_error"
    stack.wait_settled()
    day = stack.day()
    assert day["org|fail"] == 1 and "org|cost" not in day
    # The ledger records the failure and moves no money.
    assert [e["type"] for e in stack.ledger("acme")] == ["fail"]


def test_authentication_error(stack):
    with pytest.raises(anthropic.AuthenticationError) as e:
        stack.anthropic("tw-wrong").messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert e.value.body["error"]["type"] == "authentication_error"
    # x-api-key is accepted just like a Bearer token.
    r = requests.post(
        stack.url + "/v1/messages",
        headers={"x-api-key": stack.key(), "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 10, "messages": HELLO},
    )
    assert r.status_code == 200 and r.headers["request-id"].startswith("req_")


def test_rate_limit_error_in_anthropic_format(stack_factory):
    stack = stack_factory("organizations:\n  acme:\n    limits: {tpm: 600}\n")
    stack.fake.behavior.output_tokens = 1000  # one request overshoots the minute
    client = stack.anthropic(stack.key())
    client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    stack.wait_settled()
    before = stack.snapshot()
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert e.value.body["error"]["type"] == "rate_limit_error"
    # 600 - 1005 = -405 tokens at 10 tokens/s: 40.5 s, so retry after 41 s.
    assert e.value.response.headers["retry-after"] == "41"
    assert e.value.response.headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert stack.snapshot() == before
    stack.clock.advance(seconds=41)
    client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)


def test_invalid_json_is_an_invalid_request_error(stack):
    key = stack.key()
    before = stack.snapshot()
    r = requests.post(
        stack.url + "/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        data=b'{"model": "claude-sonnet-4-6", "messages": [',
    )
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert stack.snapshot() == before and stack.fake.requests == []


def test_count_tokens_and_models_pass_through_unmetered(stack):
    client = stack.anthropic(stack.key())
    n = client.messages.count_tokens(model=MODEL, messages=HELLO)
    assert n.input_tokens == 5
    models = client.models.list()
    assert "claude-sonnet-4-6" in [m.id for m in models.data]
    assert stack.fake.requests[-1].headers["x-api-key"] == ANTHROPIC_KEY
    stack.wait_settled()
    assert stack.day() == {}
