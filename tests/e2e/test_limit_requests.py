"""Limit-increase requests: filed by a blocked user (through `LimitIncreases` and through the
client-facing endpoint with the user's own key), listed, approved or denied by an admin,
and the daily digest of pending requests posted to a webhook."""

from __future__ import annotations

import asyncio

import aiohttp
import aiohttp.web
import openai
import orjson
import pytest
from tollway.limits.increases import (
    LimitIncreases,
    LimitRequest,
    NoPendingRequest,
    PendingRequest,
    RequestPending,
)
from tollway.limits.spend import UNLIMITED, Spend, SpendError, UserStatus
from tollway.proxy.gateway.member_requests import PATH
from tollway.proxy.runtime.digest import Digest, build_digest

from tests.support.spendkit import C, World, chat, priced, spend_until_refused

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
    first = await w.increases.file("acme", "alice", "  deadline on Friday ", key_id="k1")
    assert (first.status, first.reason, first.asked_ms, first.key_id) == (
        "pending",
        "deadline on Friday",
        clock.now_ms(),
        "k1",
    )
    before = await w.store.client.hgetall(w.store.keys.limit_requests("acme"))
    clock.advance(seconds=60)
    with pytest.raises(RequestPending, match="already has a pending") as e:
        await w.increases.file("acme", "alice", "again")
    assert e.value.request == first
    assert await w.store.client.hgetall(w.store.keys.limit_requests("acme")) == before
    # Another user is independent.
    await w.increases.file("acme", "bob")
    pending = await w.increases.pending("acme")
    assert [(p.request.user, p.status.seat, p.status.cap) for p in pending] == [
        ("alice", "standard", C),
        ("bob", "standard", C),
    ]
    assert await w.increases.latest("acme", "alice") == first


async def test_approving_a_raised_cap_lets_the_very_next_request_through(world):
    w = world
    alice = await w.principal("alice")
    n, d = await spend_until_refused(w, alice)
    assert (n, d.detail) == (3, "seat tier 'standard'")
    await w.increases.file("acme", "alice", "more please")
    (p,) = await w.increases.pending("acme")
    assert (p.status.spend, p.status.extra, p.status.cap) == (3 * C, C, C)
    approved = await w.increases.approve("acme", "alice", new_cap=3 * C, note="ok")
    assert (approved.status, approved.decision, approved.note) == ("approved", {"cap": 3 * C}, "ok")
    assert (await w.request(alice)).admitted
    assert (await w.request(alice)).admitted
    assert (await w.request(alice)).detail == "user 'alice'"
    assert await w.increases.pending("acme") == []
    # Decided: a second decision is refused, and a new request can be filed.
    with pytest.raises(NoPendingRequest, match="its latest request is approved"):
        await w.increases.deny("acme", "alice")
    await w.increases.file("acme", "alice", "even more")


async def test_approving_a_higher_tier_gives_its_included_usage_and_cap(world):
    w = world
    bob = await w.principal("bob")
    n, _ = await spend_until_refused(w, bob)
    assert n == 3
    await w.increases.file("acme", "bob")
    await w.spend.set_cap("acme", "tier", "premium", 6 * C)  # the tier's cap in force now
    approved = await w.increases.approve("acme", "bob", new_tier="premium")
    assert approved.decision == {"tier": "premium", "included": 5 * C, "cap": 6 * C}
    status = await w.spend.user_status("acme", "bob")
    assert (status.seat, status.included, status.cap) == ("premium", 5 * C, 6 * C)
    # 3 cents spent of the 5 now included: two more included, then extra up to the cap
    # (1 cent of extra was spent while on the standard seat).
    n, d = await spend_until_refused(w, bob)
    assert (n, d.detail) == (2 + 5, "user 'bob'")


async def test_a_tier_with_an_unlimited_cap_and_the_approval_rules(world):
    w = world
    await w.increases.file("acme", "alice")
    with pytest.raises(SpendError, match="exactly one of"):
        await w.increases.approve("acme", "alice")
    with pytest.raises(SpendError, match="exactly one of"):
        await w.increases.approve("acme", "alice", new_cap=C, new_tier="max")
    with pytest.raises(SpendError, match="unknown seat tier 'gold'"):
        await w.increases.approve("acme", "alice", new_tier="gold")
    with pytest.raises(SpendError, match="a cap must be between"):
        await w.increases.approve("acme", "alice", new_cap=-5)
    assert len(await w.increases.pending("acme")) == 1  # refusals changed nothing
    approved = await w.increases.approve("acme", "alice", new_tier="max")
    assert approved.decision == {"tier": "max", "included": 10 * C, "cap": UNLIMITED}
    assert (await w.spend.user_status("acme", "alice")).cap is None
    # A user without a seat can be given a higher cap, not a tier.
    await w.increases.file("acme", "sam")
    with pytest.raises(SpendError, match="has no seat"):
        await w.increases.approve("acme", "sam", new_tier="max")
    approved = await w.increases.approve("acme", "sam", new_cap=UNLIMITED)
    assert approved.decision == {"cap": UNLIMITED}


