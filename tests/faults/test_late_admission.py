"""A slow store (paused, not dead): the admit script reaches it, Tollway's store timeout
runs out and the client gets its 503 (fail-closed), then the store wakes up and runs the
admission nobody waits for. Tollway releases it: no hold is left until its time-to-live,
the held money and the reserved tokens come back at once. Real Valkey, SIGSTOP/SIGCONT."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from tollway.proxy.runtime.app import HANDLER

from tests.support.faultkit import FaultStack, Valkey, wait_for

ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 100000}
    billing: {mode: prepaid}
"""
HELLO = [{"role": "user", "content": "hello " * 200}]


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Valkey]:
    server = Valkey(tmp_path / "valkey")
    server.start()
    yield server
    server.close()


def test_an_admission_that_runs_after_the_503_is_released(valkey, tmp_path, caplog) -> None:
    store_yaml = "on_unavailable: closed\ntimeout_seconds: 0.3\nhold_ttl_seconds: 900\n"
    stack = FaultStack(valkey.url, tmp_path, orgs_yaml=ORGS, store_yaml=store_yaml)
    try:
        stack.run(_buy(stack))
        client = stack.openai(stack.key())
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # warm up
        stack.wait_settled()
        acct_before = stack.redis.hgetall(stack.keys.account("acme"))
        tpm_key = stack.keys.bucket("acme", "org", "tpm")
        tpm_before = stack.redis.hgetall(tpm_key)
        valkey.pause()
        try:
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            assert caught.value.status_code == 503
            time.sleep(0.5)  # the admit waits in the paused server's socket
        finally:
            valkey.resume()
        rid = caught.value.response.headers["x-request-id"]

        def released() -> bool:
            return stack.redis.hget(stack.keys.hold("acme", rid), "released") is not None

        wait_for(released, 10, "the late admission's release")
        # The admit ran after the 503 (the paused server had taken it), then the release
        # gave it back: nothing of it is left, long before the 900 s TTL.
        wait_for(lambda: "late admission released" in caplog.text, 5, "the release's log")
        assert stack.redis.zcard(stack.keys.holds("acme")) == 0
        assert stack.redis.hgetall(stack.keys.account("acme")) == acct_before
        assert stack.redis.hgetall(tpm_key) == tpm_before  # the reserved tokens are back
        assert not stack.app[HANDLER].releasing  # the release task is done
    finally:
        stack.close()


async def _buy(stack) -> None:
    from tollway.limits.credits import Credits

    await Credits(stack.store, stack.clock, lambda: stack.holder.current).buy("acme", 5_000_000)
