"""Daily and weekly caps of seat tiers and users (YAML and run time), and run-time
overrides of every period's caps and of model caps, against the real admit and settle
scripts (Meter, injected clock) and the `Caps` API that writes and lists them."""

from __future__ import annotations

import pytest
from tollway.config.overlay import with_users
from tollway.limits.caps import Caps
from tollway.limits.errors import SpendError, UnknownName
from tollway.limits.meter import Charge
from tollway.limits.usage import Usage

from tests.store.test_holds import keys_of
from tests.support.spendkit import C, World

DAY_MS = 86_400_000
ORGS = """
organizations:
  acme:
    billing: {mode: postpaid}
    extra_usage: {enabled: true}
    seat_tiers:
      standard: {daily_cap: 0.02, weekly_cap: 0.05}
      premium: {}
    workspaces:
      research: {}
    users:
      alice: {seat: standard}
      bob: {seat: standard, daily_cap: 0.03}
      carol: {seat: standard, daily_cap: unlimited}
      dave: {seat: premium, workspace: research}
    model_caps:
      "m*": {daily: 0.10}
"""


@pytest.fixture
def world(store, clock):
    w = World(store, clock, ORGS)
    w.caps = Caps(store, lambda: w.holder.current)
    return w


async def used_up(w: World, p) -> tuple[int, str]:
    """(requests admitted, the refusal's detail) of a principal spending a cent a request."""
    for n in range(20):
        d = await w.request(p)
        if not d.admitted:
            return n, d.detail
    raise AssertionError("never refused")


async def test_tier_and_user_daily_caps_in_the_yaml(world):
    w = world
    alice, bob, carol = [await w.principal(u) for u in ("alice", "bob", "carol")]
    assert await used_up(w, alice) == (2, "seat tier 'standard' daily")
    assert await used_up(w, bob) == (3, "user 'bob' daily")
    # carol has no daily cap of her own: the tier's weekly one stops her
    assert await used_up(w, carol) == (5, "seat tier 'standard' weekly")
    w.clock.advance(ms=DAY_MS)  # a new day of the same week
    assert await used_up(w, alice) == (2, "seat tier 'standard' daily")
    w.clock.advance(ms=DAY_MS)
    assert await used_up(w, alice) == (1, "seat tier 'standard' weekly")  # 5 cents
    d = await w.request(alice)
    assert (d.reason, d.amount) == ("cap", 5 * C)


async def test_runtime_overrides_win_for_their_period_and_clearing_falls_back(world):
    w = world
    alice = await w.principal("alice")
    await w.caps.set("acme", "tier", "standard", 3 * C, "day")
    assert await used_up(w, alice) == (3, "seat tier 'standard' daily")
    await w.caps.set("acme", "user", "alice", 4 * C, "day")  # the user's own beats the tier's
    assert await used_up(w, alice) == (1, "user 'alice' daily")
    await w.caps.set("acme", "user", "alice", "unlimited", "day")
    assert await used_up(w, alice) == (1, "seat tier 'standard' weekly")  # 5 c this week
    await w.caps.set("acme", "org", None, 1 * C, "week")  # another period, another field
    assert (await w.request(alice)).detail == "organization weekly"
    assert await w.caps.clear("acme", "org", None, "week")
    assert not await w.caps.clear("acme", "org", None, "week")
    # Clearing the user's and the tier's daily overrides: the YAML's 2 cents apply again.
    assert await w.caps.clear("acme", "user", "alice", "day")
    assert await w.caps.clear("acme", "tier", "standard", "day")
    w.clock.advance(ms=7 * DAY_MS)
    assert await used_up(w, alice) == (2, "seat tier 'standard' daily")
    caps = await w.caps.in_force("acme")
    assert caps["tiers"]["standard"]["daily"] == {"cap": 2 * C, "source": "config"}
    assert caps["users"]["bob"]["daily"] == {"cap": 3 * C, "source": "user 'bob' daily"}
    assert caps["users"]["alice"]["weekly"] == {
        "cap": 5 * C,
        "source": "seat tier 'standard' weekly",
    }


async def test_a_runtime_cap_where_the_yaml_has_none(world):
    w = world
    dave = await w.principal("dave")
    for level, name, label in (
        ("workspace", "research", "workspace 'research' daily"),
        ("tier", "premium", "seat tier 'premium' daily"),
        ("user", "dave", "user 'dave' daily"),
        ("org", None, "organization daily"),
    ):
        w.clock.advance(ms=DAY_MS)
        await w.caps.set("acme", level, name, 1 * C, "day")
        assert await used_up(w, dave) == (1, label)
        assert await w.caps.clear("acme", level, name, "day")
    caps = await w.caps.in_force("acme")
    assert caps["organization"] == {
        "cap": None,
        "source": "config",
        "daily": {"cap": None, "source": "config"},
        "weekly": {"cap": None, "source": "config"},
    }


