"""Credit lots against a real server, with the injected clock: purchases and grants,
one-year expiry, expiry at the instant (on read, with no request), consumption order,
identities, refusals that change nothing, auto-reload overrides, and the ledger replay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from tollway.config import parse_config_text
from tollway.limits.credits import MAX_AMOUNT, Credits, one_year_later
from tollway.limits.errors import CreditError
from tollway.limits.meter import Charge, Meter
from tollway.limits.money import parse_usd
from tollway.limits.plans import Principal
from tollway.limits.usage import Usage

ENV = {"OPENAI_API_KEY": "x"}
HEAD = """
upstreams:
  openai: {base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}
prices:
  m: {input: 1, output: 1}
"""
ORGS = """
organizations:
  acme:
    billing: {mode: prepaid}
  beta:
    billing: {mode: prepaid, auto_reload: {threshold: 5.00, target: 20.00}}
  post:
    billing: {mode: postpaid}
"""
USD = parse_usd


def ms(text: str) -> int:
    """'2026-01-15T12:00:00' (UTC) → ms."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture
def cfg():
    return parse_config_text(HEAD + ORGS, "test.yaml", ENV)


@pytest.fixture
def credits(store, clock, cfg) -> Credits:
    return Credits(store, clock, lambda: cfg)


@pytest.fixture
def meter(store, clock, cfg) -> Meter:
    return Meter(store, clock, lambda: cfg)


async def spend(meter: Meter, rid: str, cost: int, org: str = "acme"):
    """Settle a successful request of `cost` micro-USD (no admission needed to settle)."""
    return await meter.settle(Charge(Principal(org, "k1"), rid, "m", Usage(1, 1), cost, True))


async def snapshot(store, org: str = "acme") -> dict:
    """Every key of the organization with its value (to prove nothing changed)."""
    client = store.client
    out = {}
    async for name in client.scan_iter(match=store.keys.org(org, "*"), count=1000):
        kind = await client.type(name)
        if kind == "hash":
            out[name] = await client.hgetall(name)
        elif kind == "zset":
            out[name] = await client.zrange(name, 0, -1, withscores=True)
        elif kind == "stream":
            out[name] = await client.xrange(name)
        else:
            out[name] = await client.get(name) if kind == "string" else kind
    return out


# --- one year ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bought", "expires"),
    [
        ("2026-03-05T10:11:12.345", "2027-03-05T10:11:12.345"),
        ("2027-12-31T23:59:59", "2028-12-31T23:59:59"),
        ("2028-02-29T08:00:00", "2029-02-28T08:00:00"),  # no 29 February in 2029
        ("2027-02-28T08:00:00", "2028-02-28T08:00:00"),  # a leap year follows: still the 28th
    ],
)
def test_one_year_is_the_same_calendar_date_next_year(bought, expires):
    assert one_year_later(ms(bought)) == ms(expires)


async def test_a_purchase_is_usable_at_once_and_expires_one_year_later(credits, clock):
    clock.set(ms("2028-02-29T08:00:00"))
    lot = await credits.buy("acme", USD("25.50"))
    assert (lot.kind, lot.amount, lot.remaining, lot.source) == (
        "purchased",
        25_500_000,
        25_500_000,
        "purchase",
    )
    assert lot.expires_ms == ms("2029-02-28T08:00:00")
    assert lot.id.startswith(f"lot_{clock.now_ms():013d}_")
    b = await credits.balance("acme")
    assert (b.available, b.lots_total, b.debt, b.held) == (25_500_000, 25_500_000, 0, 0)
    # One millisecond before the expiry it all counts; at the instant, nothing does.
    clock.set(ms("2029-02-28T08:00:00") - 1)
    assert (await credits.balance("acme")).available == 25_500_000
    clock.set(ms("2029-02-28T08:00:00"))
    assert (await credits.balance("acme")).available == 0
    [expired] = await credits.lots("acme")
    assert (expired.remaining, expired.expired) == (0, 25_500_000)


