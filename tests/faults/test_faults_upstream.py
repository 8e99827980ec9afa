"""The upstream misbehaves: refuses connections, resets mid-body, answers late or slowly,
fails with 5xx or 429, sends malformed JSON or SSE.

Each time the client gets a clear error in the format of the API it called (or, once a
stream has started, a connection that ends abruptly), a failure is charged nothing (the
request still counts against RPM, and as a failure in the day's report), and no task or
upstream connection is left behind. A stream cut off after it relayed generated text is
charged its input and the tokens of that text (SPEC §2.4)."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest
from tollway.limits.embedded import free_port
from tollway.limits.prices import cost_micro
from tollway.limits.usage import Usage
from tollway.proxy.gateway.tokens import TokenCounter

from tests.support.faultkit import (
    CUT,
    Script,
    ScriptedUpstream,
    anthropic_body,
    fetch,
    no_leaks,
    openai_body,
    settled,
)

READ_TIMEOUT = 0.5
SERVER = f"server: {{upstream_read_timeout: {READ_TIMEOUT}}}\n"
PROVIDERS = ["openai", "anthropic"]
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


@pytest.fixture
def stack(stack_factory):
    return stack_factory(extra_yaml=SERVER)


def call(stack, provider: str, key: str, stream: bool = False):
    if provider == "anthropic":
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        body = anthropic_body(stream)
    else:
        headers = {"authorization": f"Bearer {key}"}
        body = openai_body(stream)
    return fetch("POST", stack.url + PATHS[provider], json=body, headers=headers)


def assert_error_format(reply, provider: str, status: int) -> None:
    assert reply.status == status, reply.body
    body = reply.json()
    if provider == "anthropic":
        assert body["type"] == "error"
        assert body["error"]["type"] and body["error"]["message"]
        assert reply.headers["request-id"].startswith("req_")
    else:
        assert body["error"]["message"] and body["error"]["type"]
        assert reply.headers["x-request-id"].startswith("req_")


def without_failure_marks(stack, snapshot: dict) -> dict:
    """A snapshot less what a free failure leaves: its RPM take, its failure count in the
    day's report, its settled marker; and less a token bucket that is full (a missing
    bucket is a full one)."""
    full = str(stack.holder.current.organizations["acme"].limits.tpm * 60_000)
    out = {}
    for name, value in snapshot.items():
        if name.endswith(":rpm") or ":settled:" in name:
            continue
        if name.endswith(":b:org:tpm") and value["l"] == full:
            continue
        if name == stack.keys.ledger("acme"):
            value = [e for e in value if e["type"] != "fail"]
        out[name] = value
    return out


def assert_free(stack, before: dict, failures: int = 1) -> None:
    settled(stack)
    after = stack.snapshot()
    assert without_failure_marks(stack, after) == without_failure_marks(stack, before)
    assert stack.day().get("org|fail", 0) == failures
    assert "org|cost" not in stack.day()


def estimate(provider: str, stream: bool) -> int:
    body = anthropic_body(stream) if provider == "anthropic" else openai_body(stream)
    return TokenCounter().estimate_request(body, PATHS[provider])


# --- no answer at all ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_connection_refused_is_502(stack, provider: str) -> None:
    key = stack.key()
    before = stack.snapshot()
    stack.point_upstreams_to(f"http://127.0.0.1:{free_port()}")
    with no_leaks(stack):
        for stream in (False, True):
            assert_error_format(call(stack, provider, key, stream), provider, 502)
    assert_free(stack, before, failures=2)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_reset_before_the_answer_is_502(stack, provider: str) -> None:
    key = stack.key()
    before = stack.snapshot()
    stack.fake.behavior.cut_after_chunks = 0  # JSON: the connection closes unanswered
    with no_leaks(stack):
        assert_error_format(call(stack, provider, key), provider, 502)
    assert_free(stack, before)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_slow_first_byte_is_504_within_the_read_timeout(stack, provider: str) -> None:
    key = stack.key()
    before = stack.snapshot()
    stack.fake.behavior.delay_first_byte = 4 * READ_TIMEOUT
    with no_leaks(stack):
        started = time.monotonic()
        assert_error_format(call(stack, provider, key), provider, 504)
        assert time.monotonic() - started < 3 * READ_TIMEOUT
    assert_free(stack, before)


# --- error statuses ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("status", [500, 503, 529, 429])
def test_upstream_error_statuses_are_relayed_and_free(stack, provider: str, status: int):
    key = stack.key()
    before = stack.snapshot()
    stack.fake.behavior.status = status
    with no_leaks(stack):
        for stream in (False, True):
            reply = call(stack, provider, key, stream)
            assert_error_format(reply, provider, status)
            # The upstream's own rate-limit headers describe the operator's account.
            upstream_own = [
                h for h in reply.headers if h.startswith(("x-ratelimit-", "anthropic-ratelimit-"))
            ]
            tollway_own = {
                "openai": "x-ratelimit-remaining-requests",
                "anthropic": "anthropic-ratelimit-requests-remaining",
            }[provider]
            assert upstream_own and tollway_own in reply.headers
            assert reply.headers[tollway_own] != "9999"  # the fake's value
            if status == 429:
                assert reply.headers["retry-after"] == "1"
    assert_free(stack, before, failures=2)


def test_sdks_raise_their_usual_errors_for_upstream_failures(stack) -> None:
    key = stack.key()
    stack.fake.behavior.status = 529
    with pytest.raises(anthropic.OverloadedError):
        stack.anthropic(key).messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    stack.fake.behavior.status = 429
    with pytest.raises(openai.RateLimitError):
        stack.openai(key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )


# --- malformed or cut bodies ---------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_json_is_502_and_free(stack, provider: str) -> None:
    key = stack.key()
    before = stack.snapshot()
    stack.fake.behavior.malformed_json = True
    with no_leaks(stack):
        assert_error_format(call(stack, provider, key), provider, 502)
    assert_free(stack, before)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_reset_in_the_middle_of_a_json_body_is_502_and_free(stack, provider: str) -> None:
    key = stack.key()
    before = stack.snapshot()
    scripted = ScriptedUpstream(stack)
    try:
        stack.point_upstreams_to(scripted.url)
        scripted.script = Script(pieces=['{"id": "chatcmpl-1", "choices": [', 0.05, CUT])
        with no_leaks(stack):
            assert_error_format(call(stack, provider, key), provider, 502)
        assert_free(stack, before)
    finally:
        scripted.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_cut_before_any_text_is_free(stack, provider: str) -> None:
    key = stack.key()
    before = stack.snapshot()
    stack.fake.behavior.cut_after_chunks = 0
    with no_leaks(stack):
        reply = call(stack, provider, key, stream=True)
    assert reply.status == 200 and reply.cut  # the stream had started; it ends abruptly
    assert_free(stack, before)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_error_event_is_free(stack, provider: str) -> None:
    key = stack.key()
    before = stack.snapshot()
    stack.fake.behavior.stream_error_after_chunks = 2
    with no_leaks(stack):
        reply = call(stack, provider, key, stream=True)
    assert reply.status == 200 and b"error" in reply.body
    assert_free(stack, before)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_slow_stream_is_cut_and_charged_what_it_relayed(stack, provider: str) -> None:
    """Chunks further apart than the read timeout: the stream is cut after the first; it
    relayed text, so it is charged its input and that text's tokens."""
    key = stack.key()
    stack.fake.behavior.delay_between_chunks = 3 * READ_TIMEOUT
    with no_leaks(stack):
        started = time.monotonic()
        reply = call(stack, provider, key, stream=True)
        assert time.monotonic() - started < 3 * READ_TIMEOUT + 1
    assert reply.status == 200 and reply.cut
    settled(stack)
    rec = stack.fake.responses[-1]
    assert not rec["completed"] and rec["text_sent"] == "Hello"
    out = TokenCounter().count(rec["text_sent"])
    # Anthropic streams report their input up front; OpenAI's only at the end: estimated.
    inp = rec["input_tokens"] if provider == "anthropic" else estimate(provider, True)
    day = stack.day()
    assert (day["org|in"], day["org|out"], day.get("org|fail", 0)) == (inp, out, 0)
    price = stack.holder.current.prices[MODELS[provider]]
    assert day["org|cost"] == cost_micro(price, Usage(input_tokens=inp, output_tokens=out))


