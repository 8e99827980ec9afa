"""The batched script path (tollway.limits.batch) against a real Valkey: order, one write
for concurrent calls, error replies kept per call, a lost script cache reloaded."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions as rexc
from tollway.limits.store import Store


async def test_concurrent_calls_share_one_write_and_run_in_order(store: Store) -> None:
    """Calls made together go in one write; each runs as its own script call, in call
    order: the lock's compare-and-act sees every prior one."""
    batcher = store.batcher
    assert batcher is not None
    lock = store.keys.auto_reload_lock("acme")
    await store.client.set(lock, "t1")
    script = store.scripts["reload_lock"]
    await store.client.script_load(script.source)
    trips = batcher.batches
    replies = await asyncio.gather(
        batcher.run(script, [lock], ["t1", "extend", 60000]),
        *(batcher.run(script, [lock], ["t1", "extend", 60000]) for _ in range(8)),
        batcher.run(script, [lock], ["t1", "release", 0]),
        batcher.run(script, [lock], ["t1", "extend", 60000]),  # after the release: not ours
    )
    assert replies == [1] * 10 + [0]
    assert batcher.batches - trips == 1  # all made before the loop turned: one write
    assert await store.client.get(lock) is None


async def test_an_error_reply_fails_its_own_call_only(store: Store) -> None:
    batcher = store.batcher
    assert batcher is not None
    lock = store.keys.auto_reload_lock("acme")
    await store.client.set(lock, "t1")
    script = store.scripts["reload_lock"]
    replies = await asyncio.gather(
        batcher.run(script, [lock], ["t1", "extend", 60000]),
        batcher.run(script, [lock], ["t1", "extend", 60000]),
        batcher.run(script, [lock], ["t1", "extend", "not a number"]),
        batcher.run(script, [lock], ["t1", "extend", 60000]),
        return_exceptions=True,
    )
    assert replies[0] == replies[1] == replies[3] == 1
    assert isinstance(replies[2], rexc.ResponseError)


async def test_a_lost_script_cache_is_reloaded(store: Store) -> None:
    batcher = store.batcher
    assert batcher is not None
    lock = store.keys.auto_reload_lock("acme")
    await store.client.set(lock, "t1")
    await store.client.script_flush()
    script = store.scripts["reload_lock"]
    replies = await asyncio.gather(
        *(batcher.run(script, [lock], ["t1", "extend", 60000]) for _ in range(3)),
        batcher.run(script, [lock], ["t1", "release", 0]),
        batcher.run(script, [lock], ["t1", "extend", 60000]),
    )
    assert replies == [1, 1, 1, 1, 0]  # run again in their order
    assert await store.client.script_exists(script.sha) == [True]


@pytest.mark.parametrize("n", [1, 20])
async def test_a_dead_store_fails_every_call_as_unavailable(store: Store, n: int) -> None:
    from tollway.limits.errors import StoreUnavailable

    dead = Store.from_url("redis://127.0.0.1:1", timeout=0.2)
    try:
        assert dead.batcher is not None
        script = dead.scripts["reload_lock"]
        replies = await asyncio.gather(
            *(dead.batcher.run(script, ["k"], ["t", "extend", 1]) for _ in range(n)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailable) for r in replies)
    finally:
        await dead.close()
