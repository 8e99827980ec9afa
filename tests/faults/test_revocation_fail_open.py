"""A revocation reaches a process that serves fail-open: keys revoked before the store went
away (by another replica, or the admin API of another process) are refused from the cache,
while the keys still valid keep being served. Real Valkey behind a relay that can refuse
connections; the official SDK as the client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from tollway.limits.apikeys import ApiKeys
from tollway.limits.store import Store
from tollway.proxy.runtime.app import APIKEYS

from tests.support.faultkit import FaultStack, TcpProxy, Valkey, wait_for

ORGS = "organizations:\n  acme: {limits: {rpm: 1000}}\n"
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[Valkey]:
    server = Valkey(tmp_path / "valkey")
    server.start()
    yield server
    server.close()


def test_a_key_revoked_before_an_outage_is_refused_fail_open(valkey, tmp_path) -> None:
    relay = TcpProxy(valkey.port)
    store_yaml = "on_unavailable: open\ntimeout_seconds: 0.3\n"
    stack = FaultStack(relay.url, tmp_path, orgs_yaml=ORGS, store_yaml=store_yaml)
    try:
        kept, kept_secret = stack.key_record("acme", name="kept")
        gone, gone_secret = stack.key_record("acme", name="gone")
        for secret in (kept_secret, gone_secret):  # both now in the proxy's key cache
            stack.openai(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        # Another process revokes one (its own store client: the proxy's cache is untouched).
        other = Store.from_url(valkey.url, stack.keys, timeout=2.0)
        stack.run(ApiKeys(other).revoke(gone.key_id))
        stack.run(other.close())
        # The proxy's poll (every second) picks it up while the store is there.
        wait_for(lambda: gone.key_id in stack.app[APIKEYS].revoked, 5, "the revocation poll")
        relay.set_mode("refuse")  # the store goes away
        with pytest.raises(openai.AuthenticationError):
            stack.openai(gone_secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        served = stack.openai(kept_secret).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO
        )
        assert served.choices[0].message.content
        assert kept.key_id not in stack.app[APIKEYS].revoked
    finally:
        relay.set_mode("pass")
        stack.close()
        relay.close()