async def test_deny_keeps_the_limits_and_records_the_note(world, clock):
    w = world
    alice = await w.principal("alice")
    await spend_until_refused(w, alice)
    await w.increases.file("acme", "alice", "please")
    overrides = await w.spend.overrides("acme")
    clock.advance(seconds=5)
    denied = await w.increases.deny("acme", "alice", "budget is frozen")
    assert (denied.status, denied.note, denied.decided_ms) == (
        "denied",
        "budget is frozen",
        clock.now_ms(),
    )
    assert await w.spend.overrides("acme") == overrides
    assert not (await w.request(alice)).admitted
    with pytest.raises(NoPendingRequest, match="no pending limit-increase request"):
        await w.increases.approve("acme", "bob", new_cap=C)


async def test_two_admins_deciding_at_once_decide_once(world):
    w = world
    await w.increases.file("acme", "alice")
    results = await asyncio.gather(
        w.increases.approve("acme", "alice", new_cap=9 * C),
        w.increases.deny("acme", "alice", "no"),
        return_exceptions=True,
    )
    decided = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, NoPendingRequest)]
    assert (len(decided), len(refused)) == (1, 1)
    latest = await w.increases.latest("acme", "alice")
    assert latest == decided[0]
    cap = (await w.spend.overrides("acme")).get("cap:user=alice")
    assert cap == (str(9 * C) if latest.status == "approved" else None)


async def test_bad_requests_are_refused(world):
    w = world
    with pytest.raises(SpendError, match="unknown user 'zoe'"):
        await w.increases.file("acme", "zoe")
    with pytest.raises(SpendError, match="at most 1000 characters"):
        await w.increases.file("acme", "alice", "x" * 1001)
    with pytest.raises(SpendError, match="unknown organization"):
        await w.increases.pending("nope")
    assert await w.store.client.hgetall(w.store.keys.limit_requests("acme")) == {}


# --- the client-facing endpoint, through the proxy -----------------------------------------
E2E = """
organizations:
  acme:
    billing: {mode: postpaid}
    extra_usage: {enabled: true}
    spend_caps: {monthly: 1.00}
    seat_tiers:
      standard: {included: 0.02, monthly_cap: 0.01}
      premium: {included: 0.05, monthly_cap: 0.04}
    users:
      alice: {seat: standard}
"""


def http(stack, method: str, key: str | None, body: bytes | None = None, anthropic=False):
    """(status, JSON body) of a call to the endpoint with aiohttp."""

    async def go():
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        if anthropic:
            headers["anthropic-version"] = "2023-06-01"
        async with aiohttp.ClientSession() as s:
            url = stack.url + PATH
            async with s.request(method, url, data=body, headers=headers) as r:
                return r.status, await r.json()

    return stack.run(go())


def blocked_alice(stack):
    """alice's key (record, secret), after her cap stopped her."""
    priced(stack)
    record, key = stack.key_record(user="alice")
    for _ in range(3):  # 2 cents included, then one cent of extra reaches the 1-cent cap
        chat(stack, key)
        stack.wait_settled()
    with pytest.raises(openai.RateLimitError, match="POST /v1/tollway/limit-requests"):
        chat(stack, key)
    return record, key


