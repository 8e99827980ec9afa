"""Soak: mixed traffic through four `tollway serve` processes against one organization.

Both providers, streaming and not, while the upstream keeps changing its mind (errors,
rate limits, error events, cut streams, slow answers). Afterwards the ledger, the day's
report and the credit balance differ from the sum of the usage the upstream reported by
exactly zero, and each process's memory is reported (RSS at the start and the end) and
must stay stable.

The run lasts ``TOLLWAY_SOAK_SECONDS`` (default 20, short enough for CI); the full soak is
``TOLLWAY_SOAK_SECONDS=60 pytest tests/faults/test_soak.py -s``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from tollway.config import load_config
from tollway.limits.clock import ManualClock
from tollway.limits.credits import Credits
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store

from tests.support.fakeupstream import Behavior, run_in_thread
from tests.support.faultkit import ProxyProcess, config_yaml, drive, expected_usage
from tests.support.ledgerkit import process_ledger
from tests.support.stack import ENV

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("TOLLWAY_SOAK_SECONDS", "20"))
PROCESSES = 4
ORGS = """
organizations:
  acme:
    limits: {rpm: 10000000, tpm: 10000000000}
    billing: {mode: prepaid}
"""
CREDIT = 10**12
# What the upstream does, in turn, for a while each: mostly fine, sometimes not.
MOODS = [
    Behavior(),
    Behavior(chunks=12, text="A longer answer, cut into twelve pieces for the stream."),
    Behavior(status=500),
    Behavior(),
    Behavior(status=429),
    Behavior(stream_error_after_chunks=2),
    Behavior(),
    Behavior(cut_after_chunks=0),
    Behavior(delay_first_byte=0.05, delay_between_chunks=0.01),
    Behavior(input_tokens=1500, output_tokens=700, cache_read_tokens=300),
]
# Growth allowed over the run: caches and pools warming up, allocator slack. A leak of a
# few kilobytes per request over thousands of requests goes past it.
RSS_GROWTH_LIMIT_KB = 40 * 1024


async def _prepare(url: str, cfg) -> str:
    from tollway.limits.apikeys import ApiKeys

    store = Store.from_url(url, Keys(cfg.store.key_prefix), timeout=2)
    try:
        await Credits(store, ManualClock(), lambda: cfg).buy("acme", CREDIT)
        _, secret = await ApiKeys(store).create("acme", 0)
        return secret
    finally:
        await store.close()


def test_soak_four_processes_one_organization(tmp_path: Path, redis_url: str) -> None:
    with run_in_thread() as (fake, upstream):
        prefix = "soak" + tmp_path.name[-8:].replace("_", "")
        path = tmp_path / "tollway.yaml"
        path.write_text(config_yaml(redis_url, prefix, upstream, ORGS))
        cfg = load_config(path, ENV)
        secret = asyncio.run(_prepare(redis_url, cfg))
        procs = [ProxyProcess(path, tmp_path / "data") for _ in range(PROCESSES)]
        try:
            for p in procs:
                p.wait_ready()
            urls = [p.url for p in procs]
            asyncio.run(drive(urls, secret, seconds=1.0, concurrency=8))  # warm up
            rss_start = [p.rss_kb() for p in procs]

            stop = threading.Event()

            def moods() -> None:
                i = 0
                while not stop.wait(0.4):
                    i += 1
                    fake.behavior = MOODS[i % len(MOODS)]

            changer = threading.Thread(target=moods, daemon=True)
            changer.start()
            started = time.monotonic()
            result = asyncio.run(drive(urls, secret, seconds=SECONDS, concurrency=16))
            stop.set()
            changer.join(5)
            elapsed = time.monotonic() - started
            fake.behavior = Behavior()

            def settled() -> bool:
                return all(p.metric("tollway_requests_in_flight") == 0 for p in procs)

            deadline = time.monotonic() + 30
            while not settled() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)  # settlements run just after the last byte of each answer
            rss_end = [p.rss_kb() for p in procs]
            failures = sum(p.metric("tollway_settle_failures_total") for p in procs)
            journaled = sum(
                p.metric("tollway_journal_entries_total", event="written") for p in procs
            )
        finally:
            for p in procs:
                p.stop()

        import redis as sync_redis

        r = sync_redis.Redis.from_url(redis_url, decode_responses=True)
        keys = Keys(prefix)
        events = process_ledger(redis_url, prefix, tmp_path / "data").events("acme")
        debits = [f for f in events if f["type"] == "debit"]
        day: dict[str, int] = {}
        for f in events:
            if f["type"] in ("debit", "usage"):
                day["req"] = day.get("req", 0) + 1
                for name in ("in", "out", "cw", "cr", "cost"):
                    day[name] = day.get(name, 0) + int(f.get(name, 0))
        balance = int(r.hget(keys.account("acme"), "balance"))
        r.close()

    expected = expected_usage(fake.responses, cfg.prices)
    ledger_cost = sum(int(d["cost"]) for d in debits)
    print(
        f"\nsoak: {SECONDS:.0f}s x {PROCESSES} processes: {result.sent} requests "
        f"({result.sent / elapsed:.0f}/s), statuses {dict(sorted(result.statuses.items()))}, "
        f"errors {dict(result.errors)}\n"
        f"  upstream reported {expected['req']} answers, cost {expected['cost']} micro-USD; "
        f"ledger {len(debits)} debits, {ledger_cost} micro-USD; difference "
        f"{ledger_cost - expected['cost']}\n"
        + "\n".join(
            f"  process {i}: RSS {a / 1024:.1f} MiB -> {b / 1024:.1f} MiB ({(b - a) / 1024:+.1f})"
            for i, (a, b) in enumerate(zip(rss_start, rss_end, strict=True))
        )
    )
    # A stream the upstream cut reaches the client cut too: its only client-side error.
    assert set(result.errors) <= {"ClientPayloadError"}, result.errors
    assert set(result.statuses) <= {200, 429, 500, 502}, result.statuses
    assert failures == 0 and journaled == 0
    assert expected["req"] > 0 and len(debits) == expected["req"]
    assert ledger_cost == expected["cost"]
    for metric_name in ("req", "in", "out", "cw", "cr", "cost"):
        assert day.get(metric_name, 0) == expected[metric_name], metric_name
    assert balance == CREDIT - expected["cost"]
    for a, b in zip(rss_start, rss_end, strict=True):
        assert b - a < RSS_GROWTH_LIMIT_KB, (rss_start, rss_end)
