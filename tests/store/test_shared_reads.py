"""Concurrent re-reads of one cached thing share one read (`tollway.limits.flights`), on a
real Valkey: the key record of a secret, and an organization's run-time users. A caller
that leaves does not stop the others' read; an error reaches every waiter; a read asked
for after a write is a new one, and an older read that answers later does not undo it."""

from __future__ import annotations

import asyncio

import pytest
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import ManualClock
from tollway.limits.errors import UnknownKey
from tollway.limits.flights import Flights
from tollway.limits.store import Store
from tollway.limits.users import RuntimeUsers


async def test_concurrent_misses_of_one_key_make_one_read(store: Store) -> None:
    clock = ManualClock(1_800_000_000_000)
    keys = ApiKeys(store, clock)
    _, secret = await keys.create("acme", clock.now_ms(), None, "alice")
    trips = store.round_trips
    principals = await asyncio.gather(*(keys.resolve(secret) for _ in range(50)))
    assert {p.user for p in principals} == {"alice"}
    assert store.round_trips - trips == 3  # GET hash -> id, GET id -> org, HGETALL: once
    trips = store.round_trips
    await keys.resolve(secret)  # cached now
    assert store.round_trips == trips


async def test_an_unknown_key_fails_every_waiter(store: Store) -> None:
    keys = ApiKeys(store, ManualClock(1_800_000_000_000))
    trips = store.round_trips
    results = await asyncio.gather(
        *(keys.resolve("tw-not-a-key") for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, UnknownKey) for r in results)
    assert store.round_trips - trips == 1


async def test_a_waiter_that_leaves_does_not_stop_the_read() -> None:
    flights, started = Flights(), []
    release = asyncio.Event()

    async def read() -> str:
        started.append(1)
        await release.wait()
        return "record"

    first = asyncio.ensure_future(flights.run("k", read))
    second = asyncio.ensure_future(flights.run("k", read))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == "record"
    assert started == [1]
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_concurrent_rereads_of_users_share_one_and_a_fresh_one_wins(store: Store) -> None:
    users = RuntimeUsers(store, max_age=0.0)  # every call re-reads
    users_key = store.keys.users("acme")
    await store.client.hset(users_key, "bob", '{"seat": "standard"}')
    trips = store.round_trips
    found = await asyncio.gather(*(users.entries("acme") for _ in range(30)))
    assert all(f == {"bob": {"seat": "standard"}} for f in found)
    assert store.round_trips - trips == 1
    # An old read that answers after a write's fresh read must not undo it: the old
    # read's real reply (bob only) is held back until the fresh one (bob and carol) is in.
    held, real_call = asyncio.Event(), store.call

    async def call_holding_the_first(op, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        reply = await real_call(op, fn, *args, **kwargs)
        if op == "users_read" and not held.is_set():
            held.set()
            await asyncio.sleep(0.2)
        return reply

    store.call = call_holding_the_first  # type: ignore[method-assign]
    stale = asyncio.ensure_future(users.entries("acme"))
    await held.wait()  # the old read has its answer (bob only), not yet applied
    await store.client.hset(users_key, "carol", '{"seat": "premium"}')
    fresh = await users.entries("acme", fresh=True)
    assert set(fresh) == {"bob", "carol"}
    await stale
    assert set(users._entries["acme"]) == {"bob", "carol"}