def test_a_blocked_user_files_a_request_and_an_approval_lets_the_next_request_through(
    stack_factory,
):
    stack = stack_factory(E2E)
    record, key = blocked_alice(stack)
    before = stack.snapshot()
    status, body = http(stack, "POST", key, b'{"reason": "release on Friday"}')
    assert status == 201
    assert (body["status"], body["user"], body["reason"]) == (
        "pending",
        "alice",
        "release on Friday",
    )
    assert body["created_at"] == "2026-01-01T00:00:00Z"
    # Filing touched the requests hash only: no bucket, counter or ledger moved.
    after = stack.snapshot()
    lir = stack.keys.limit_requests("acme")
    assert {k: v for k, v in after.items() if k != lir} == before
    status, again = http(stack, "POST", key, b"")
    assert status == 409
    assert again["error"]["type"] == "invalid_request_error"
    assert body["id"] in again["error"]["message"]
    status, mine = http(stack, "GET", key)
    assert (status, mine["id"], mine["status"]) == (200, body["id"], "pending")
    assert mine["month"] == {
        "seat": "standard",
        "included_usage": 2 * C,
        "spend": 3 * C,
        "extra_usage_spend": C,
        "cap": C,
        "extra_usage_enabled": True,
        "resets_at": "2026-02-01T00:00:00Z",
    }
    increases = LimitIncreases(Spend(stack.store, stack.clock, lambda: stack.holder.current))
    (pending,) = stack.run(increases.pending("acme"))
    assert (pending.request.id, pending.request.key_id) == (body["id"], record.key_id)
    stack.run(increases.approve("acme", "alice", new_tier="premium"))
    chat(stack, key)  # the very next request
    status, mine = http(stack, "GET", key)
    assert mine["status"] == "approved"
    assert mine["decision"] == {"tier": "premium", "included": 5 * C, "cap": 4 * C}
    # Decided: a new request may be filed (through the Anthropic format, too).
    status, _ = http(stack, "POST", key, None, anthropic=True)
    assert status == 201


def test_endpoint_errors_in_the_callers_format(stack_factory):
    stack = stack_factory(E2E)
    alice = stack.key(user="alice")
    status, body = http(stack, "GET", alice)
    assert (status, body["error"]["message"]) == (
        404,
        "You have not filed a limit-increase request.",
    )
    status, body = http(stack, "POST", stack.key(), b"{}")
    assert status == 400 and "belongs to no user" in body["error"]["message"]
    status, body = http(stack, "POST", stack.key(), b"{}", anthropic=True)
    assert (status, body["type"], body["error"]["type"]) == (400, "error", "invalid_request_error")
    assert http(stack, "POST", "tw-nope", b"{}")[0] == 401
    status, body = http(stack, "POST", "tw-nope", b"{}", anthropic=True)
    assert (status, body["error"]["type"]) == (401, "authentication_error")
    assert http(stack, "POST", None, b"{}")[0] == 401
    assert http(stack, "POST", alice, b"{not json")[0] == 400
    assert http(stack, "POST", alice, b"[1]")[0] == 400
    assert http(stack, "POST", alice, b'{"reason": 5}')[0] == 400
    status, body = http(stack, "POST", alice, orjson.dumps({"reason": "x" * 1001}))
    assert status == 400 and "1000 characters" in body["error"]["message"]
    assert http(stack, "POST", alice, b"x" * 70_000)[0] == 413
    # None of these filed anything.
    assert stack.redis.hgetall(stack.keys.limit_requests("acme")) == {}


def test_a_key_without_a_user_is_not_told_to_file_a_request(stack_factory):
    stack = stack_factory(E2E.replace("monthly: 1.00", "monthly: 0.01"))
    priced(stack)
    service = stack.key()
    chat(stack, service)
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError) as e:
        chat(stack, service)
    assert "organization monthly" in e.value.body["message"]
    assert "limit-requests" not in e.value.body["message"]


# --- the daily digest ------------------------------------------------------------------------
HOOK_YAML = "notifications: {{limit_requests_webhook: '{url}', digest_hour: 9}}\n"
JAN_1_9AM_UTC = 1_767_258_000_000  # 2026-01-01T09:00Z


def test_build_digest_is_a_pure_summary_of_pending_requests(store, clock):
    assert build_digest("acme", [], "2026-01-05") is None
    request = LimitRequest("lir_1", "acme", "alice", "deadline", "pending", 1_767_225_600_000)
    status = UserStatus("alice", "standard", None, 2 * C, 3 * C, C, C, "seat tier 'x'", True)
    payload = build_digest("acme", [PendingRequest(request, status)], "2026-01-05")
    assert payload == build_digest("acme", [PendingRequest(request, status)], "2026-01-05")
    assert payload["requests"] == [
        {
            "id": "lir_1",
            "user": "alice",
            "seat": "standard",
            "reason": "deadline",
            "asked_at": "2026-01-01T00:00:00Z",
            "spend": 3 * C,
            "extra": C,
            "included": 2 * C,
            "cap": C,
        }
    ]
    assert (payload["organization"], payload["date"], payload["pending"]) == (
        "acme",
        "2026-01-05",
        1,
    )
    assert payload["text"].splitlines()[:2] == [
        "Tollway: 1 pending limit-increase request(s) in acme (2026-01-05)",
        "- alice (standard), asked 2026-01-01T00:00:00Z: spent $0.03 this month, $0.01 of "
        'extra usage, cap $0.01: "deadline"',
    ]


