"""Redis memory per request is bounded: settled markers expire, ledger events leave Redis
once shipped to the ledger database, and none leaves before (an old unshipped event is
never dropped, whatever its age)."""

from __future__ import annotations

from tollway.config import parse_config_text
from tollway.limits.apikeys import ApiKeys
from tollway.limits.credits import Credits
from tollway.limits.meter import Charge, Meter
from tollway.limits.shipper import Shipper
from tollway.limits.usage import Usage

HEAD = """
upstreams:
  openai: {base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}
prices:
  m: {input: 1, output: 1}
store: {ledger_retention_days: 62, settled_ttl_seconds: 3600}
organizations:
  acme:
    billing: {mode: prepaid}
"""


async def test_ledger_events_leave_redis_once_shipped_and_never_before(store, clock):
    cfg = parse_config_text(HEAD, "t.yaml", {"OPENAI_API_KEY": "x"})
    meter, credits = Meter(store, clock, lambda: cfg), Credits(store, clock)
    record, _ = await ApiKeys(store).create("acme", clock.now_ms())
    p = record.principal
    await credits.buy("acme", 50_000_000)

    async def request(rid: str, cost: int) -> None:
        assert (await meter.admit(p, rid, "m", 10, 1)).admitted
        await meter.settle(Charge(p, rid, "m", Usage(10, 10), cost, True))

    for i in range(10):
        await request(f"old{i}", 1_000 + i)
    ledger = store.keys.ledger("acme")
    assert await store.client.xlen(ledger) == 11  # the purchase and 10 debits, not shipped
    clock.advance(seconds=63 * 86_400)
    for i in range(4):
        await request(f"new{i}", 7)
    assert await store.client.xlen(ledger) == 15  # months old, still waiting: none dropped
    assert await Shipper(store, store.history.db, lambda: ["acme"]).ship_all() == 15
    assert await store.client.xlen(ledger) == 0
    account = await store.client.hgetall(store.keys.account("acme"))
    assert "ledger_base" not in account
    balance = await credits.balance("acme")
    assert await credits.recompute_from_ledger("acme") == balance.lots_total - balance.debt
    assert balance.lots_total == 50_000_000 - sum(1_000 + i for i in range(10)) - 4 * 7


async def test_settled_markers_expire_after_their_ttl(store, clock):
    cfg = parse_config_text(HEAD, "t.yaml", {"OPENAI_API_KEY": "x"})
    meter = Meter(store, clock, lambda: cfg)
    record, _ = await ApiKeys(store).create("acme", clock.now_ms())
    await meter.admit(record.principal, "r1", "m", 1, 0)
    await meter.settle(Charge(record.principal, "r1", "m", Usage(1, 1), 0, True))
    ttl = await store.client.pttl(store.keys.settled("acme", "r1"))
    assert 3_590_000 < ttl <= 3_600_000
