"""Spend caps, included usage and extra usage against the real admit and settle scripts,
driven through `Meter` with the injected clock, and the `Spend` API that reads and
overrides them (month to date, caps, extra usage, statements)."""

from __future__ import annotations

import pytest
from tollway.limits.spend import UNLIMITED, SpendError

from tests.support.spendkit import C, World, spend_until_refused

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
    await w.spend.set_cap("acme", "user", "alice", 4 * C)
    assert (await w.request(alice)).admitted
    d = await w.request(alice)
    # The override set the cap that was reached, not the tier.
    assert (d.reason, d.detail) == ("cap", "user 'alice'")
    assert await w.spend.clear_cap("acme", "user", "alice")
    await w.spend.set_cap("acme", "tier", "standard", 4 * C)
    assert (await w.request(alice)).detail == "seat tier 'standard'"


async def test_disabling_extra_usage_for_the_organization_beats_a_users_own_setting(world):
    w = world()
    alice = await w.principal("alice")
    for _ in range(2):  # the 2 cents included in the standard seat
        assert (await w.request(alice)).admitted
    await w.spend.set_extra_usage("acme", True, user="alice")
    await w.spend.set_extra_usage("acme", False)
    d = await w.request(alice)
    assert (d.admitted, d.reason) == (False, "included")
    # Enabled for the organization, a user's own "0" still opts them out...
    await w.spend.set_extra_usage("acme", False, user="alice")
    await w.spend.set_extra_usage("acme", True)
    assert (await w.request(alice)).reason == "included"
    # ... and their "1" opts them in when the organization is not switched off.
    await w.spend.set_extra_usage("acme", True, user="alice")
    assert await w.spend.clear_extra_usage("acme")
    assert (await w.request(alice)).admitted


async def test_tier_cap_user_cap_and_unlimited_user_under_the_organization_cap(world):
    w = world()
    alice, bob, carol = [await w.principal(u) for u in ("alice", "bob", "carol")]
    # 2 cents included, then the tier's 3-cent cap.
    n, d = await spend_until_refused(w, alice)
    assert (n, d.detail) == (5, "seat tier 'standard'")
    # bob's own 5-cent cap replaces the tier's.
    n, d = await spend_until_refused(w, bob)
    assert (n, d.detail) == (7, "user 'bob'")
    # carol has no cap of her own: the organization's 10 cents of extra usage (8 used by
    # alice and bob) stop her after 2 cents of extra.
    n, d = await spend_until_refused(w, carol)
    assert (n, d.detail) == (4, "organization monthly")
    status = await w.spend.user_status("acme", "carol")
    assert (status.cap, status.cap_source, status.extra) == (None, "user 'carol'", 2 * C)
    assert d.resets_at_ms == 1_769_904_000_000  # 2026-02-01T00:00Z
    mtd = await w.spend.month_to_date("acme")
    assert mtd["organization"] == {"spend": 16 * C, "included": 6 * C, "extra": 10 * C}
    assert {u: v["extra"] for u, v in mtd["users"].items()} == {
        "alice": 3 * C,
        "bob": 5 * C,
        "carol": 2 * C,
    }


async def test_a_workspace_cap_stops_every_user_of_the_workspace(world):
    w = world()
    dave, erin = await w.principal("dave"), await w.principal("erin")
    for _ in range(5):  # premium: 5 cents included each, not counted against the cap
        assert (await w.request(dave)).admitted
        assert (await w.request(erin)).admitted
    n, d = await spend_until_refused(w, dave)
    assert (n, d.detail) == (4, "workspace 'research'")
    d = await w.request(erin)
    assert (d.reason, d.detail) == ("cap", "workspace 'research'")
    mtd = await w.spend.month_to_date("acme")
    assert mtd["workspaces"] == {"research": {"spend": 14 * C, "included": 10 * C, "extra": 4 * C}}