async def start_hook(answers: list[int]):
    """A webhook on loopback: (url, payloads received, runner); answers statuses in turn."""
    received: list[dict] = []

    async def hook(request):
        received.append(await request.json())
        return aiohttp.web.Response(status=answers.pop(0) if answers else 200)

    app = aiohttp.web.Application()
    app.router.add_post("/hook", hook)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}/hook", received, runner


async def test_the_digest_is_posted_once_a_day_from_the_configured_hour(store, clock):
    url, received, runner = await start_hook([500])
    w = World(store, clock, ORGS, HOOK_YAML.format(url=url))
    async with aiohttp.ClientSession() as client:
        digest = Digest(w.holder, w.increases, clock, client)
        assert await digest.run_once() == []  # nothing pending
        await w.increases.file("acme", "alice", "more")
        assert await digest.run_once() == []  # 00:00, before 09:00
        clock.set(JAN_1_9AM_UTC)
        assert await digest.run_once() == []  # the webhook answered 500: not posted...
        assert await digest.run_once() == ["acme"]  # ... so it is tried again
        assert [p["pending"] for p in received] == [1, 1]
        await w.increases.file("acme", "bob")
        assert await digest.run_once() == []  # once a day
        clock.advance(seconds=86_400)
        assert await digest.run_once() == ["acme"]
        assert [r["user"] for r in received[-1]["requests"]] == ["alice", "bob"]
        # Another replica, same store and day: nothing more is posted.
        other = Digest(w.holder, w.increases, clock, client)
        assert await other.run_once() == []
        await w.increases.deny("acme", "alice")
        await w.increases.deny("acme", "bob")
        clock.advance(seconds=86_400)
        assert await digest.run_once() == []  # nothing pending: no post
    await runner.cleanup()
    assert len(received) == 3


async def test_the_digest_hour_is_in_the_configured_time_zone(store, clock):
    url, received, runner = await start_hook([])
    extra = "server: {timezone: Asia/Tokyo}\n" + HOOK_YAML.format(url=url)
    w = World(store, clock, ORGS, extra)
    await w.increases.file("acme", "alice")
    async with aiohttp.ClientSession() as client:
        digest = Digest(w.holder, w.increases, clock, client)
        clock.set(JAN_1_9AM_UTC - 1)  # 17:59 in Tokyo, past 09:00 there
        assert await digest.run_once() == ["acme"]
        assert received[0]["date"] == "2026-01-01"
    await runner.cleanup()


def test_the_app_runs_the_digest_task_only_when_a_webhook_is_configured(stack_factory):
    def digest_tasks(stack) -> list[asyncio.Task]:
        async def tasks():
            return [t for t in asyncio.all_tasks() if t.get_name() == "tollway-digest"]

        return stack.run(tasks())

    assert digest_tasks(stack_factory(E2E)) == []
    hooked = stack_factory(E2E, extra_yaml=HOOK_YAML.format(url="http://127.0.0.1:9/hook"))
    (task,) = digest_tasks(hooked)
    assert not task.done()


async def test_approving_a_cap_for_a_user_stopped_at_the_included_usage_enables_extra(store, clock):
    w = World(store, clock, ORGS.replace("extra_usage: {enabled: true}", "extra_usage: {}"))
    alice = await w.principal("alice")
    n, d = await spend_until_refused(w, alice)
    assert (n, d.reason) == (2, "included")
    await w.increases.file("acme", "alice")
    await w.increases.approve("acme", "alice", new_cap=2 * C)
    assert (await w.spend.user_status("acme", "alice")).extra_usage
    n, d = await spend_until_refused(w, alice)
    assert (n, d.detail) == (2, "user 'alice'")
    # Moved to a tier in the meantime: the statement shows the seat in force.
    await w.increases.file("acme", "alice")
    await w.increases.approve("acme", "alice", new_tier="max")
    assert [line.seat for line in (await w.spend.statement("acme")).lines] == ["max"]
