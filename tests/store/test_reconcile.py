"""`reconcile` recomputes balances and month spend from the ledger database and finds no
difference from Redis after real settlements; a change made behind the ledger's back is
reported."""

from __future__ import annotations

from tollway.config import parse_config_text
from tollway.limits.apikeys import ApiKeys
from tollway.limits.credits import Credits
from tollway.limits.meter import Charge, Meter
from tollway.limits.reconcile import Drift, reconcile
from tollway.limits.usage import Usage

HEAD = """
upstreams:
  openai: {base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}
prices:
  m: {input: 1, output: 1}
organizations:
  acme:
    billing: {mode: prepaid}
    workspaces: {research: {}}
    users: {alice: {workspace: research}}
"""


async def test_no_drift_after_settlements_then_a_tampered_balance_is_found(store, clock):
    cfg = parse_config_text(HEAD, "t.yaml", {"OPENAI_API_KEY": "x"})
    meter, credits = Meter(store, clock, lambda: cfg), Credits(store, clock)
    await credits.buy("acme", 1_000_000)
    alice, _ = await ApiKeys(store).create("acme", clock.now_ms(), user="alice")
    service, _ = await ApiKeys(store).create("acme", clock.now_ms())
    for i, rec in enumerate([alice, service, alice]):
        p = rec.principal
        assert (await meter.admit(p, f"r{i}", "m", 10, 1)).admitted
        await meter.settle(Charge(p, f"r{i}", "m", Usage(10, 10), 1_000 * (i + 1), True))
    await meter.admit(alice.principal, "failed", "m", 10, 1)
    await meter.settle(Charge(alice.principal, "failed", "m", Usage(10, 10), 0, False))
    assert await reconcile(store, ["acme"]) == []
    # An event still waiting in Redis is shipped first, then counted.
    assert (await meter.admit(alice.principal, "r9", "m", 10, 1)).admitted
    await meter.settle(Charge(alice.principal, "r9", "m", Usage(10, 10), 500, True))
    assert await store.client.xlen(store.keys.ledger("acme")) == 1
    assert await reconcile(store, ["acme"]) == []

    await store.client.hincrby(store.keys.account("acme"), "balance", 7)
    await store.client.hincrby(store.keys.month("acme", "2026-01"), "spend:user=alice", -3)
    assert await reconcile(store, ["acme"]) == [
        Drift("acme", "balance", 1_000_000 - 6_500 + 7, 1_000_000 - 6_500),
        Drift("acme", "2026-01 spend:user=alice", 4_500 - 3, 4_500),
    ]