async def test_without_seats_caps_are_plain_monthly_spend_limits(world):
    w = world("organizations:\n  api:\n    spend_caps: {monthly: 0.03}\n")
    service = await w.principal(org="api")
    n, d = await spend_until_refused(w, service)
    assert (n, d.reason, d.detail) == (3, "cap", "organization monthly")
    line = (await w.spend.month_to_date("api"))["keys"][service.key_id]
    assert line == {"spend": 3 * C, "included": 0, "extra": 3 * C}


async def test_included_usage_blocks_without_extra_usage_until_the_month_ends(world, clock):
    w = world(SEATS.replace("extra_usage: {enabled: true}", "extra_usage: {enabled: false}"))
    alice = await w.principal("alice")
    n, d = await spend_until_refused(w, alice)
    assert (n, d.reason, d.resets_at_ms) == (2, "included", 1_769_904_000_000)
    clock.set(1_769_904_000_000 - 1)
    assert not (await w.request(alice)).admitted
    clock.set(1_769_904_000_000)
    assert (await w.request(alice)).admitted
    assert (await w.spend.month_to_date("acme"))["month"] == "2026-02"


async def test_a_request_straddling_the_included_amount_is_split(world):
    w = world()
    alice = await w.principal("alice")
    assert (await w.request(alice, 15_000)).admitted
    assert (await w.request(alice, 15_000)).admitted  # 5_000 included, 10_000 extra
    status = await w.spend.user_status("acme", "alice")
    assert (status.spend, status.extra, status.included) == (30_000, 10_000, 20_000)


async def test_run_time_caps_apply_to_the_next_request_and_clear_back_to_the_config(world):
    w = world()
    carol = await w.principal("carol")
    await w.spend.set_cap("acme", "org", None, 0)
    for _ in range(2):
        assert (await w.request(carol)).admitted  # included usage is never capped
    assert (await w.request(carol)).detail == "organization monthly"
    await w.spend.set_cap("acme", "org", None, UNLIMITED)
    assert (await w.request(carol)).admitted
    await w.spend.set_cap("acme", "user", "carol", C)
    assert (await w.request(carol)).detail == "user 'carol'"
    await w.spend.set_cap("acme", "user", "carol", UNLIMITED)
    assert (await w.request(carol)).admitted
    caps = await w.spend.caps("acme")

    def monthly(entry: dict) -> dict:  # the daily and weekly caps are beside it
        return {"cap": entry["cap"], "source": entry["source"]}

    assert monthly(caps["organization"]) == {"cap": None, "source": "override"}
    assert monthly(caps["tiers"]["standard"]) == {"cap": 3 * C, "source": "config"}
    assert monthly(caps["workspaces"]["research"]) == {"cap": 4 * C, "source": "config"}
    assert monthly(caps["users"]["carol"]) == {"cap": None, "source": "user 'carol'"}
    assert monthly(caps["users"]["alice"]) == {"cap": 3 * C, "source": "seat tier 'standard'"}
    assert caps["users"]["alice"]["daily"] == {"cap": None, "source": "seat tier 'standard' daily"}
    assert await w.spend.clear_cap("acme", "org")
    assert not await w.spend.clear_cap("acme", "org")
    assert monthly((await w.spend.caps("acme"))["organization"]) == {
        "cap": 10 * C,
        "source": "config",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", "org", None, 1), "unknown organization 'nope'"),
        (("acme", "team", "x", 1), "unknown cap scope 'team'"),
        (("acme", "user", "zoe", 1), "unknown user 'zoe' in 'acme' (known: alice, bob,"),
        (("acme", "tier", "gold", 1), "unknown tier 'gold' in 'acme' (known: premium, standard)"),
        (("acme", "workspace", "ops", 1), "unknown workspace 'ops'"),
        (("acme", "org", None, -1), "a cap must be between 0 and"),
        (("acme", "org", None, 1.5), "a cap is an integer amount of micro-USD"),
        (("acme", "org", None, True), "a cap is an integer amount of micro-USD"),
        (("acme", "org", None, "lots"), "a cap is an integer amount of micro-USD"),
    ],
)
async def test_bad_cap_changes_are_refused_and_change_nothing(world, args, message):
    w = world()
    with pytest.raises(SpendError, match=message.replace("(", r"\(").replace(")", r"\)")):
        await w.spend.set_cap(*args)
    assert await w.store.client.hgetall(w.store.keys.overrides("acme")) == {}
    with pytest.raises(SpendError):
        await w.spend.month_to_date("acme", "2026-13")


