"""A proxy process dies (SIGKILL) in the middle of its work.

The request it was streaming leaves a hold: reserved tokens and a held cost. Nobody will
settle it; the hold's time-to-live gives everything back, so that the organization's
buckets and balance end up exactly where an identical organization stands whose same
request was released normally. Settlements a dead process had journaled are settled by
the next process that starts on the same data directory."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis as sync_redis
from tollway.config import load_config
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import ManualClock, SystemClock
from tollway.limits.credits import Credits
from tollway.limits.meter import Charge, Meter
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store
from tollway.limits.usage import Usage

from tests.support.fakeupstream import run_in_thread
from tests.support.faultkit import (
    ProxyProcess,
    TcpProxy,
    config_yaml,
    expected_usage,
    fetch,
    openai_body,
    request_for,
    wait_for,
)
from tests.support.ledgerkit import process_ledger
from tests.support.stack import ENV

pytestmark = pytest.mark.slow

HOLD_TTL = 2  # seconds: store.hold_ttl_seconds of these proxies
ORGS = """
organizations:
  victim:
    limits: {rpm: 600, tpm: 600000}
    billing: {mode: prepaid}
  ctl:
    limits: {rpm: 600, tpm: 600000}
    billing: {mode: prepaid}
"""
CREDIT = 5_000_000  # micro-USD bought by each organization


@pytest.fixture
def fake() -> Iterator[tuple]:
    with run_in_thread() as (fake, url):
        yield fake, url


def setup(tmp_path: Path, redis_url: str, upstream: str, store_yaml: str):
    prefix = "c" + tmp_path.name[-10:].replace("_", "")
    path = tmp_path / "tollway.yaml"
    path.write_text(config_yaml(redis_url, prefix, upstream, ORGS, store_yaml))
    return path, load_config(path, ENV)


async def _prepare(url: str, cfg, orgs: list[str]) -> dict[str, tuple]:
    """Buy credit for each organization and make it a key: {org: (record, secret)}."""
    store = Store.from_url(url, Keys(cfg.store.key_prefix), timeout=2)
    try:
        # The real clock: the `tollway serve` processes run on it, and a purchase dated
        # months before their requests would be folded out of the ledger by them.
        credits = Credits(store, SystemClock(), lambda: cfg)
        out = {}
        for org in orgs:
            await credits.buy(org, CREDIT)
            out[org] = await ApiKeys(store).create(org, 0)
        return out
    finally:
        await store.close()


def stream_until_paused(url: str, secret: str) -> threading.Thread:
    """Start a streaming chat through the proxy and return once part of it has arrived
    (the fake pauses the answer after two content chunks)."""
    arrived = threading.Event()

    def run() -> None:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=orjson.dumps(openai_body(stream=True)),
                headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
            )
            resp = conn.getresponse()
            got = b""
            while got.count(b"data:") < 3:  # the role chunk and two content chunks
                got += resp.read1(65536)
            arrived.set()
            while resp.read1(65536):
                pass
        except (OSError, http.client.HTTPException):
            pass  # the proxy was killed: the connection breaks
        finally:
            arrived.set()
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert arrived.wait(30)
    return thread


def test_sigkill_mid_stream_leaves_no_permanent_hold(tmp_path: Path, redis_url: str, fake):
    fake_upstream, upstream = fake
    path, cfg = setup(tmp_path, redis_url, upstream, f"hold_ttl_seconds: {HOLD_TTL}")
    keys = Keys(cfg.store.key_prefix)
    made = asyncio.run(_prepare(redis_url, cfg, ["victim", "ctl"]))
    proxy = ProxyProcess(path, tmp_path / "data")
    proxy.wait_ready()
    fake_upstream.behavior.pause_after_chunks = 2
    client = stream_until_paused(proxy.url, made["victim"][1])
    proxy.kill()
    fake_upstream.release()
    client.join(10)

    r = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    [(rid, expires)] = r.zrange(keys.holds("victim"), 0, -1, withscores=True)
    admitted_at = int(expires) - HOLD_TTL * 1000
    hold = r.hgetall(keys.hold("victim", rid))
    held = int(hold["c"])
    assert held > 0 and int(r.hget(keys.account("victim"), "held")) == held
    reserved = dict(zip(hold["b"].split()[::2], map(int, hold["b"].split()[1::2]), strict=True))
    est = reserved[keys.bucket("victim", "org", "tpm")] // 60000
    assert est > 0

    async def converge():
        store = Store.from_url(redis_url, keys, timeout=2)
        try:
            clock = ManualClock(admitted_at)
            meter = Meter(store, clock, lambda: cfg)
            ctl = made["ctl"][0].principal
            victim = made["victim"][0].principal
            # The control organization gets the very same request, released normally.
            assert (await meter.admit(ctl, "req_ctl", "gpt-4o-mini", est, held)).admitted
            await meter.settle(Charge(ctl, "req_ctl", "gpt-4o-mini", Usage(), 0, False))
            # Once the hold's time is up, both take one more request, and stand equal.
            clock.set(admitted_at + HOLD_TTL * 1000 + 1000)
            after = [
                await meter.admit(p, f"req_next_{p.org}", "gpt-4o-mini", 10, 1)
                for p in (victim, ctl)
            ]
            return [[(b.spec.limit, b.remaining, b.reset_ms) for b in d.buckets] for d in after]
        finally:
            await store.close()

    victim_buckets, ctl_buckets = asyncio.run(converge())
    assert victim_buckets == ctl_buckets
    assert r.hgetall(keys.account("victim")) == r.hgetall(keys.account("ctl"))
    assert int(r.hget(keys.account("victim"), "balance")) == CREDIT  # nothing was debited
    assert r.zrange(keys.holds("victim"), 0, -1) == ["req_next_victim"]
    assert not r.exists(keys.hold("victim", rid))
    events = process_ledger(redis_url, keys.prefix, tmp_path / "data").events("victim")
    assert [e["type"] for e in events] == ["purchase"]  # nothing settled
    r.close()


def test_a_dead_process_journal_is_settled_by_the_next(tmp_path: Path, redis_url: str, fake):
    """Fail-open with the store away: the process journals its settlements and dies; the
    next process on the same data directory settles them, exactly."""
    fake_upstream, upstream = fake
    relay = TcpProxy(int(redis_url.rsplit(":", 1)[1]))
    try:
        path, cfg = setup(
            tmp_path, relay.url, upstream, "on_unavailable: open\ntimeout_seconds: 0.3"
        )
        made = asyncio.run(_prepare(redis_url, cfg, ["victim"]))
        secret = made["victim"][1]
        first = ProxyProcess(path, tmp_path / "data")
        first.wait_ready()

        def post(i: int) -> int:
            p, headers, body = request_for(i, secret)
            return fetch("POST", first.url + p, json=body, headers=headers).status

        ledger = process_ledger(redis_url, cfg.store.key_prefix, tmp_path / "data")

        def debits() -> list[dict[str, str]]:
            return ledger.events("victim", "debit")

        assert post(0) == 200  # the key is now known to the process
        wait_for(lambda: len(debits()) == 1, 10, "the first settlement")
        relay.set_mode("refuse")
        assert [post(i) for i in range(1, 9)] == [200] * 8
        wait_for(
            lambda: first.metric("tollway_journal_entries_total", event="written") == 8,
            10,
            "the journal writes",
        )
        first.kill()
        segments = list((tmp_path / "data" / "journal").glob("*.jsonl"))
        assert sum(p.read_bytes().count(b"\n") for p in segments) == 8

        relay.set_mode("pass")
        second = ProxyProcess(path, tmp_path / "data")
        second.wait_ready()
        wait_for(
            lambda: second.metric("tollway_journal_entries_total", event="replayed") == 8,
            15,
            "the replay by the next process",
        )
        second.stop()
        assert not list((tmp_path / "data" / "journal").glob("*.jsonl"))

        expected = expected_usage(fake_upstream.responses, cfg.prices)
        assert expected["req"] == 9 == len(debits())
        assert sum(int(d["cost"]) for d in debits()) == expected["cost"]
    finally:
        relay.close()
