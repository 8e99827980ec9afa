"""The paths where a client might get tokens for free, each through the official SDKs:
what the upstream billed and what was charged.

- a client that stops reading once it has the text (Responses API), before the usage;
- a client timeout before the first text (the upstream slow to start);
- the same when the upstream stays silent past the drain bound: charged its input;
- ``background: true`` on /v1/responses: refused before forwarding;
- Claude Code's request shape through the shipped example config: priced.

Real time is used where a client must actually go away (bounded waits, commented)."""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import openai
import pytest
from tollway.proxy.gateway.tokens import TokenCounter

HELLO = [{"role": "user", "content": "Say hello"}]
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "tollway.yaml"


def leave_on_timeout(stack, provider: str) -> None:
    """Stream a request with a 0.5 s client timeout that runs out before any text."""
    key = stack.key()
    with pytest.raises(Exception) as caught:
        if provider == "openai":
            client = stack.openai(key, timeout=0.5)
            for _ in client.chat.completions.create(model="gpt-5.1", messages=HELLO, stream=True):
                pass
        else:
            client = stack.anthropic(key, timeout=0.5)
            kw = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": HELLO}
            for _ in client.messages.create(**kw, stream=True):
                pass
    assert "Timeout" in type(caught.value).__name__, caught.value


def bill(rates: dict[str, str], **tokens: int) -> int:
    """Micro-USD the provider bills: tokens times USD per million, rounded once, half up."""
    usd = sum(n * Fraction(rates[kind]) for kind, n in tokens.items()) / 1_000_000
    return int(usd * 1_000_000 + Fraction(1, 2))


def settled_cost(stack, timeout: float = 10.0) -> int:
    # Real time, bounded: the settlement starts only once the proxy is done with the
    # upstream, which happens in the background after the client left.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        day = stack.day()
        if "org|cost" in day or day.get("org|fail"):
            stack.wait_settled()
            return stack.day().get("org|cost", 0)
        time.sleep(0.02)
    raise AssertionError("nothing was settled")


GPT5 = {"input": "1.25", "output": "10", "cache_read": "0.125"}
SONNET = {"input": "3", "output": "15", "cache_write": "3.75", "cache_read": "0.30"}


def test_responses_client_that_stops_at_the_text_pays_reasoning_and_context(stack) -> None:
    b = stack.fake.behavior
    b.input_tokens, b.cache_read_tokens = 2_000, 48_000  # server-side conversation state
    b.output_tokens, b.reasoning_tokens = 3_000, 2_990
    b.delay_before_end = 0.5  # the usage comes after the text, as it does from OpenAI
    client = stack.openai(stack.key())
    text = ""
    with client.responses.create(model="gpt-5.1", input="Say hello", stream=True) as events:
        for event in events:
            if event.type == "response.output_text.done":
                text = event.text
                break  # the client has the whole text and leaves
    assert text == b.text
    cost = settled_cost(stack)
    rec = stack.fake.responses[-1]
    assert rec["completed"] and rec["reasoning_tokens"] == 2_990
    expected = bill(GPT5, input=2_000, cache_read=48_000, output=3_000)
    assert cost == expected == 38_500  # 2k x 1.25 + 48k x 0.125 + 3k x 10 (USD/M)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_client_timeout_before_the_first_text_pays_what_the_upstream_bills(
    stack, provider: str
) -> None:
    b = stack.fake.behavior
    b.input_tokens, b.cache_write_tokens, b.output_tokens = 2_000, 500, 5
    b.pause_after_chunks = 0  # the upstream is slow to start generating
    leave_on_timeout(stack, provider)
    stack.fake.release()  # the upstream goes on; nobody reads it but Tollway
    cost = settled_cost(stack)
    assert stack.fake.responses[-1]["completed"]
    if provider == "openai":
        expected = bill({**GPT5, "cache_write": "1.50"}, input=2_000, cache_write=500, output=5)
    else:
        expected = bill(SONNET, input=2_000, cache_write=500, output=5)
    assert cost == expected > 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_upstream_silent_past_the_drain_bound_is_charged_its_input(
    stack_factory, provider: str
) -> None:
    stack = stack_factory(extra_yaml="metering: {drain_max_seconds: 0.3}\n")
    b = stack.fake.behavior
    b.input_tokens, b.cache_write_tokens = 2_000, 500
    b.pause_after_chunks = 0  # and, once started, it goes silent again past the bound
    b.delay_between_chunks = 2.0
    leave_on_timeout(stack, provider)
    # Tollway learns the client left on its next write: the upstream's first text, which
    # then starts the drain; the upstream goes silent again for longer than the bound.
    stack.fake.release()
    cost = settled_cost(stack)
    first = TokenCounter().count(stack.fake.responses[-1]["text_sent"][:6])  # "Hello "
    if provider == "anthropic":  # its input as reported in message_start
        expected = bill(SONNET, input=2_000, cache_write=500, output=first)
    else:  # OpenAI reports usage only at the end: the input as estimated
        est = TokenCounter().estimate_request(
            {"model": "gpt-5.1", "messages": HELLO, "stream": True}, "/v1/chat/completions"
        )
        expected = bill(GPT5, input=est, output=first)
    assert cost == expected > 0


