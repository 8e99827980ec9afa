"""Property-based: hypothesis generates malformed requests, headers and upstream answers.

For every example:
- nothing Tollway answers itself is a 500 (an upstream's own status passes through);
- a request refused before it was forwarded changes nothing in the store;
- whatever was forwarded is accounted exactly: each ledger debit is priced from its own
  token counts, the day's report adds up the debits, the token and request buckets hold
  exactly the charged tokens and one request, the credit balance fell by exactly the
  debits, no hold is left, and no settlement failed.

Time: the clock jumps two minutes before each example, so every bucket starts full; the
example counts are bounded so the file runs in well under a minute."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tollway.limits.clock import ManualClock
from tollway.limits.credits import Credits
from tollway.limits.prices import cost_micro
from tollway.limits.usage import Usage

from tests.support.faultkit import (
    CUT,
    Script,
    ScriptedUpstream,
    charged,
    fetch,
    ledger_debits,
    metric,
    settled,
)
from tests.support.stack import Stack

ORGS = """
organizations:
  acme:
    limits: {rpm: 100000, tpm: 100000000}
    billing: {mode: prepaid}
"""
CREDIT = 10**12  # micro-USD: never runs out
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
]
PRICED = ["gpt-4o-mini", "claude-haiku-4-5", "text-embedding-3-small"]


@pytest.fixture(scope="module")
def world(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    stack = Stack(redis_url, Path(tmp_path_factory.mktemp("props")), orgs_yaml=ORGS)
    try:
        credits = Credits(stack.store, ManualClock(), lambda: stack.holder.current)
        stack.run(credits.buy("acme", CREDIT))
        secret = stack.key()
        scripted = ScriptedUpstream(stack)
        yield stack, secret, scripted
        scripted.close()
    finally:
        stack.close()


# --- what the store should say ------------------------------------------------------------------


def totals(stack: Stack) -> dict[str, int]:
    """What the ledger says the organization used, summed over every day."""
    return charged(stack)


def logical(stack: Stack) -> dict:
    """The store's keys, less the buckets that are full at the clock's now: a full bucket
    and a missing one are the same (and the store drops full ones in real time)."""
    limits = stack.holder.current.organizations["acme"].limits
    rates = {"rpm": limits.rpm * 1000, "tpm": limits.tpm}
    now = stack.clock.now_ms()
    out = {}
    for name, value in stack.snapshot().items():
        kind = name.rsplit(":", 1)[-1]
        if ":b:org:" in name and kind in rates:
            rate = rates[kind]
            level = int(value["l"]) + max(now - int(value["t"]), 0) * rate
            if level >= rate * 60_000:
                continue
        out[name] = value
    return out


class Before:
    def __init__(self, stack: Stack) -> None:
        stack.clock.advance(seconds=120)
        self.snapshot = logical(stack)
        self.totals = totals(stack)
        self.debits = len(ledger_debits(stack))
        self.balance = int(stack.redis.hget(stack.keys.account("acme"), "balance") or 0)
        self.forwarded = len(stack.fake.requests)
        self.failures = metric(stack, "tollway_settle_failures_total")


def check(stack: Stack, before: Before, status: int, forwarded: bool) -> None:
    settled(stack)
    assert metric(stack, "tollway_settle_failures_total") == before.failures
    if not forwarded:
        assert status >= 400
        assert logical(stack) == before.snapshot
        return
    prices = stack.holder.current.prices
    new = ledger_debits(stack)[before.debits :]
    for d in new:
        u = Usage(int(d["in"]), int(d["out"]), int(d["cw"]), int(d["cr"]))
        assert int(d["cost"]) == cost_micro(prices[d["model"]], u) > 0
    after = totals(stack)
    delta = {k: after[k] - before.totals[k] for k in after}
    assert delta["cost"] == sum(int(d["cost"]) for d in new)
    # A request whose cost rounds to 0 (a few embedding tokens) has no ledger event, so
    # the day's tokens are at least the debits'; the buckets below check them exactly.
    for name in ("in", "out", "cw", "cr"):
        assert delta[name] >= sum(int(d[name]) for d in new)
    acct = stack.redis.hgetall(stack.keys.account("acme"))
    assert int(acct.get("balance", 0)) == before.balance - delta["cost"]
    assert int(acct.get("held", 0)) == 0 and int(acct.get("debt", 0)) == 0
    assert stack.redis.zcard(stack.keys.holds("acme")) == 0
    now = stack.clock.now_ms()
    limits = stack.holder.current.organizations["acme"].limits
    rpm = stack.redis.hgetall(stack.keys.bucket("acme", "org", "rpm"))
    if rpm.get("t") == str(now):  # admitted by this example (metered routes only)
        assert int(rpm["l"]) == limits.rpm * 1000 * 60_000 - 60_000_000
        tpm = stack.redis.hgetall(stack.keys.bucket("acme", "org", "tpm"))
        charged = delta["in"] + delta["cw"] + delta["out"]
        level = int(tpm["l"]) if tpm.get("t") == str(now) else limits.tpm * 60_000
        assert level == (limits.tpm - charged) * 60_000


# --- malformed requests and headers ---------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
messages = st.one_of(
    json_values,
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"])},
            optional={"content": st.one_of(st.text(max_size=40), json_values)},
        ),
        max_size=3,
    ),
)
request_dicts = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(PRICED), json_values)},
    optional={
        "messages": messages,
        "prompt": json_values,
        "input": json_values,
        "stream": st.one_of(st.booleans(), json_values),
        "max_tokens": json_values,
        "stream_options": json_values,
        "system": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(orjson.dumps),
    request_dicts.map(orjson.dumps),
    request_dicts.map(lambda d: orjson.dumps(d)[: max(1, len(orjson.dumps(d)) // 2)]),
)
# Header values http.client can send: visible latin-1, no CR/LF.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=30,
)
extra_headers = st.dictionaries(
    st.sampled_from(
        [
            "content-type",
            "anthropic-version",
            "x-tollway-session",
            "x-forwarded-host",
            "accept-encoding",
            "openai-organization",
            "x-anything",
            "stream",
        ]
    ),
    header_text,
    max_size=4,
)


@SETTINGS
@given(
    path=st.sampled_from(ROUTES),
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]),
    body=bodies,
    auth=st.sampled_from(["bearer", "x-api-key", "none", "garbage"]),
    garbage=header_text,
    extra=extra_headers,
)
def test_malformed_requests_never_500_and_account_exactly(
    world, path, method, body, auth, garbage, extra
) -> None:
    stack, secret, _ = world
    before = Before(stack)
    headers = dict(extra)
    if auth == "bearer":
        headers["authorization"] = f"Bearer {secret}"
    elif auth == "x-api-key":
        headers["x-api-key"] = secret
    elif auth == "garbage":
        headers["authorization"] = garbage
    reply = fetch(method, stack.url + path, body=body, headers=headers)
    assert reply.status < 500, (reply.status, reply.body[:300])
    if reply.status >= 400 and len(stack.fake.requests) == before.forwarded:
        check(stack, before, reply.status, forwarded=False)
    else:
        check(stack, before, reply.status, forwarded=True)


# --- malformed upstream answers ---------------------------------------------------------------

counts = st.one_of(
    st.integers(min_value=-5, max_value=5000),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.none(),
)


@st.composite
def openai_answers(draw) -> tuple[bool, list]:
    usage = {"prompt_tokens": draw(counts), "completion_tokens": draw(counts)}
    if draw(st.booleans()):
        usage["prompt_tokens_details"] = {"cached_tokens": draw(counts)}
    if not draw(st.booleans()):  # JSON
        body = orjson.dumps(
            {
                "id": "c1",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                "usage": draw(st.one_of(st.just(usage), json_values)),
            }
        )
        cut = draw(st.integers(min_value=0, max_value=len(body)))
        mode = draw(st.sampled_from(["whole", "truncated", "cut", "garbage"]))
        if mode == "truncated":
            return False, [body[:cut]]
        if mode == "cut":
            return False, [body[:cut], CUT]
        if mode == "garbage":
            return False, [body[:cut] + draw(st.binary(max_size=20)) + body[cut:]]
        return False, [body]
    events = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        kind = draw(st.sampled_from(["text", "usage", "garbage", "done", "error", "cut"]))
        if kind == "text":
            chunk = {"choices": [{"index": 0, "delta": {"content": draw(st.text(max_size=12))}}]}
            events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        elif kind == "usage":
            events.append(b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n")
        elif kind == "garbage":
            events.append(draw(st.binary(max_size=30)))
        elif kind == "done":
            events.append(b"data: [DONE]\n\n")
        elif kind == "error":
            events.append(b'data: {"error": {"message": "boom"}}\n\n')
        else:
            events.append(CUT)
            break
    return True, events


@st.composite
def anthropic_answers(draw) -> tuple[bool, list]:
    usage = {"input_tokens": draw(counts), "output_tokens": draw(counts)}
    if draw(st.booleans()):
        usage["cache_read_input_tokens"] = draw(counts)
        usage["cache_creation_input_tokens"] = draw(counts)
    if not draw(st.booleans()):
        body = orjson.dumps(
            {
                "id": "m1",
                "type": "message",
                "role": "assistant",
                "model": "claude-haiku-4-5",
                "content": [{"type": "text", "text": "hi"}],
                "usage": draw(st.one_of(st.just(usage), json_values)),
            }
        )
        cut = draw(st.integers(min_value=0, max_value=len(body)))
        return False, draw(st.sampled_from([[body], [body[:cut]], [body[:cut], CUT]]))

    def event(name: str, data: dict) -> bytes:
        return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"

    events = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        kind = draw(st.sampled_from(["start", "text", "delta", "stop", "garbage", "error", "cut"]))
        if kind == "start":
            message = {"id": "m1", "type": "message", "model": "claude-haiku-4-5", "usage": usage}
            events.append(event("message_start", {"type": "message_start", "message": message}))
        elif kind == "text":
            delta = {"type": "text_delta", "text": draw(st.text(max_size=12))}
            events.append(
                event("content_block_delta", {"type": "content_block_delta", "delta": delta})
            )
        elif kind == "delta":
            events.append(event("message_delta", {"type": "message_delta", "usage": usage}))
        elif kind == "stop":
            events.append(event("message_stop", {"type": "message_stop"}))
        elif kind == "garbage":
            events.append(draw(st.binary(max_size=30)))
        elif kind == "error":
            events.append(event("error", {"type": "error", "error": {"type": "api_error"}}))
        else:
            events.append(CUT)
            break
    return True, events


@SETTINGS
@given(
    provider=st.sampled_from(["openai", "anthropic"]),
    data=st.data(),
)
def test_malformed_upstream_answers_never_500_and_account_exactly(world, provider, data) -> None:
    stack, secret, scripted = world
    sse, pieces = data.draw(openai_answers() if provider == "openai" else anthropic_answers())
    content_type = "text/event-stream" if sse else "application/json"
    scripted.script = Script(headers={"content-type": content_type}, pieces=pieces)
    stack.point_upstreams_to(scripted.url)
    try:
        before = Before(stack)
        if provider == "openai":
            path, headers = "/v1/chat/completions", {"authorization": f"Bearer {secret}"}
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        else:
            path = "/v1/messages"
            headers = {"x-api-key": secret, "anthropic-version": "2023-06-01"}
            body = {"model": "claude-haiku-4-5", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        reply = fetch("POST", stack.url + path, json={**body, "stream": sse}, headers=headers)
        assert reply.status in (200, 502), (reply.status, reply.body[:300])
        check(stack, before, reply.status, forwarded=True)
    finally:
        stack.point_upstreams_to(stack.fake_url)


def test_the_event_loop_is_left_clean(world) -> None:
    """After all the examples above, nothing runs on the loop but servers and the journal."""
    stack, _, _ = world
    settled(stack)

    async def names() -> list[str]:
        return sorted(
            t.get_coro().__qualname__  # type: ignore[union-attr]
            for t in asyncio.all_tasks()
            if t is not asyncio.current_task()
        )

    assert not [n for n in stack.run(names()) if "settle" in n.lower() or "relay" in n.lower()]