def sse(*events: str) -> list[str]:
    return [e if e.endswith("\n\n") else e + "\n\n" for e in events]


def test_malformed_sse_without_text_is_free(stack) -> None:
    key = stack.key()
    before = stack.snapshot()
    scripted = ScriptedUpstream(stack)
    try:
        stack.point_upstreams_to(scripted.url)
        scripted.script = Script(
            headers={"content-type": "text/event-stream"},
            pieces=sse("data: {not json", "event: ???\ndata: [[[", "data: [DONE]"),
        )
        with no_leaks(stack):
            reply = call(stack, "openai", key, stream=True)
        assert reply.status == 200  # relayed as it came: the client's parser reports it
        assert_free(stack, before)
    finally:
        scripted.close()


def test_malformed_sse_after_text_is_charged_the_text(stack) -> None:
    key = stack.key()
    scripted = ScriptedUpstream(stack)
    try:
        stack.point_upstreams_to(scripted.url)
        chunk = '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
        scripted.script = Script(
            headers={"content-type": "text/event-stream"},
            pieces=sse(
                "data: " + chunk + '"choices":[{"index":0,"delta":{"content":"Hello world"}}]}',
                'data: {"usage": {"prompt_tokens": broken',
                "data: [DONE]",
            ),
        )
        with no_leaks(stack):
            reply = call(stack, "openai", key, stream=True)
        assert reply.status == 200 and b"Hello world" in reply.body
        settled(stack)
        out = TokenCounter().count("Hello world")
        day = stack.day()
        assert (day["org|in"], day["org|out"]) == (estimate("openai", True), out)
    finally:
        scripted.close()


