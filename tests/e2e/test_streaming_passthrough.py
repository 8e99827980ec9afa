"""Streamed chunks leave Tollway as they arrive: no buffering.

The fake upstream sends two content chunks, then pauses until the test releases it. The
client, an official SDK streaming through Tollway, must see both chunks while the
upstream is still paused. A watchdog releases the pause after `WATCHDOG` seconds so that
a proxy that buffers fails the test instead of hanging it: this is the one real-time wait
here, since what is tested is that bytes move while the upstream waits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.support.stack import Stack

WATCHDOG = 5.0  # seconds; far above loopback latency, far below a test timeout
PAUSE_AFTER = 2


class Pause:
    """The upstream's pause, released by the test or, failing that, by the watchdog."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.released = threading.Event()
        self.timer = threading.Timer(WATCHDOG, self.release)

    def release(self) -> None:
        self.released.set()
        self.stack.fake.release()

    def check_paused(self, seen: list[str]) -> None:
        """Called when the client has seen `PAUSE_AFTER` content chunks."""
        assert not self.released.is_set(), "the chunks arrived only after the pause ended"
        record = self.stack.fake.responses[-1]
        assert record["text_sent"] == "".join(seen)  # the upstream sent nothing more yet
        assert not record["completed"]
        self.release()


@pytest.fixture
def paused(stack: Stack) -> Iterator[tuple[Stack, Pause, str]]:
    stack.fake.behavior.text = "one two three four five six"
    stack.fake.behavior.chunks = 6
    stack.fake.behavior.pause_after_chunks = PAUSE_AFTER
    pause = Pause(stack)
    pause.timer.start()
    try:
        yield stack, pause, stack.key()
    finally:
        pause.timer.cancel()
        stack.fake.release()


def _openai_chat(stack: Stack, pause: Pause, key: str, **extra) -> list:
    client = stack.openai(key)
    chunks, seen = [], []
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Count to six"}],
        stream=True,
        **extra,
    )
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            seen.append(chunk.choices[0].delta.content)
            if len(seen) == PAUSE_AFTER:
                pause.check_paused(seen)
    assert "".join(seen) == "one two three four five six"
    return chunks


def test_openai_stream_with_injected_usage_is_not_buffered(paused) -> None:
    """Tollway adds include_usage and strips the usage chunk: events still flow at once."""
    stack, pause, key = paused
    chunks = _openai_chat(stack, pause, key)
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert stack.fake.requests[-1].json["stream_options"] == {"include_usage": True}


def test_openai_stream_with_client_usage_is_not_buffered(paused) -> None:
    stack, pause, key = paused
    chunks = _openai_chat(stack, pause, key, stream_options={"include_usage": True})
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_openai_completions_stream_is_not_buffered(paused) -> None:
    stack, pause, key = paused
    client = stack.openai(key)
    seen: list[str] = []
    for chunk in client.completions.create(model="gpt-4o-mini", prompt="Count", stream=True):
        if chunk.choices and chunk.choices[0].text:
            seen.append(chunk.choices[0].text)
            if len(seen) == PAUSE_AFTER:
                pause.check_paused(seen)
    assert "".join(seen) == "one two three four five six"


def test_openai_responses_stream_is_not_buffered(paused) -> None:
    stack, pause, key = paused
    client = stack.openai(key)
    seen: list[str] = []
    for event in client.responses.create(model="gpt-4o-mini", input="Count", stream=True):
        if event.type == "response.output_text.delta":
            seen.append(event.delta)
            if len(seen) == PAUSE_AFTER:
                pause.check_paused(seen)
    assert "".join(seen) == "one two three four five six"


def test_anthropic_stream_is_not_buffered(paused) -> None:
    stack, pause, key = paused
    client = stack.anthropic(key)
    seen: list[str] = []
    with client.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=64,
        messages=[{"role": "user", "content": "Count to six"}],
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                seen.append(event.delta.text)
                if len(seen) == PAUSE_AFTER:
                    pause.check_paused(seen)
        message = stream.get_final_message()
    assert "".join(seen) == "one two three four five six"
    assert message.usage.output_tokens == 6


def test_metering_is_exact_after_a_paused_stream(paused) -> None:
    """The pause changes nothing to what is charged: the stream's reported usage."""
    stack, pause, key = paused
    _openai_chat(stack, pause, key)
    stack.wait_settled()
    day = stack.day("acme", "2026-01-01")
    record = stack.fake.responses[-1]
    assert int(day["org|out"]) == record["output_tokens"] == 6
    assert int(day["org|in"]) == record["input_tokens"]
