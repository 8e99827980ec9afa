"""The shipper moves ledger events from Redis into the ledger database in order and exactly
once, against both backends: the embedded SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from tollway.limits.credits import Credits
from tollway.limits.history import History
from tollway.limits.ledgerdb import LedgerDB, LedgerUnavailable, PostgresLedger, SqliteLedger
from tollway.limits.money import parse_usd as USD
from tollway.limits.shipper import Shipper, ShipperLock
from tollway.limits.store import Store


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerDB]:
    if request.param == "sqlite":
        ledger: LedgerDB = SqliteLedger(tmp_path / "ledger.sqlite3")
    else:
        ledger = PostgresLedger(request.getfixturevalue("postgres_url"))
    try:
        yield ledger
    finally:
        await ledger.close()


async def add_events(store: Store, org: str, n: int, start: int = 0) -> None:
    """Settlement-shaped events appended as settle.lua appends them."""
    pipe = store.client.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.xadd(
            store.keys.ledger(org),
            {"type": "debit", "ts": 1_000 + i, "rid": f"r{i}", "cost": i + 1, "day": "2026-01-01"},
        )
    await pipe.execute()


async def stored_rids(db: LedgerDB, org: str) -> list[str]:
    rows = await db.fetch("SELECT rid FROM ledger_events WHERE org = ? ORDER BY ms, seq", org)
    return [r[0] for r in rows]


async def test_ships_in_order_exactly_once_and_trims(store: Store, db: LedgerDB) -> None:
    org = store.keys.prefix + "-acme"  # the PostgreSQL database is shared by the session
    await add_events(store, org, 1_234)
    shipper = Shipper(store, db, lambda: [org], batch=500)
    assert (await shipper.backlog()).events == 1_234
    assert await shipper.ship_all() == 1_234
    assert await stored_rids(db, org) == [f"r{i}" for i in range(1_234)]
    assert await store.client.xlen(store.keys.ledger(org)) == 0
    assert (await shipper.backlog()).events == 0
    assert await shipper.ship_all() == 0
    [(total,)] = await db.fetch("SELECT SUM(cost) FROM ledger_events WHERE org = ?", org)
    assert int(total) == sum(range(1, 1_235))


async def test_a_shipper_that_died_before_trimming_stores_nothing_twice(
    store: Store, db: LedgerDB
) -> None:
    org = store.keys.prefix + "-acme"
    await add_events(store, org, 300)
    entries = await store.client.xrange(store.keys.ledger(org), "-", "+", 200)
    await db.insert(org, entries)  # committed, then the process died: nothing trimmed
    await add_events(store, org, 50, start=300)
    assert await Shipper(store, db, lambda: [org]).ship_org(org) == 350
    assert await stored_rids(db, org) == [f"r{i}" for i in range(350)]


async def test_two_shippers_at_once_store_each_event_once(store: Store, db: LedgerDB) -> None:
    import asyncio

    org = store.keys.prefix + "-acme"
    await add_events(store, org, 2_000)
    a, b = (Shipper(store, db, lambda: [org], batch=100) for _ in range(2))
    await asyncio.gather(a.ship_all(), b.ship_all())
    assert await stored_rids(db, org) == [f"r{i}" for i in range(2_000)]
    assert await store.client.xlen(store.keys.ledger(org)) == 0


async def test_with_the_database_down_events_wait_in_redis(store: Store, tmp_path: Path) -> None:
    org = "acme"
    await add_events(store, org, 10)
    down = PostgresLedger("postgresql://postgres@127.0.0.1:1/none", timeout=0.5)
    shipper = Shipper(store, down, lambda: [org])
    with pytest.raises(LedgerUnavailable):
        await shipper.ship_all()
    backlog = await shipper.backlog()
    assert (backlog.events, backlog.by_org) == (10, {org: 10})
    assert backlog.oldest_ms is not None
    up = SqliteLedger(tmp_path / "ledger.sqlite3")
    try:
        assert await Shipper(store, up, lambda: [org]).ship_all() == 10
        assert await stored_rids(up, org) == [f"r{i}" for i in range(10)]
    finally:
        await up.close()


async def test_money_events_replay_to_the_balance(store: Store, clock) -> None:
    credits = Credits(store, clock)
    await credits.buy("acme", USD("12.50"))
    await credits.grant("acme", USD("3"), timedelta(seconds=1))
    clock.advance(2)
    balance = await credits.balance("acme")
    history: History = store.history
    assert await history.balance_effect("acme") == balance.lots_total - balance.debt
    types = [f["type"] for _, f in await history.money_events("acme")]
    assert types == ["purchase", "grant", "expiry"]
    assert await store.client.xlen(store.keys.ledger("acme")) == 0


async def test_one_replica_holds_the_shipper_lock(store: Store) -> None:
    a, b = ShipperLock(store, ttl_ms=5_000), ShipperLock(store, ttl_ms=5_000)
    assert await a.acquire()
    assert not await b.acquire()
    assert await a.acquire()  # extended
    await a.release()
    assert await b.acquire()