# --- expiry at the instant, with no request -----------------------------------------------
async def test_a_lot_expiring_mid_month_stops_counting_at_that_instant(credits, meter, clock):
    clock.set(ms("2026-01-01T00:00:00"))
    await credits.buy("acme", USD("10"))
    promo = await credits.grant("acme", USD("3"), timedelta(days=14, hours=12))
    assert promo.expires_ms == ms("2026-01-15T12:00:00")
    await spend(meter, "r1", USD("1"))  # drains the promotional lot first: 2 USD left there
    clock.set(ms("2026-01-15T11:59:59.999"))
    b = await credits.balance("acme")
    assert (b.available, b.lots_total) == (USD("12"), USD("12"))
    clock.set(ms("2026-01-15T12:00:00"))
    b = await credits.balance("acme")  # no request came by: reading applies the expiry
    assert (b.available, b.lots_total) == (USD("10"), USD("10"))
    lots = {lot.kind: lot for lot in await credits.lots("acme")}
    p = lots["promotional"]
    assert (p.amount, p.remaining, p.expired) == (USD("3"), 0, USD("2"))
    assert lots["purchased"].remaining == USD("10")
    newest = (await credits.history("acme", 1))[0]
    assert newest.type == "expiry"
    assert newest.fields["lot"] == promo.id
    assert newest.number("amount") == USD("2")  # the remainder, not the amount granted
    assert newest.ts == promo.expires_ms  # dated at the expiry instant, not at the read
    # Reading again records nothing more.
    await credits.balance("acme")
    assert len(await credits.history("acme", 100)) == 4  # purchase, grant, debit, expiry


# --- consumption order ----------------------------------------------------------------------
async def test_promotional_is_drained_before_purchased(credits, meter, clock):
    bought = await credits.buy("acme", USD("5"))  # expires in a year...
    clock.advance(seconds=1)
    promo = await credits.grant("acme", USD("2"), timedelta(days=400))  # ...this one later
    s = await spend(meter, "r1", USD("1.5"))
    assert s.available == USD("5.5")
    lots = {lot.id: lot for lot in await credits.lots("acme")}
    assert lots[promo.id].remaining == USD("0.5")
    assert lots[bought.id].remaining == USD("5")
    await spend(meter, "r2", USD("1"))  # 0.5 from the promotional lot, then 0.5 purchased
    lots = {lot.id: lot for lot in await credits.lots("acme")}
    assert (lots[promo.id].remaining, lots[bought.id].remaining) == (0, USD("4.5"))
    debit = (await credits.history("acme", 1))[0]
    assert debit.fields["lots"] == f"{promo.id}={USD('0.5')},{bought.id}={USD('0.5')}"


async def test_between_purchased_lots_the_one_expiring_first_drains_first(credits, meter, clock):
    clock.set(ms("2026-01-01T00:00:00"))
    first = await credits.buy("acme", USD("1"))
    clock.set(ms("2026-02-01T00:00:00"))
    second = await credits.buy("acme", USD("1"))
    assert first.expires_ms < second.expires_ms
    await spend(meter, "r1", USD("1.25"))
    lots = {lot.id: lot for lot in await credits.lots("acme")}
    assert (lots[first.id].remaining, lots[second.id].remaining) == (0, USD("0.75"))


async def test_between_promotional_lots_the_one_expiring_first_drains_first(credits, meter):
    late = await credits.grant("acme", USD("1"), timedelta(days=90))
    early = await credits.grant("acme", USD("1"), timedelta(days=30))
    await spend(meter, "r1", USD("0.4"))
    lots = {lot.id: lot for lot in await credits.lots("acme")}
    assert (lots[early.id].remaining, lots[late.id].remaining) == (USD("0.6"), USD("1"))


# --- debt --------------------------------------------------------------------------------------
async def test_overshoot_leaves_debt_that_the_next_lot_repays(credits, meter):
    await credits.buy("acme", USD("1"))
    s = await spend(meter, "r1", USD("1.30"))
    assert s.available == -USD("0.30")
    b = await credits.balance("acme")
    assert (b.available, b.lots_total, b.debt) == (-USD("0.30"), 0, USD("0.30"))
    lot = await credits.buy("acme", USD("2"))
    assert (lot.repaid, lot.remaining) == (USD("0.30"), USD("1.70"))
    b = await credits.balance("acme")
    assert (b.available, b.lots_total, b.debt) == (USD("1.70"), USD("1.70"), 0)