async def test_statement_of_a_postpaid_month_equals_its_settled_requests(world, clock):
    w = world()
    alice, bob = await w.principal("alice"), await w.principal("bob")
    service = await w.principal(None)
    costs = {"alice": [7_000, 9_000, 11_000, 13_000], "bob": [1], "service": [12_345]}
    for p, name in ((alice, "alice"), (bob, "bob"), (service, "service")):
        for cost in costs[name]:
            assert (await w.request(p, cost)).admitted
    clock.set(1_769_904_000_000)  # February: not in January's statement
    assert (await w.request(alice, 99_999)).admitted
    st = await w.spend.statement("acme", "2026-01")
    assert (st.final, st.consistent, st.billing_mode) == (True, True, "postpaid")
    lines = {line.user: line for line in st.lines}
    assert (lines["alice"].spend, lines["alice"].extra, lines["alice"].requests) == (
        40_000,
        20_000,
        4,
    )
    assert (lines["bob"].spend, lines["bob"].extra) == (1, 0)
    assert (lines[None].spend, lines[None].extra, lines[None].requests) == (12_345, 12_345, 1)
    assert st.spend == sum(sum(c) for c in costs.values()) == st.ledger_spend
    assert st.amount_due == st.extra == 20_000 + 12_345 == st.ledger_extra
    assert st.requests == 6
    feb = await w.spend.statement("acme")
    # A new month: alice has her 2 cents of included usage again.
    assert (feb.month, feb.final, feb.spend, feb.extra) == ("2026-02", False, 99_999, 79_999)
    # A month counter that disagrees with the ledger is reported, not hidden.
    await w.store.client.hincrby(w.store.keys.month("acme", "2026-01"), "extra:user=bob", 5)
    st = await w.spend.statement("acme", "2026-01")
    assert not st.consistent
    assert st.discrepancies[0].startswith("user 'bob': counters 0.000001/0.000005 extra")


async def test_statement_months_follow_the_configured_time_zone(world, clock):
    w = world(SEATS, "server: {timezone: America/New_York}\n")
    carol = await w.principal("carol")
    clock.set(1_769_904_000_000)  # 2026-02-01T00:00Z = 2026-01-31T19:00 in New York
    assert (await w.request(carol, 30_000)).admitted
    jan = await w.spend.statement("acme", "2026-01")
    assert (jan.spend, jan.extra, jan.final) == (30_000, 10_000, False)
    assert jan.period_end_ms == 1_769_922_000_000  # 2026-02-01T05:00Z
    assert (await w.spend.statement("acme", "2026-02")).spend == 0


async def test_a_prepaid_statement_has_nothing_left_to_invoice(world):
    w = world(SEATS.replace("mode: postpaid", "mode: prepaid"))
    carol = await w.principal("carol")
    for _ in range(2):
        assert (await w.request(carol)).admitted  # included: no credit needed
    st = await w.spend.statement("acme")
    assert (st.spend, st.extra, st.amount_due) == (2 * C, 0, 0)


async def test_a_statement_months_later_is_still_checked_against_the_ledger(world, clock):
    w = world()
    carol = await w.principal("carol")
    for _ in range(3):
        assert (await w.request(carol)).admitted
    clock.set(1_775_001_600_000)  # 2026-04-01: the ledger database keeps January whole
    assert (await w.request(carol)).admitted
    st = await w.spend.statement("acme", "2026-01")
    assert (st.spend, st.extra, st.ledger_spend) == (3 * C, C, 3 * C)
    assert (st.ledger_complete, st.consistent, st.discrepancies) == (True, True, ())
    april = await w.spend.statement("acme")
    assert (april.ledger_complete, april.consistent, april.spend) == (True, True, C)
