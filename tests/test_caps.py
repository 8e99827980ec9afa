"""Spend caps, included usage and extra usage against the real admit and settle scripts,
driven through `Meter` with the injected clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from config import parse_config_text
from limits.apikeys import ApiKeys
from limits.meter import Meter
from limits.plans import Principal
from limits.usage import Usage

ENV = {"OPENAI_API_KEY": "x"}
HEAD = """
upstreams:
  openai: {base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}
prices:
  m: {input: 1, output: 1}
"""
C = 10_000  # micro-USD: one "request" below costs a cent

SEATS = """
organizations:
  acme:
    billing: {mode: postpaid}
    extra_usage: {enabled: true}
    spend_caps: {monthly: 0.10}
    seat_tiers:
      standard: {included: 0.02, monthly_cap: 0.03}
      premium: {included: 0.05, monthly_cap: unlimited}
    workspaces:
      research: {spend_caps: {monthly: 0.04}}
    users:
      alice: {seat: standard}
      bob: {seat: standard, monthly_cap: 0.05}
      carol: {seat: standard, monthly_cap: unlimited}
      dave: {seat: premium, workspace: research}
      erin: {seat: premium, workspace: research}
"""


class World:
    """A meter and a `Spend` on one config that tests can swap (`reconfigure`)."""

    def __init__(self, store, clock, orgs: str, extra: str = "") -> None:
        self.store, self.clock = store, clock
        self.holder = SimpleNamespace(current=None)
        self.reconfigure(orgs, extra)
        self.meter = Meter(store, clock, lambda: self.holder.current)
        self.apikeys = ApiKeys(store)
        self.n = 0

    def reconfigure(self, orgs: str, extra: str = "") -> None:
        self.holder.current = parse_config_text(HEAD + extra + orgs, "test.yaml", ENV)

    async def principal(self, user: str | None = None, org: str = "acme", **kw) -> Principal:
        record, _ = await self.apikeys.create(org, self.clock.now_ms(), user=user, **kw)
        return record.principal

    async def request(self, p: Principal, cost: int = C):
        """Admit one request and, when admitted, settle it at `cost`; the Decision."""
        self.n += 1
        rid = f"r{self.n}"
        d = await self.meter.admit(p, rid, "m", 1, 1)
        if d.admitted:
            await self.meter.settle(p, rid, "m", Usage(input_tokens=cost), cost, True)
        return d


@pytest.fixture
def world(store, clock):
    return lambda orgs=SEATS, extra="": World(store, clock, orgs, extra)


async def test_a_user_override_on_a_tier_user_is_named_as_the_users_cap(world):
    w = world()
    alice = await w.principal("alice")
    for _ in range(5):  # 2 cents included, 3 cents extra: the standard tier's cap
        assert (await w.request(alice)).admitted
    d = await w.request(alice)
    assert (d.reason, d.detail) == ("cap", "seat tier 'standard'")
    cfg = w.store.keys.overrides("acme")
    await w.store.client.hset(cfg, "cap:user=alice", 4 * C)
    assert (await w.request(alice)).admitted
    d = await w.request(alice)
    # The override set the cap that was reached, not the tier.
    assert (d.reason, d.detail) == ("cap", "user 'alice'")
    await w.store.client.hdel(cfg, "cap:user=alice")
    await w.store.client.hset(cfg, "cap:tier=standard", 4 * C)
    assert (await w.request(alice)).detail == "seat tier 'standard'"


async def test_disabling_extra_usage_for_the_organization_beats_a_users_own_setting(world):
    w = world()
    alice = await w.principal("alice")
    for _ in range(2):  # the 2 cents included in the standard seat
        assert (await w.request(alice)).admitted
    cfg = w.store.keys.overrides("acme")
    await w.store.client.hset(cfg, mapping={"extra:user=alice": "1", "extra:org": "0"})
    d = await w.request(alice)
    assert (d.admitted, d.reason) == (False, "included")
    # Enabled for the organization, a user's own "0" still opts them out...
    await w.store.client.hset(cfg, mapping={"extra:user=alice": "0", "extra:org": "1"})
    assert (await w.request(alice)).reason == "included"
    # ... and their "1" opts them in when the organization is not switched off.
    await w.store.client.hset(cfg, mapping={"extra:user=alice": "1"})
    await w.store.client.hdel(cfg, "extra:org")
    assert (await w.request(alice)).admitted
