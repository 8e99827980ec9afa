"""50 simultaneous requests through the proxy against a nearly empty TPM bucket."""

from __future__ import annotations

import asyncio

import openai
from tollway.proxy.gateway.tokens import TokenCounter

HELLO = [{"role": "user", "content": "Say hello"}]


async def test_fifty_simultaneous_requests_against_a_nearly_empty_bucket(stack_factory):
    stack = stack_factory("organizations:\n  acme:\n    limits: {tpm: 60000}\n")
    client = stack.async_openai(stack.key())
    est = TokenCounter().estimate_request(
        {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}, "/v1/chat/completions"
    )
    # Leave room for exactly 7 reservations: the 8th finds the bucket at zero.
    fill = 60_000 - 7 * est
    stack.fake.behavior.input_tokens, stack.fake.behavior.output_tokens = fill - 5, 5
    await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    # Each admitted request actually uses 3 input + 2 output tokens. Admitted streams wait
    # at the upstream until every admission is decided, so no settlement can give tokens
    # back while others are still being admitted.
    stack.fake.behavior.input_tokens, stack.fake.behavior.output_tokens = 3, 2
    stack.fake.behavior.pause_after_chunks = 0

    async def one() -> bool:
        try:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True
            )
        except openai.RateLimitError:
            return False
        async for _ in stream:
            pass
        return True

    tasks = [asyncio.ensure_future(one()) for _ in range(50)]
    for _ in range(1000):  # bounded: 43 refusals come back at once
        if sum(t.done() for t in tasks) == 43:
            break
        await asyncio.sleep(0.01)
    assert sum(t.done() for t in tasks) == 43 and not any(t.result() for t in tasks if t.done())
    stack.fake.release()
    results = await asyncio.gather(*tasks)
    assert sum(results) == 7
    assert len(stack.fake.requests) == 1 + 7
    stack.wait_settled()
    stack.clock.advance(seconds=3)  # 1000 tokens/s
    stack.fake.behavior.pause_after_chunks = None
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, stream=True
    )
    # Before this probe: room for 7 estimates, less the 7 requests' 5 tokens each, plus
    # 3 s of refill; the probe then reserves its own estimate.
    expected = 7 * est - 7 * 5 + 3_000 - est
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(expected)
