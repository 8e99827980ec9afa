"""Token buckets, against a real server, with the injected clock: refill over time,
overshoot then block then recover, levels nesting, refusals that take nothing."""

from __future__ import annotations

import asyncio

import pytest
from tollway.config import parse_config_text
from tollway.limits.apikeys import ApiKeys
from tollway.limits.meter import Charge, Meter
from tollway.limits.plans import Principal
from tollway.limits.usage import Usage

ENV = {"OPENAI_API_KEY": "x"}
HEAD = """
upstreams:
  openai: {base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}
prices:
  m: {input: 1, output: 1}
"""


async def setup(store, clock, orgs: str):
    cfg = parse_config_text(HEAD + orgs, "test.yaml", ENV)
    meter = Meter(store, clock, lambda: cfg)
    return meter, ApiKeys(store)


async def principal(apikeys, clock, org="acme", **kw) -> Principal:
    record, _ = await apikeys.create(org, clock.now_ms(), **kw)
    return record.principal


def levels(decision) -> dict[str, int]:
    return {f"{b.spec.scope}/{b.spec.limit}": b.remaining for b in decision.buckets}


async def test_tpm_overshoot_blocks_then_recovers(store, clock):
    meter, apikeys = await setup(store, clock, "organizations:\n  acme:\n    limits: {tpm: 600}\n")
    p = await principal(apikeys, clock)
    d = await meter.admit(p, "r1", "m", 100, 0)
    assert d.admitted and levels(d) == {"org/tpm": 500}
    # The actual usage overshoots what is left: the bucket goes below zero.
    await meter.settle(Charge(p, "r1", "m", Usage(input_tokens=300, output_tokens=500), 0, True))
    d = await meter.admit(p, "r2", "m", 1, 0)
    assert not d.admitted and d.reason == "rate"
    assert d.detail == "tpm of organization 'acme'"
    # 600 - 800 = -200 tokens, refilled at 10 tokens/s: above zero after 20.0001 s (one
    # bucket unit, 1/60000 token, above zero), so retry after 20.001 s.
    assert d.retry_after_ms == 20_001
    clock.advance(ms=20_000)
    assert not (await meter.admit(p, "r3", "m", 1, 0)).admitted
    clock.advance(ms=1)
    d = await meter.admit(p, "r4", "m", 1, 0)
    assert d.admitted


async def test_refill_is_continuous_and_capped(store, clock):
    meter, apikeys = await setup(store, clock, "organizations:\n  acme:\n    limits: {tpm: 6000}\n")
    p = await principal(apikeys, clock)
    d = await meter.admit(p, "r1", "m", 6000, 0)
    assert levels(d) == {"org/tpm": 0}
    await meter.settle(Charge(p, "r1", "m", Usage(input_tokens=6000), 0, True))
    clock.advance(seconds=1.5)  # 100 tokens/s
    d = await meter.admit(p, "r2", "m", 0, 0)
    assert levels(d) == {"org/tpm": 150}
    clock.advance(seconds=3600)  # never above capacity
    d = await meter.admit(p, "r3", "m", 0, 0)
    assert levels(d) == {"org/tpm": 6000}
    assert d.buckets[0].reset_ms == 0


async def test_rpm_takes_one_and_fractional_rpm(store, clock):
    orgs = """
organizations:
  acme:
    limits: {rpm: 3}
    users:
      slow: {limits: {rpm: 0.5}}
"""
    meter, apikeys = await setup(store, clock, orgs)
    p = await principal(apikeys, clock)
    admitted = [(await meter.admit(p, f"r{i}", "m", 1, 0)).admitted for i in range(4)]
    assert admitted == [True, True, True, False]
    clock.advance(seconds=20)  # one request back (3 per minute)
    assert (await meter.admit(p, "r5", "m", 1, 0)).admitted
    assert not (await meter.admit(p, "r6", "m", 1, 0)).admitted

    slow = await principal(apikeys, clock, user="slow")
    clock.advance(seconds=60)
    assert (await meter.admit(slow, "s1", "m", 1, 0)).admitted
    d = await meter.admit(slow, "s2", "m", 1, 0)
    # A limit below one per minute admits when its bucket is full (0.5 request): one
    # taken leaves -0.5, full again after 1 request at 0.5/min = 120 s.
    assert not d.admitted and d.detail == "rpm of user 'slow'"
    assert d.retry_after_ms == 120_000


async def test_levels_nest_and_organization_limit_is_shared(store, clock):
    orgs = """
organizations:
  acme:
    limits: {tpm: 1000}
    workspaces:
      cc: {limits: {tpm: 700}}
    users:
      alice: {workspace: cc, limits: {tpm: 300}}
      bob: {workspace: cc}
      carol: {}
"""
    meter, apikeys = await setup(store, clock, orgs)
    alice = await principal(apikeys, clock, user="alice")
    bob = await principal(apikeys, clock, user="bob")
    carol = await principal(apikeys, clock, user="carol")

    d = await meter.admit(alice, "a1", "m", 400, 0)
    assert d.admitted
    assert levels(d) == {"org/tpm": 600, "ws=cc/tpm": 300, "user=alice/tpm": 0}
    # Alice is blocked by her own limit; Bob, in the same workspace, is not.
    d = await meter.admit(alice, "a2", "m", 1, 0)
    assert not d.admitted and d.detail == "tpm of user 'alice'"
    d = await meter.admit(bob, "b1", "m", 300, 0)
    assert d.admitted and levels(d) == {"org/tpm": 300, "ws=cc/tpm": 0}
    # The workspace is empty now: Bob is blocked there, Carol (no workspace) is not.
    assert (await meter.admit(bob, "b2", "m", 1, 0)).detail == "tpm of workspace 'cc'"
    d = await meter.admit(carol, "c1", "m", 300, 0)
    assert d.admitted and levels(d) == {"org/tpm": 0}
    # Now the organization's shared limit blocks everyone.
    assert (await meter.admit(carol, "c2", "m", 1, 0)).detail == "tpm of organization 'acme'"


