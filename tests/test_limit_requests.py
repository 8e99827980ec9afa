"""Limit-increase requests: filed by a blocked user (through `Spend` and through the
client-facing endpoint with the user's own key), listed, approved or denied by an admin,
and the daily digest of pending requests posted to a webhook."""

from __future__ import annotations

import asyncio

import pytest

from limits.limit_requests import NoPendingRequest, RequestPending
from limits.spend import UNLIMITED, SpendError
from tests.spendkit import C, World, spend_until_refused

ORGS = """
organizations:
  acme:
    billing: {mode: postpaid}
    extra_usage: {enabled: true}
    seat_tiers:
      standard: {included: 0.02, monthly_cap: 0.01}
      premium: {included: 0.05, monthly_cap: 0.04}
      max: {included: 0.10, monthly_cap: unlimited}
    users:
      alice: {seat: standard}
      bob: {seat: standard}
      sam: {}
"""


@pytest.fixture
def world(store, clock):
    return World(store, clock, ORGS)


async def test_one_pending_request_per_user(world, clock):
    w = world
    first = await w.spend.file_request("acme", "alice", "  deadline on Friday ", key_id="k1")
    assert (first.status, first.reason, first.asked_ms, first.key_id) == (
        "pending",
        "deadline on Friday",
        clock.now_ms(),
        "k1",
    )
    before = await w.store.client.hgetall(w.store.keys.limit_requests("acme"))
    clock.advance(seconds=60)
    with pytest.raises(RequestPending, match="already has a pending") as e:
        await w.spend.file_request("acme", "alice", "again")
    assert e.value.request == first
    assert await w.store.client.hgetall(w.store.keys.limit_requests("acme")) == before
    # Another user is independent.
    await w.spend.file_request("acme", "bob")
    pending = await w.spend.pending("acme")
    assert [(p.request.user, p.status.seat, p.status.cap) for p in pending] == [
        ("alice", "standard", C),
        ("bob", "standard", C),
    ]
    assert await w.spend.latest_request("acme", "alice") == first


async def test_approving_a_raised_cap_lets_the_very_next_request_through(world):
    w = world
    alice = await w.principal("alice")
    n, d = await spend_until_refused(w, alice)
    assert (n, d.detail) == (3, "seat tier 'standard'")
    await w.spend.file_request("acme", "alice", "more please")
    (p,) = await w.spend.pending("acme")
    assert (p.status.spend, p.status.extra, p.status.cap) == (3 * C, C, C)
    approved = await w.spend.approve("acme", "alice", new_cap=3 * C, note="ok")
    assert (approved.status, approved.decision, approved.note) == ("approved", {"cap": 3 * C}, "ok")
    assert (await w.request(alice)).admitted
    assert (await w.request(alice)).admitted
    assert (await w.request(alice)).detail == "user 'alice'"
    assert await w.spend.pending("acme") == []
    # Decided: a second decision is refused, and a new request can be filed.
    with pytest.raises(NoPendingRequest, match="its latest request is approved"):
        await w.spend.deny("acme", "alice")
    await w.spend.file_request("acme", "alice", "even more")


async def test_approving_a_higher_tier_gives_its_included_usage_and_cap(world):
    w = world
    bob = await w.principal("bob")
    n, _ = await spend_until_refused(w, bob)
    assert n == 3
    await w.spend.file_request("acme", "bob")
    await w.spend.set_cap("acme", "tier", "premium", 6 * C)  # the tier's cap in force now
    approved = await w.spend.approve("acme", "bob", new_tier="premium")
    assert approved.decision == {"tier": "premium", "included": 5 * C, "cap": 6 * C}
    status = await w.spend.user_status("acme", "bob")
    assert (status.seat, status.included, status.cap) == ("premium", 5 * C, 6 * C)
    # 3 cents spent of the 5 now included: two more included, then extra up to the cap
    # (1 cent of extra was spent while on the standard seat).
    n, d = await spend_until_refused(w, bob)
    assert (n, d.detail) == (2 + 5, "user 'bob'")


async def test_a_tier_with_an_unlimited_cap_and_the_approval_rules(world):
    w = world
    await w.spend.file_request("acme", "alice")
    with pytest.raises(SpendError, match="exactly one of"):
        await w.spend.approve("acme", "alice")
    with pytest.raises(SpendError, match="exactly one of"):
        await w.spend.approve("acme", "alice", new_cap=C, new_tier="max")
    with pytest.raises(SpendError, match="unknown seat tier 'gold'"):
        await w.spend.approve("acme", "alice", new_tier="gold")
    with pytest.raises(SpendError, match="a cap must be between"):
        await w.spend.approve("acme", "alice", new_cap=-5)
    assert len(await w.spend.pending("acme")) == 1  # refusals changed nothing
    approved = await w.spend.approve("acme", "alice", new_tier="max")
    assert approved.decision == {"tier": "max", "included": 10 * C, "cap": UNLIMITED}
    assert (await w.spend.user_status("acme", "alice")).cap is None
    # A user without a seat can be given a higher cap, not a tier.
    await w.spend.file_request("acme", "sam")
    with pytest.raises(SpendError, match="has no seat"):
        await w.spend.approve("acme", "sam", new_tier="max")
    assert (await w.spend.approve("acme", "sam", new_cap=UNLIMITED)).decision == {"cap": UNLIMITED}


async def test_deny_keeps_the_limits_and_records_the_note(world, clock):
    w = world
    alice = await w.principal("alice")
    await spend_until_refused(w, alice)
    await w.spend.file_request("acme", "alice", "please")
    overrides = await w.spend.overrides("acme")
    clock.advance(seconds=5)
    denied = await w.spend.deny("acme", "alice", "budget is frozen")
    assert (denied.status, denied.note, denied.decided_ms) == (
        "denied",
        "budget is frozen",
        clock.now_ms(),
    )
    assert await w.spend.overrides("acme") == overrides
    assert not (await w.request(alice)).admitted
    with pytest.raises(NoPendingRequest, match="no pending limit-increase request"):
        await w.spend.approve("acme", "bob", new_cap=C)


async def test_two_admins_deciding_at_once_decide_once(world):
    w = world
    await w.spend.file_request("acme", "alice")
    results = await asyncio.gather(
        w.spend.approve("acme", "alice", new_cap=9 * C),
        w.spend.deny("acme", "alice", "no"),
        return_exceptions=True,
    )
    decided = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, NoPendingRequest)]
    assert (len(decided), len(refused)) == (1, 1)
    latest = await w.spend.latest_request("acme", "alice")
    assert latest == decided[0]
    cap = (await w.spend.overrides("acme")).get("cap:user=alice")
    assert cap == (str(9 * C) if latest.status == "approved" else None)


async def test_bad_requests_are_refused(world):
    w = world
    with pytest.raises(SpendError, match="unknown user 'zoe'"):
        await w.spend.file_request("acme", "zoe")
    with pytest.raises(SpendError, match="at most 1000 characters"):
        await w.spend.file_request("acme", "alice", "x" * 1001)
    with pytest.raises(SpendError, match="unknown organization"):
        await w.spend.pending("nope")
    assert await w.store.client.hgetall(w.store.keys.limit_requests("acme")) == {}