async def test_a_model_cap_override_and_its_fallback(world):
    w = world
    dave = await w.principal("dave")
    await w.caps.set("acme", "model", "m*", 2 * C, "day")
    assert await used_up(w, dave) == (2, "model 'm*' daily")
    await w.caps.set("acme", "model", "m*", 0, "week")
    assert (await w.request(dave)).detail == "model 'm*' daily"  # the first reached is named
    assert await w.caps.clear("acme", "model", "m*", "day")
    assert (await w.request(dave)).detail == "model 'm*' weekly"
    assert await w.caps.clear("acme", "model", "m*", "week")
    assert await used_up(w, dave) == (8, "model 'm*' daily")  # the YAML's 10 cents
    caps = await w.caps.in_force("acme")
    assert caps["models"]["m*"]["daily"] == {"cap": 10 * C, "source": "config"}


async def test_a_model_pattern_given_a_cap_at_run_time_joins_the_config(world, store):
    w = world
    dave = await w.principal("dave")
    await w.caps.set("acme", "model", "m", 1 * C, "month")  # the exact name, not in the YAML
    assert await store.client.smembers(store.keys.model_caps("acme")) == {"m"}
    # What every process does within a second: merge the run-time patterns in.
    w.holder.current = with_users(w.holder.current, {}, {"acme": {"m"}})
    assert await used_up(w, dave) == (1, "model 'm' monthly")
    caps = await w.caps.in_force("acme")
    assert caps["models"]["m"]["cap"] == 1 * C and caps["models"]["m"]["source"] == "override"
    await w.caps.set("acme", "model", "m", 2 * C, "day")
    assert await w.caps.clear("acme", "model", "m", "month")
    assert await store.client.smembers(store.keys.model_caps("acme")) == {"m"}  # day left
    assert await w.caps.clear("acme", "model", "m", "day")
    assert await store.client.smembers(store.keys.model_caps("acme")) == set()


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("workspace", "nope", 1), UnknownName, "unknown workspace 'nope'"),
        (("tier", "gold", 1), UnknownName, "unknown tier 'gold'"),
        (("user", "zoe", 1), UnknownName, "unknown user 'zoe'"),
        (("galaxy", "x", 1), UnknownName, "unknown cap scope 'galaxy'"),
        (("model", "gpt 4o", 1), SpendError, "whitespace"),
        (("model", "a|b", 1), SpendError, "must not contain"),
        (("model", "x" * 201, 1), SpendError, "at most 200"),
        (("org", None, -1), SpendError, "between 0 and"),
        (("org", None, 1.5), SpendError, "integer amount"),
    ],
)
async def test_bad_caps_are_refused_and_change_nothing(world, store, args, error, message):
    w = world
    before = await store.client.hgetall(store.keys.overrides("acme"))
    with pytest.raises(error, match=message):
        await w.caps.set("acme", *args, "day")
    with pytest.raises(SpendError, match="unknown period 'year'"):
        await w.caps.set("acme", "org", None, 1, "year")
    assert await store.client.hgetall(store.keys.overrides("acme")) == before
    assert await store.client.smembers(store.keys.model_caps("acme")) == set()


async def test_a_refusal_by_a_daily_cap_takes_nothing(world, store):
    w = world
    alice = await w.principal("alice")
    assert await used_up(w, alice) == (2, "seat tier 'standard' daily")
    before = await keys_of(store)
    for _ in range(3):
        assert not (await w.request(alice)).admitted
    assert await keys_of(store) == before


async def test_requests_in_flight_hold_against_runtime_daily_and_model_caps(world, store):
    """A burst admitted before any settles: each admission holds its expected cost against
    the run-time caps of every period, so the cap stops the burst, not the settlements."""
    w = world
    dave = await w.principal("dave")
    await w.caps.set("acme", "user", "dave", 3 * C, "day")
    admitted = [(await w.meter.admit(dave, f"b{i}", "m", C, C)).admitted for i in range(6)]
    assert admitted == [True, True, True, False, False, False]  # 0, 1, 2 cents held
    held = await store.client.hgetall(store.keys.held("acme"))
    assert int(held["extra:user=dave"]) == 3 * C and int(held["extra:model=m*"]) == 3 * C
    for i in range(3):  # a failure gives its hold back
        await w.meter.settle(Charge(dave, f"b{i}", "m", Usage(), 0, False))
    assert await store.client.hgetall(store.keys.held("acme")) == {}
    await w.caps.clear("acme", "user", "dave", "day")
    await w.caps.set("acme", "model", "m*", 2 * C, "week")
    admitted = [(await w.meter.admit(dave, f"c{i}", "m", C, C)).admitted for i in range(4)]
    assert admitted == [True, True, False, False]
