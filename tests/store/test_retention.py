"""Redis memory per request is bounded: settled markers expire, the ledger folds old events
into a base that keeps the balance it implies exact."""

from __future__ import annotations

from tollway.config import parse_config_text
from tollway.limits.apikeys import ApiKeys
from tollway.limits.credits import Credits
from tollway.limits.meter import Charge, Meter
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


async def test_old_ledger_events_are_folded_and_the_balance_stays_exact(store, clock):
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
    assert await store.client.xlen(ledger) == 11  # the purchase and 10 debits
    clock.advance(seconds=63 * 86_400)
    for i in range(4):
        await request(f"new{i}", 7)
    # Each settlement folded up to 4 events older than 62 days: all 11 are gone.
    assert await store.client.xlen(ledger) == 4
    account = await store.client.hgetall(store.keys.account("acme"))
    assert int(account["ledger_base"]) == 50_000_000 - sum(1_000 + i for i in range(10))
    assert int(account["ledger_folded_ts"]) == clock.now_ms() - 63 * 86_400_000
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