async def test_refusal_takes_nothing(store, clock):
    orgs = """
organizations:
  acme:
    limits: {rpm: 10, tpm: 100}
    users: {u: {limits: {tpm: 5}}}
"""
    meter, apikeys = await setup(store, clock, orgs)
    u = await principal(apikeys, clock, user="u")
    assert (await meter.admit(u, "r1", "m", 10, 0)).admitted  # user bucket now -5
    before = (await meter.admit(Principal("acme", u.key_id), "probe", "m", 0, 0)).buckets
    refused = await meter.admit(u, "r2", "m", 10, 0)
    assert not refused.admitted
    after = (await meter.admit(Principal("acme", u.key_id), "probe2", "m", 0, 0)).buckets
    # The refused request took neither a request nor tokens from the organization.
    before_rpm = {b.spec.limit: b.remaining for b in before}
    after_rpm = {b.spec.limit: b.remaining for b in after}
    assert after_rpm["rpm"] == before_rpm["rpm"] - 1  # only the second probe's request
    assert after_rpm["tpm"] == before_rpm["tpm"]


async def test_failed_request_releases_tokens_but_counts_the_request(store, clock):
    meter, apikeys = await setup(
        store, clock, "organizations:\n  acme:\n    limits: {rpm: 5, tpm: 1000}\n"
    )
    p = await principal(apikeys, clock)
    d = await meter.admit(p, "r1", "m", 400, 0)
    assert levels(d) == {"org/rpm": 4, "org/tpm": 600}
    s = await meter.settle(Charge(p, "r1", "m", Usage(), 0, False))
    assert s.cost == 0
    d = await meter.admit(p, "r2", "m", 0, 0)
    assert levels(d) == {"org/rpm": 3, "org/tpm": 1000}


async def test_settle_is_idempotent(store, clock):
    meter, apikeys = await setup(store, clock, "organizations:\n  acme:\n    limits: {tpm: 1000}\n")
    p = await principal(apikeys, clock)
    await meter.admit(p, "r1", "m", 100, 0)
    first = await meter.settle(
        Charge(p, "r1", "m", Usage(input_tokens=100, output_tokens=200), 7, True)
    )
    again = await meter.settle(
        Charge(p, "r1", "m", Usage(input_tokens=100, output_tokens=200), 7, True)
    )
    assert not first.duplicate and again.duplicate and again.cost == first.cost == 7
    d = await meter.admit(p, "r2", "m", 0, 0)
    assert levels(d) == {"org/tpm": 700}


async def test_expired_hold_gives_its_reservation_back(store, clock):
    orgs = "store: {hold_ttl_seconds: 30}\norganizations:\n  acme:\n    limits: {tpm: 60000}\n"
    meter, apikeys = await setup(store, clock, orgs)
    p = await principal(apikeys, clock)
    await meter.admit(p, "dead", "m", 30_000, 0)  # a proxy that dies before settling
    clock.advance(seconds=31)
    d = await meter.admit(p, "r2", "m", 0, 0)
    # Without the returned reservation the bucket would hold 1000 * 31 tokens only.
    assert levels(d) == {"org/tpm": 60_000}
    # A late settlement of the dead request then charges its actual tokens in full.
    await meter.settle(Charge(p, "dead", "m", Usage(input_tokens=100), 0, True))
    d = await meter.admit(p, "r3", "m", 0, 0)
    assert levels(d) == {"org/tpm": 59_900}


@pytest.mark.parametrize("n", [50])
async def test_concurrent_admissions_against_a_nearly_empty_bucket(store, clock, n):
    """50 simultaneous requests, each reserving 100 tokens, against 1,050 tokens left:
    exactly 11 fit (each must find the bucket above zero), and after settling the
    level is exactly what the admitted requests' actual usage and the refill imply."""
    meter, apikeys = await setup(
        store, clock, "organizations:\n  acme:\n    limits: {tpm: 60000}\n"
    )
    p = await principal(apikeys, clock)
    await meter.admit(p, "fill", "m", 58_950, 0)
    await meter.settle(Charge(p, "fill", "m", Usage(input_tokens=58_950), 0, True))
    decisions = await asyncio.gather(*(meter.admit(p, f"r{i}", "m", 100, 0) for i in range(n)))
    admitted = [i for i, d in enumerate(decisions) if d.admitted]
    assert len(admitted) == 11
    assert all(d.reason == "rate" for d in decisions if not d.admitted)
    # Each admitted request actually used 30 input + 50 output tokens.
    await asyncio.gather(
        *(meter.settle(Charge(p, f"r{i}", "m", Usage(30, 50), 0, True)) for i in admitted)
    )
    clock.advance(seconds=2)  # 1000 tokens/s
    d = await meter.admit(p, "probe", "m", 0, 0)
    assert levels(d) == {"org/tpm": 1_050 - 11 * 80 + 2_000}
