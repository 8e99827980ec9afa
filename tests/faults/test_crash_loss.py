"""What a SIGKILL'd proxy loses: the usage of the requests it had in flight. Measured,
and bounded: it is never charged (the balance is untouched), it is at most the full cost
of those answers, the holds that stood for them are given back by their TTL, and the
organization is admitted again as before. Real `tollway serve` processes, real Valkey."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis as sync_redis
import requests
from tollway.limits.prices import cost_micro
from tollway.limits.rkeys import Keys
from tollway.limits.usage import Usage

from tests.faults.test_crash import CREDIT, HOLD_TTL, _prepare, setup, stream_until_paused
from tests.support.fakeupstream import OPENAI_KEY, run_in_thread
from tests.support.faultkit import ProxyProcess, openai_body, wait_for

pytestmark = pytest.mark.slow
IN_FLIGHT = 6


@pytest.fixture
def fake() -> Iterator[tuple]:
    with run_in_thread() as (fake, url):
        yield fake, url


def post(url: str, secret: str) -> requests.Response:
    body = orjson.dumps(openai_body(stream=False))
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    return requests.post(url + "/v1/chat/completions", data=body, headers=headers, timeout=10)


def test_sigkill_loses_at_most_the_in_flight_answers(tmp_path: Path, redis_url: str, fake):
    fake_upstream, upstream = fake
    path, cfg = setup(tmp_path, redis_url, upstream, f"hold_ttl_seconds: {HOLD_TTL}")
    keys = Keys(cfg.store.key_prefix)
    made = asyncio.run(_prepare(redis_url, cfg, ["victim"]))
    secret = made["victim"][1]
    proxy = ProxyProcess(path, tmp_path / "data")
    proxy.wait_ready()
    fake_upstream.behavior.pause_after_chunks = 2
    clients = [stream_until_paused(proxy.url, secret) for _ in range(IN_FLIGHT)]
    r = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    holds = r.zrange(keys.holds("victim"), 0, -1)
    assert len(holds) == IN_FLIGHT
    held = sum(int(r.hget(keys.hold("victim", rid), "c")) for rid in holds)
    proxy.kill()
    fake_upstream.release()
    for c in clients:
        c.join(10)

    # The most the upstream bills for one of these answers: the same request, whole.
    full = post(upstream, OPENAI_KEY).json()["usage"]
    price = cfg.price_book.find("gpt-4o-mini", int(time.time() * 1000))
    per_answer = cost_micro(price, Usage(full["prompt_tokens"], full["completion_tokens"]))
    bound = IN_FLIGHT * per_answer
    print(
        f"SIGKILL with {IN_FLIGHT} streams in flight: held {held} micro-USD, unbilled at most "
        f"{bound} micro-USD ({per_answer} per answer), charged 0"
    )
    assert int(r.hget(keys.account("victim"), "balance")) == CREDIT  # charged nothing
    # The holds expire by their TTL: the next admission after it gives everything back.
    time.sleep(HOLD_TTL + 0.5)
    second = ProxyProcess(path, tmp_path / "data")
    try:
        second.wait_ready()
        reply = post(second.url, secret)
        assert reply.status_code == 200
        wait_for(lambda: r.zcard(keys.holds("victim")) == 0, 10, "the next settlement")
        assert int(r.hget(keys.account("victim"), "held") or 0) == 0
        assert int(r.hget(keys.account("victim"), "balance")) == CREDIT - per_answer
    finally:
        second.stop()
        r.close()