# --- identities ----------------------------------------------------------------------------
async def test_an_identity_gets_one_grant_only(credits, store):
    lot = await credits.grant("acme", USD("5"), timedelta(days=90), identity="+15550001111#h")
    assert lot.kind == "promotional"
    before_beta = await snapshot(store, "beta")
    with pytest.raises(CreditError, match="already received a promotional grant"):
        await credits.grant("beta", USD("5"), timedelta(days=90), identity="+15550001111#h")
    assert await snapshot(store, "beta") == before_beta == {}
    # The first organization cannot claim it twice either.
    before = await snapshot(store)
    with pytest.raises(CreditError, match="already received"):
        await credits.grant("acme", USD("5"), timedelta(days=90), identity="+15550001111#h")
    assert await snapshot(store) == before
    # Another identity, or none, is fine.
    await credits.grant("beta", USD("1"), timedelta(days=1), identity="+15550002222#h")
    await credits.grant("beta", USD("1"), timedelta(days=1))
    assert (await credits.balance("beta")).available == USD("2")


async def test_an_identity_is_claimed_once_under_concurrency(credits):
    orgs = ["acme", "beta"] * 10
    results = await asyncio.gather(
        *(credits.grant(o, USD("1"), timedelta(days=1), identity="same") for o in orgs),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1
    assert all(isinstance(r, CreditError) for r in results if r not in won)
    total = sum([(await credits.balance(o)).available for o in ("acme", "beta")])
    assert total == USD("1")


# --- refusals change nothing ---------------------------------------------------------------
@pytest.mark.parametrize("amount", [0, -1, -USD("5"), MAX_AMOUNT + 1])
async def test_bad_amounts_are_refused(credits, store, amount):
    await credits.buy("acme", USD("1"))
    before = await snapshot(store)
    with pytest.raises(CreditError, match="amount"):
        await credits.buy("acme", amount)
    with pytest.raises(CreditError, match="amount"):
        await credits.grant("acme", amount, timedelta(days=1), identity="id-1")
    assert await snapshot(store) == before
    # The identity was not used up by the refused grant.
    await credits.grant("acme", 1, timedelta(days=1), identity="id-1")


async def test_seven_decimals_never_reach_the_store(credits):
    with pytest.raises(ValueError, match="more than 6 decimal places"):
        parse_usd("1.0000001")
    with pytest.raises(CreditError, match="integer number of micro-USD"):
        await credits.buy("acme", 1.5)  # type: ignore[arg-type]


async def test_unknown_and_postpaid_organizations_are_refused(credits, store):
    with pytest.raises(CreditError, match="unknown organization 'nope'"):
        await credits.buy("nope", USD("1"))
    with pytest.raises(CreditError, match="not prepaid"):
        await credits.grant("post", USD("1"), timedelta(days=1), identity="x")
    with pytest.raises(CreditError, match="expire in the future"):
        await credits.grant("acme", USD("1"), timedelta(0))
    assert await snapshot(store, "nope") == await snapshot(store, "post") == {}
    assert await snapshot(store, "acme") == {}
    # Nothing claimed the identity.
    await credits.grant("acme", USD("1"), timedelta(days=1), identity="x")


# --- auto-reload settings: config, run-time overrides, honoured by settle.lua ---------------
async def test_settle_reports_reload_by_config_and_overrides(credits, meter, cfg):
    beta = cfg.organizations["beta"].billing.auto_reload
    await credits.buy("beta", USD("6"))
    s = await spend(meter, "r1", USD("0.5"), "beta")  # 5.5 left: not below 5
    assert s.auto_reload == 0
    s = await spend(meter, "r2", USD("1"), "beta")  # 4.5 left: buy 20 - 4.5
    assert s.auto_reload == USD("15.5")
    assert (await credits.auto_reload_settings("beta", beta)).source == "config"
    await credits.set_auto_reload("beta", USD("1"), USD("3"))
    assert (await credits.auto_reload_settings("beta", beta)).source == "override"
    assert (await spend(meter, "r3", USD("0.5"), "beta")).auto_reload == 0  # 4 left, threshold 1
    await credits.set_auto_reload("beta", USD("10"), USD("50"))
    assert (await spend(meter, "r4", USD("0.5"), "beta")).auto_reload == USD("46.5")
    await credits.disable_auto_reload("beta")
    assert await credits.auto_reload_settings("beta", beta) is None
    assert (await spend(meter, "r5", USD("0.5"), "beta")).auto_reload == 0
    await credits.clear_auto_reload("beta")
    settings = await credits.auto_reload_settings("beta", beta)
    assert (settings.threshold, settings.target, settings.source) == (USD("5"), USD("20"), "config")
    assert (await spend(meter, "r6", USD("0.5"), "beta")).auto_reload == USD("17.5")  # 2.5 left
    # An organization with no auto-reload in its config gets one by override alone.
    await credits.buy("acme", USD("1"))
    assert (await spend(meter, "r7", USD("0.5"))).auto_reload == 0
    await credits.set_auto_reload("acme", USD("1"), USD("2"))
    assert (await spend(meter, "r8", USD("0.1"))).auto_reload == USD("1.6")


async def test_bad_reload_settings_are_refused(credits, store):
    for threshold, target in [(USD("5"), USD("5")), (USD("5"), USD("4")), (-1, USD("4"))]:
        with pytest.raises(CreditError):
            await credits.set_auto_reload("acme", threshold, target)
    with pytest.raises(CreditError, match="unknown organization"):
        await credits.disable_auto_reload("nope")
    assert await snapshot(store) == {}


# --- the ledger -------------------------------------------------------------------------------
async def test_history_is_newest_first_and_limited(credits, meter, clock):
    await credits.buy("acme", USD("3"))
    clock.advance(seconds=1)
    await credits.grant("acme", USD("1"), timedelta(hours=1))
    clock.advance(seconds=1)
    await spend(meter, "r1", USD("0.25"))
    events = await credits.history("acme", 10)
    assert [e.type for e in events] == ["debit", "grant", "purchase"]
    assert [e.type for e in await credits.history("acme", 2)] == ["debit", "grant"]
    assert events[0].fields["rid"] == "r1" and events[0].number("extra") == USD("0.25")


async def test_the_ledger_replays_to_the_balance_in_redis(credits, meter, clock, store):
    clock.set(ms("2026-01-01T00:00:00"))
    await credits.buy("acme", USD("10"))
    await credits.grant("acme", USD("4"), timedelta(days=3))  # expires with 3.25 left
    await credits.grant("acme", USD("2"), timedelta(days=40), identity="phone")
    for i in range(7):
        clock.advance(seconds=86_400 * 2)
        cost = USD("0.75") + USD(str(i))
        await spend(meter, f"r{i}", cost)
        await spend(meter, f"r{i}", cost)  # a replayed settlement charges nothing
        b = await credits.balance("acme")
        assert await credits.recompute_from_ledger("acme") == b.lots_total - b.debt
    # 16 USD in lots, 3.25 expired, 26.25 spent: 13.50 of debt; a purchase repays 1 of it.
    await credits.buy("acme", USD("1"))
    b = await credits.balance("acme")
    assert (b.lots_total, b.debt) == (0, USD("12.50"))
    assert await credits.recompute_from_ledger("acme") == -USD("12.50")
    types = [e.type for e in await credits.events("acme")]
    assert types.count("debit") == 7 and types.count("expiry") == 1
    # A failed reload is recorded without moving money.
    await credits.record_event("acme", "reload_failed", {"amount": 5, "error": "declined"})
    assert await credits.recompute_from_ledger("acme") == b.lots_total - b.debt
    with pytest.raises(CreditError):
        await credits.record_event("acme", "purchase", {"amount": 5})
