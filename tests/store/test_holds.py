"""Holds against money limits, on the scripts directly (no HTTP): what a request in flight
holds, that a refusal over held amounts changes nothing, and that every way a hold ends
(settlement, release, expiry) gives it back. Price of model "m": 1 micro-USD per token."""

from __future__ import annotations

import pytest
from tollway.limits.meter import Charge
from tollway.limits.usage import Usage

from tests.support.spendkit import World

CAPPED = "organizations:\n  acme:\n    spend_caps: {monthly: 0.0001}\n"  # 100 micro-USD


@pytest.fixture
def world(store, clock):
    return World(store, clock, CAPPED)


async def keys_of(store) -> dict[str, object]:
    """Every key of acme with its value (hashes, lists, zsets), to prove nothing changed."""
    r, out = store.client, {}
    async for k in r.scan_iter(match=f"{store.keys.prefix}:{{acme}}:*"):
        kind = await r.type(k)
        if kind == "hash":
            out[k] = await r.hgetall(k)
        elif kind == "zset":
            out[k] = await r.zrange(k, 0, -1, withscores=True)
        elif kind == "list":
            out[k] = await r.lrange(k, 0, -1)
        elif kind == "stream":
            out[k] = await r.xrange(k)
        elif kind == "set":
            out[k] = await r.smembers(k)
        else:
            out[k] = await r.get(k)
    return out


async def test_held_amounts_count_against_a_cap_and_a_refusal_changes_nothing(world, store):
    p = await world.principal()
    held = store.keys.held("acme")
    # 60 micro-USD of expected cost: input 60 tokens, no output price.
    assert (await world.meter.admit(p, "a", "m", 60, 60)).admitted
    assert await store.client.hgetall(held) == {"extra:org": "60"}
    assert (await world.meter.admit(p, "b", "m", 60, 60)).admitted  # 60 held < 100
    before = await keys_of(store)
    d = await world.meter.admit(p, "c", "m", 60, 60)  # settled 0 + held 120 >= 100
    assert (d.admitted, d.reason, d.detail) == (False, "cap", "organization monthly")
    assert await keys_of(store) == before
    # Settlement replaces the hold by the real cost; a failure gives it back.
    await world.meter.settle(Charge(p, "a", "m", Usage(input_tokens=30), 30, True))
    await world.meter.settle(Charge(p, "b", "m", Usage(), 0, False))
    assert await store.client.hgetall(held) == {}
    assert (await world.meter.admit(p, "d", "m", 60, 60)).admitted  # 30 + 60 < 100


async def test_released_and_expired_holds_are_given_back(world, store, clock):
    p = await world.principal()
    held = store.keys.held("acme")
    assert (await world.meter.admit(p, "a", "m", 60, 60)).admitted
    assert await world.meter.release(p, "a")
    assert await store.client.hgetall(held) == {}
    assert (await world.meter.admit(p, "b", "m", 60, 60)).admitted
    ttl = world.holder.current.store.hold_ttl_seconds
    clock.advance(seconds=ttl + 1)  # a proxy that died: the hold expires
    assert (await world.meter.admit(p, "c", "m", 60, 60)).admitted  # b's 60 given back
    assert await store.client.hget(held, "extra:org") == "60"


async def test_the_expected_output_is_the_declared_maximum_capped_by_what_was_learned(world, store):
    p = await world.principal()
    held = store.keys.held("acme")
    # Nothing learned: min(declared 50, default 1024) output tokens at 1 micro-USD each.
    assert (
        await world.meter.admit(p, "a", "m", 10, 10, max_output=50, output_price=10**6)
    ).admitted
    assert await store.client.hget(held, "extra:org") == "60"
    await world.meter.settle(Charge(p, "a", "m", Usage(10, 20), 30, True))
    # Learned: 20 output tokens, whatever the request declares.
    d = await world.meter.admit(p, "b", "m", 10, 10, max_output=64000, output_price=10**6)
    assert d.admitted
    assert await store.client.hget(held, "extra:org") == "30"