@pytest.mark.parametrize("absurd", [2**63, 10**30, 1e300, 10_000_001])
def test_an_absurd_usage_count_is_charged_at_the_ceiling(stack, absurd) -> None:
    """An upstream that reports more tokens than any model handles (a broken server) would
    bill a fortune and block the organization for years; read as 0 it would be free. Such
    a count is charged at the sanity ceiling (metering.max_tokens_per_request) and flagged."""
    key = stack.key()
    scripted = ScriptedUpstream(stack)
    try:
        stack.point_upstreams_to(scripted.url)
        body = (
            '{"id": "c", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [], '
            f'"usage": {{"prompt_tokens": 7, "completion_tokens": {absurd}}}}}'
        )
        scripted.script = Script(pieces=[body])
        reply = call(stack, "openai", key)
        settled(stack)
        day = stack.day()
        if reply.status == 200:
            ceiling = stack.holder.current.metering.max_tokens_per_request
            assert (day["org|in"], day.get("org|out", 0)) == (7, ceiling)
            assert stack.metrics.absurd_usage.labels("acme")._value.get() == 1
        else:  # a number the JSON parser refuses: a malformed answer, free
            assert reply.status == 502 and "org|cost" not in day
        stack.point_upstreams_to(stack.fake_url)
        after = call(stack, "openai", key)
        if reply.status == 200:  # the ceiling empties the 1M TPM bucket: minutes, not years
            assert after.status == 429 and int(after.headers["retry-after"]) <= 600
        else:
            assert after.status == 200
    finally:
        scripted.close()
