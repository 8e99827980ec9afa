"""Key lifetimes and shapes after the slimmer scripts (issue 18), against a real server: a
bucket's expiry always outlives its refill but is not pushed on every write; the month,
day and week hashes get their time-to-live when they are created; the day and week
hashes hold what daily and weekly caps and budgets read; and keys written by the previous
version (buckets without an expiry deadline, or with no expiry at all) keep working."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from tollway.config import parse_config_text
from tollway.limits.apikeys import ApiKeys
from tollway.limits.meter import Charge, Meter, periods
from tollway.limits.usage import Usage
from tollway.limits.windows import windows

ENV = {"OPENAI_API_KEY": "x"}
ORGS = """
upstreams:
  openai: {base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}
prices:
  m: {input: 1, output: 1}
organizations:
  acme:
    limits: {rpm: 600, tpm: 6000}
    extra_usage: {enabled: true}
    spend_caps: {monthly: 1000.00, daily: 100.00}
    seat_tiers:
      standard: {included: 0.000100, monthly_cap: 500.00}
    workspaces:
      eng: {spend_caps: {monthly: 800.00}}
    users:
      alice: {seat: standard, workspace: eng}
"""
TTL_SLACK_MS = 600_000  # common.lua BUCKET_TTL_SLACK


async def setup(store, clock):
    cfg = parse_config_text(ORGS, "test.yaml", ENV)
    meter = Meter(store, clock, lambda: cfg)
    record, _ = await ApiKeys(store).create("acme", clock.now_ms(), "eng", "alice")
    return meter, record.principal


def tpm_key(store) -> str:
    return store.keys.bucket("acme", "org", "tpm")


async def test_bucket_expiry_outlives_its_refill_and_is_pushed_only_when_needed(store, clock):
    meter, p = await setup(store, clock)
    r = store.client
    assert (await meter.admit(p, "r1", "m", 3000, 0)).admitted
    # 3000 of 6000 tokens taken at 100 tokens/s: full again in 30 s, then a minute's margin.
    ttl = await r.pttl(tpm_key(store))
    assert 90_000 <= ttl <= 90_000 + TTL_SLACK_MS
    deadline = int(await r.hget(tpm_key(store), "x"))
    assert deadline == clock.now_ms() + 90_000 + TTL_SLACK_MS
    # A write that needs no more than the deadline leaves the expiry alone.
    await r.pexpire(tpm_key(store), 500_000)
    clock.advance(ms=1_000)
    assert (await meter.admit(p, "r2", "m", 100, 0)).admitted
    assert await r.pttl(tpm_key(store)) <= 500_000
    assert int(await r.hget(tpm_key(store), "x")) == deadline
    # One that needs more than the deadline (an overshoot: the bucket ~100,000 tokens
    # below zero, full again in ~17 minutes) pushes it.
    clock.advance(ms=1_000)
    await meter.settle(Charge(p, "r2", "m", Usage(input_tokens=100_000), 0, True))
    level = int(await r.hget(tpm_key(store), "l"))
    full_in = -(-(6000 * 60_000 - level) // 6000) + 60_000
    assert await r.pttl(tpm_key(store)) >= full_in
    assert int(await r.hget(tpm_key(store), "x")) == clock.now_ms() + full_in + TTL_SLACK_MS


async def test_a_bucket_of_the_previous_version_keeps_its_level_and_gets_an_expiry(store, clock):
    """The previous scripts wrote {l, t} and no deadline; a key may also have lost its
    expiry (PERSIST by hand, a restore). Its level counts, and its first write sets one."""
    meter, p = await setup(store, clock)
    r = store.client
    key = tpm_key(store)
    # 1000 tokens left, as of now, no deadline, no expiry.
    await r.hset(key, mapping={"l": 1000 * 60_000, "t": clock.now_ms()})
    assert await r.pttl(key) == -1
    d = await meter.admit(p, "r1", "m", 10, 0)
    assert d.admitted
    assert {f"{b.spec.scope}/{b.spec.limit}": b.remaining for b in d.buckets}["org/tpm"] == 990
    assert await r.pttl(key) > 0 and await r.hget(key, "x") is not None


async def test_spend_hashes_get_their_ttl_at_creation_only(store, clock):
    meter, p = await setup(store, clock)
    r, k = store.client, store.keys
    tz = ZoneInfo("UTC")
    month = k.month("acme", periods(clock.now_ms(), tz)[0])
    win = windows(clock.now_ms(), tz)
    day, week = k.period("acme", win.day), k.period("acme", win.week)
    for i in (1, 2):
        assert (await meter.admit(p, f"r{i}", "m", 10, 0)).admitted
        await meter.settle(Charge(p, f"r{i}", "m", Usage(10, 10), 200, True))
        if i == 1:
            assert await r.pttl(month) > 399 * 86_400_000
            assert 39 * 86_400_000 < await r.pttl(day) <= 40 * 86_400_000
            assert 39 * 86_400_000 < await r.pttl(week) <= 40 * 86_400_000
            for key in (month, day, week):
                await r.pexpire(key, 3_600_000)  # to see whether the next settle pushes it
    for key in (month, day, week):
        assert 0 < await r.pttl(key) <= 3_600_000


async def test_day_and_week_hashes_hold_what_caps_and_budgets_read(store, clock):
    """The month hash keeps every scope's spend and extra (reports read it); the day and
    week hashes the extra part of every scope that can carry a cap and the key's whole
    spend (its budget), with the same sums."""
    meter, p = await setup(store, clock)
    r, k = store.client, store.keys
    tz = ZoneInfo("UTC")
    month = k.month("acme", periods(clock.now_ms(), tz)[0])
    win = windows(clock.now_ms(), tz)
    assert (await meter.admit(p, "r1", "m", 10, 0)).admitted
    # 300 micro-USD: 100 inside alice's included usage, 200 extra.
    await meter.settle(Charge(p, "r1", "m", Usage(10, 10), 300, True))
    key = f"key={p.key_id}"
    scopes = ("org", "ws=eng", "user=alice", key)
    assert await r.hgetall(month) == {
        **{f"spend:{s}": "300" for s in scopes},
        **{f"extra:{s}": "200" for s in scopes},
    }
    expected = {"extra:org": "200", "extra:ws=eng": "200", "extra:user=alice": "200"}
    expected[f"spend:{key}"] = "300"
    for label in (win.day, win.week):
        assert await r.hgetall(k.period("acme", label)) == expected