def test_background_responses_are_refused_before_forwarding(stack) -> None:
    client = stack.openai(stack.key())
    with pytest.raises(openai.BadRequestError, match="Background responses"):
        client.responses.create(model="gpt-5.1", input="Say hello", background=True)
    assert stack.fake.requests == []
    assert stack.day() == {}


CLAUDE_CODE_BETAS = [
    "claude-code-20250219",
    "interleaved-thinking-2025-05-14",
    "fine-grained-tool-streaming-2025-05-14",
]


@pytest.mark.parametrize("model", ["claude-sonnet-5-5", "claude-opus-4-8", "claude-haiku-4-5"])
def test_claude_code_request_shape_through_the_shipped_example_is_priced(
    stack_factory, model: str
) -> None:
    text = EXAMPLE.read_text()
    prices = text[text.index("prices:") : text.index("\norganizations:")] + "\n"
    stack = stack_factory(prices_yaml=prices)
    b = stack.fake.behavior
    b.input_tokens, b.cache_write_tokens, b.cache_read_tokens = 12, 4_000, 30_000
    b.cache_write_1h_tokens = 4_000  # Claude Code caches its system prompt for an hour
    b.output_tokens = 800
    client = stack.anthropic(
        stack.key(),
        default_headers={"user-agent": "claude-cli/2.1.0 (external, cli)", "x-app": "cli"},
    )
    system = [
        {
            "type": "text",
            "text": "You are Claude Code.",
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    with client.beta.messages.stream(
        model=model,
        max_tokens=32000,
        system=system,
        messages=HELLO,
        betas=CLAUDE_CODE_BETAS,
        metadata={"user_id": "user_abc_account_def_session_ghi"},
    ) as s:
        s.get_final_message()
    sent = stack.fake.requests[-1]
    assert sent.headers["anthropic-beta"] == ",".join(CLAUDE_CODE_BETAS)
    assert sent.json["max_tokens"] == 32000
    cfg = stack.holder.current
    price = cfg.price_book.find(model, stack.clock.now_ms())
    assert price is not None
    usd = {
        k: str(Fraction(getattr(price, k), 1_000_000))
        for k in ("input", "output", "cache_write_1h", "cache_read")
    }
    expected = bill(
        {
            "input": usd["input"],
            "output": usd["output"],
            "cw1h": usd["cache_write_1h"],
            "cr": usd["cache_read"],
        },
        input=12,
        output=800,
        cw1h=4_000,
        cr=30_000,
    )
    assert settled_cost(stack) == expected > 0
