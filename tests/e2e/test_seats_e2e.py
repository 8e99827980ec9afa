"""Seats, extra usage and spend caps end to end: the official SDKs against the proxy and
the fake upstream, with the injected clock. Every priced request costs exactly one cent
on gpt-4o and 4_500 micro-USD on claude-haiku-4-5 (see tests/support/spendkit.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, TypeVar

import anthropic
import httpx2
import openai
import pytest
import redis
from tollway.limits.prices import cost_micro
from tollway.limits.scriptplans import LEARN_MIN_ESTIMATE
from tollway.limits.spend import UNLIMITED, Spend
from tollway.limits.usage import Usage
from tollway.proxy.gateway.tokens import TokenCounter

from tests.support.spendkit import (
    CLAUDE_COST,
    C,
    balance,
    buy,
    chat,
    debits,
    message,
    mtd,
    priced,
)
from tests.support.stack import Stack

FEB_1_UTC = 1_769_904_000_000  # 2026-02-01T00:00:00Z
T = TypeVar("T")

# No rate limits: bucket keys expire in real time (their TTL is the time to refill), which
# would make before/after snapshots of the store differ for reasons unrelated to money.
SEATS = """
organizations:
  acme:
    billing: {mode: MODE}
    extra_usage: {enabled: true}
    spend_caps: {monthly: 0.10}
    seat_tiers:
      standard: {included: 0.02, monthly_cap: 0.025}
      premium: {included: 0.05, monthly_cap: unlimited}
    workspaces:
      research: {spend_caps: {monthly: 0.02}}
    users:
      alice: {seat: standard}
      bob: {seat: standard, monthly_cap: 0.045}
      carol: {seat: standard, monthly_cap: unlimited}
      dave: {seat: premium, workspace: research}
      erin: {seat: premium, workspace: research}
"""


def seats(mode: str = "postpaid", replace: dict[str, str] | None = None) -> str:
    text = SEATS.replace("MODE", mode)
    for old, new in (replace or {}).items():
        assert old in text
        text = text.replace(old, new)
    return text


def spend(stack) -> Spend:
    return Spend(stack.store, stack.clock, lambda: stack.holder.current)


def count_admitted(stack, key: str, limit: int = 30) -> tuple[int, openai.APIStatusError]:
    """Send chat requests until one is refused: (how many passed, the refusal)."""
    for n in range(limit):
        try:
            chat(stack, key)
        except openai.APIStatusError as e:
            return n, e
        stack.wait_settled()
    raise AssertionError("never refused")


def test_prepaid_included_usage_leaves_credits_untouched_then_extra_is_debited(stack_factory):
    stack = stack_factory(seats("prepaid"))
    priced(stack)
    lot = buy(stack, "1.00")
    key = stack.key(user="alice")
    for _ in range(2):
        answer = chat(stack, key)
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2000, 500)
        stack.wait_settled()
    # Inside the seat's 2 cents: not extra, not debited.
    assert balance(stack) == 1_000_000
    assert mtd(stack, "2026-01").get("extra:user=alice", 0) == 0
    chat(stack, key)
    stack.wait_settled()
    assert balance(stack) == 1_000_000 - C  # extra usage at API prices, from the credits
    events = debits(stack)
    assert [(e["included"], e["extra"], e["prepaid"]) for e in events] == [
        (str(C), "0", "1"),
        (str(C), "0", "1"),
        ("0", str(C), "1"),
    ]
    assert events[-1]["lots"] == f"{lot}={C}"


def test_postpaid_extra_usage_accrues_for_the_statement(stack_factory):
    stack = stack_factory(seats())
    priced(stack)
    key = stack.key(user="carol")
    for _ in range(2):
        chat(stack, key)
    message(stack, key)
    stack.wait_settled()
    m = mtd(stack, "2026-01")
    assert (m["spend:user=carol"], m["extra:user=carol"]) == (2 * C + CLAUDE_COST, CLAUDE_COST)
    assert stack.redis.hgetall(stack.keys.account("acme")) == {}  # no credits involved
    st = stack.run(spend(stack).statement("acme", "2026-01"))
    assert (st.amount_due, st.spend, st.requests, st.consistent) == (
        CLAUDE_COST,
        2 * C + CLAUDE_COST,
        3,
        True,
    )


def test_a_user_cap_is_overshot_once_then_refused_in_each_sdk_until_the_month_ends(
    stack_factory,
):
    stack = stack_factory(seats())
    priced(stack)
    key = stack.key(user="alice")
    # 2 cents included, extra 1 and 2 cents (below the 2.5-cent cap), then 3 cents: the
    # request admitted at 2 cents overshoots the cap by half a cent.
    n, e = count_admitted(stack, key)
    assert n == 5
    assert mtd(stack, "2026-01")["extra:user=alice"] == 3 * C
    assert isinstance(e, openai.RateLimitError)
    assert e.code == "insufficient_quota"
    # Tollway's words: the cap, its amount, its reset and the next step (never the
    # provider's "Plans & Billing"); the provider's type and code, so the SDK raises as usual.
    assert e.body["message"] == (
        "You have reached the seat tier 'standard' spend cap of $0.025 for this month. It "
        "resets at 2026-02-01T00:00:00Z. To ask for a higher limit, POST "
        "/v1/tollway/limit-requests with this key (or ask your Tollway administrator)."
    )
    before = stack.snapshot()
    with pytest.raises(anthropic.BadRequestError) as refused:
        message(stack, key)
    assert refused.value.status_code == 400
    text = refused.value.body["error"]["message"]
    assert text.startswith("You have reached the seat tier 'standard' spend cap of $0.025")
    assert "seat tier 'standard'" in text and "2026-02-01T00:00:00Z" in text
    with pytest.raises(openai.RateLimitError):
        chat(stack, key)
    assert stack.snapshot() == before  # refusals take nothing
    stack.clock.set(FEB_1_UTC - 1)
    with pytest.raises(openai.RateLimitError):
        chat(stack, key)
    stack.clock.set(FEB_1_UTC)
    chat(stack, key)
    stack.wait_settled()
    assert mtd(stack, "2026-02")["spend:user=alice"] == C


def test_months_roll_over_at_midnight_in_the_configured_time_zone(stack_factory):
    stack = stack_factory(seats(), extra_yaml="server: {timezone: America/New_York}\n")
    priced(stack)
    # The clock starts at 2026-01-01T00:00Z: 19:00 on 31 December in New York.
    key = stack.key(user="alice")
    n, e = count_admitted(stack, key)
    assert n == 5
    assert "It resets at 2026-01-01T05:00:00Z." in e.message
    assert mtd(stack, "2025-12")["extra:user=alice"] == 3 * C
    # Past midnight UTC, but not yet in New York: still December, still refused.
    stack.clock.set(1_767_243_600_000 - 1)  # 2026-01-01T04:59:59.999Z
    with pytest.raises(openai.RateLimitError):
        chat(stack, key)
    stack.clock.set(1_767_243_600_000)  # 2026-01-01T05:00Z = midnight in New York
    chat(stack, key)
    stack.wait_settled()
    assert mtd(stack, "2026-01")["spend:user=alice"] == C


def test_tier_cap_user_cap_and_unlimited_user_under_the_organization_cap(stack_factory):
    stack = stack_factory(seats())
    priced(stack)
    alice, bob, carol = (stack.key(user=u) for u in ("alice", "bob", "carol"))
    n, e = count_admitted(stack, alice)  # tier cap 2.5 cents: 3 cents of extra
    assert (n, "seat tier 'standard'" in e.message) == (5, True)
    n, e = count_admitted(stack, bob)  # his own 4.5-cent cap: 5 cents of extra
    assert (n, "user 'bob'" in e.message) == (7, True)
    # carol has no cap of her own; the organization's 10 cents, 8 used, stop her.
    n, e = count_admitted(stack, carol)
    assert (n, "the organization monthly spend cap" in e.message) == (4, True)
    m = mtd(stack, "2026-01")
    assert (m["extra:org"], m["extra:user=carol"]) == (10 * C, 2 * C)


def test_a_workspace_cap(stack_factory):
    stack = stack_factory(seats())
    priced(stack)
    dave, erin = stack.key(user="dave"), stack.key(user="erin")
    for _ in range(5):  # premium seats include 5 cents each
        chat(stack, dave)
        chat(stack, erin)
    stack.wait_settled()
    n, e = count_admitted(stack, dave)
    assert (n, "workspace 'research'" in e.message) == (2, True)
    with pytest.raises(openai.RateLimitError, match="workspace 'research'"):
        chat(stack, erin)
    # A key issued for the workspace (no user) is stopped by the same cap.
    with pytest.raises(anthropic.BadRequestError, match="workspace 'research'"):
        message(stack, stack.key(workspace="research"))


def test_without_extra_usage_a_user_stops_at_the_included_amount(stack_factory):
    stack = stack_factory(seats(replace={"enabled: true": "enabled: false"}))
    priced(stack)
    key = stack.key(user="carol")
    n, e = count_admitted(stack, key)
    assert n == 2
    assert isinstance(e, openai.RateLimitError) and e.code == "insufficient_quota"
    assert e.body["message"].startswith(
        "You have used all the usage included in your seat for this month ($0.02) and extra "
        "usage is not enabled. Your usage resets at 2026-02-01T00:00:00Z. To ask for a higher "
        "limit, POST /v1/tollway/limit-requests with this key"
    )
    with pytest.raises(anthropic.BadRequestError, match="included in your seat"):
        message(stack, key)
    # Enabled at run time for carol only: the very next request passes.
    stack.run(spend(stack).set_extra_usage("acme", True, user="carol"))
    chat(stack, key)
    stack.wait_settled()
    # Disabled entirely for the organization: blocked again, her own setting notwithstanding.
    stack.run(spend(stack).set_extra_usage("acme", False))
    with pytest.raises(openai.RateLimitError, match="extra usage is not enabled"):
        chat(stack, key)


def test_a_cap_raised_at_run_time_or_in_the_yaml_lets_the_next_request_through(stack_factory):
    stack = stack_factory(seats())
    priced(stack)
    key = stack.key(user="alice")
    assert count_admitted(stack, key)[0] == 5
    stack.run(spend(stack).set_cap("acme", "tier", "standard", 4 * C))
    chat(stack, key)  # the very next request
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError, match="seat tier 'standard'"):
        chat(stack, key)
    stack.run(spend(stack).set_cap("acme", "user", "alice", UNLIMITED))
    chat(stack, key)
    stack.wait_settled()
    # Back to the YAML, then a YAML edit raises the tier's cap.
    stack.run(spend(stack).clear_cap("acme", "user", "alice"))
    stack.run(spend(stack).clear_cap("acme", "tier", "standard"))
    with pytest.raises(openai.RateLimitError):
        chat(stack, key)
    stack.reconfigure(seats(replace={"monthly_cap: 0.025": "monthly_cap: 0.08"}))
    chat(stack, key)
    stack.wait_settled()
    assert mtd(stack, "2026-01")["extra:user=alice"] == 6 * C


def test_refusals_of_every_money_kind_change_nothing(stack_factory):
    stack = stack_factory(seats("prepaid", {"spend_caps: {monthly: 0.10}": ""}))
    priced(stack)
    alice, carol = stack.key(user="alice"), stack.key(user="carol")
    for _ in range(2):
        chat(stack, carol)  # included: served without credits
    stack.wait_settled()
    # carol is past her included usage and the organization has no credit.
    before = stack.snapshot()
    with pytest.raises(openai.RateLimitError, match="credit balance is too low"):
        chat(stack, carol)
    with pytest.raises(anthropic.BadRequestError, match="credit balance is too low"):
        message(stack, carol)
    assert stack.snapshot() == before
    buy(stack, "1.00")
    count_admitted(stack, alice)
    before = stack.snapshot()
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            chat(stack, alice)
        with pytest.raises(anthropic.BadRequestError):
            message(stack, alice)
    assert stack.snapshot() == before


# --- 100 simultaneous requests around the caps -------------------------------------------
CROWD = """
organizations:
  acme:
    limits: {rpm: 100000, tpm: 100000000}
    billing: {mode: postpaid}
    extra_usage: {enabled: true}
    spend_caps: {monthly: 0.22}
    seat_tiers:
      standard: {included: 0.02, monthly_cap: 0.05}
    users:
USERS
"""
CROWD_USERS = [f"u{i}" for i in range(5)]
INCLUDED, TIER_CAP, ORG_CAP = 2 * C, 5 * C, 22 * C


def server_order(stack: Stack, run: Callable[[], T]) -> tuple[list[tuple[str, str, str]], T]:
    """Run `run()`; (every admit and settle the server executed meanwhile, in its order of
    execution, as (script, request id, user), read from MONITOR; what `run` returned).
    Scripts run one at a time, so this is the order in which each saw and changed the
    counters."""
    names = {s.sha: s.name for s in stack.store.scripts.values()}
    end = "crowd-probe-end"
    events = []
    probe = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        with redis.Redis.from_url(stack.redis_url, decode_responses=True).monitor() as monitor:
            result = run()
            probe.echo(end)
            while (c := monitor.next_command())["command"] != f"ECHO {end}":
                words = c["command"].split(" ", 2)
                if c["client_type"] == "lua" or words[0].upper() not in ("EVALSHA", "EVAL"):
                    continue
                script = names.get(words[1])
                assert script is not None, "a script ran by EVAL: its source is not matched"
                if script in ("admit", "settle"):
                    rid = re.search(r"req_[0-9a-f]{24}", c["command"]).group(0)
                    user = re.search(r"spend:user=(u\d)", c["command"]).group(1)
                    events.append((script, rid, user))
    finally:
        probe.close()
    return events, result


def crowd(stack: Stack, max_connections: int | None) -> tuple[list[Any], list[Any]]:
    """Five users send 20 chat requests each, all issued at once (each user's client keeps
    at most `max_connections` connections; None: one per request). (served, refused)."""
    priced(stack)
    keys = {u: stack.key(user=u) for u in CROWD_USERS}
    outcomes: list[Any] = []

    async def go() -> None:
        pool = httpx2.Limits(max_connections=max_connections)
        clients = {
            u: stack.async_openai(k, http_client=openai.DefaultAsyncHttpx2Client(limits=pool))
            for u, k in keys.items()
        }

        async def one(u: str) -> Any:
            try:
                return await clients[u].chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "Say hello"}]
                )
            except openai.RateLimitError as e:
                return e

        outcomes.extend(await asyncio.gather(*(one(u) for u in CROWD_USERS * 20)))

    stack.run(go())
    stack.wait_settled()
    served = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    assert len(served) + len(refused) == 100
    assert all(o.code == "insufficient_quota" for o in refused)
    return served, refused


def expected_costs(stack: Stack) -> tuple[int, int]:
    """What admit.lua holds for one crowd request (micro-USD): (before any settlement,
    after one): the estimated input cost plus the configured default output tokens, then
    plus the learned output (500 tokens, every answer's). The estimate is below the
    input-learning minimum, so no input correction applies."""
    est = TokenCounter().estimate_request(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello"}]},
        "/v1/chat/completions",
    )
    assert est < LEARN_MIN_ESTIMATE
    cfg = stack.holder.current
    price = cfg.prices["gpt-4o"]
    input_cost = cost_micro(price, Usage(input_tokens=est))
    before = input_cost + cost_micro(price, Usage(output_tokens=cfg.metering.default_output_tokens))
    return before, input_cost + cost_micro(price, Usage(output_tokens=500))


def replay(stack: Stack, events: list[tuple[str, str, str]], served: list[Any]) -> dict[str, int]:
    """Check every admission against the counters and holds of its instant in the
    server's order, and the month's counters against the admitted requests; the replayed
    extra by user. The rule (docs/spend.md): a request whose expected cost fits in the
    user's included usage (settled + held) is admitted; otherwise its part past it is
    extra, admitted while each cap's settled + held extra is below the cap."""
    ledger = {e["rid"]: e for e in debits(stack)}  # one debit per settled request
    price = stack.holder.current.prices["gpt-4o"]
    costs = [
        cost_micro(price, Usage(o.usage.prompt_tokens, o.usage.completion_tokens)) for o in served
    ]
    assert len(ledger) == len(served)
    assert sum(int(e["cost"]) for e in ledger.values()) == sum(costs) == len(served) * C
    month = mtd(stack, "2026-01")
    assert month["spend:org"] == sum(costs)

    before, after = expected_costs(stack)
    learned = False
    spend = dict.fromkeys(CROWD_USERS, 0)
    extra = dict.fromkeys(CROWD_USERS, 0)
    held_spend = dict.fromkeys(CROWD_USERS, 0)
    held_extra = dict.fromkeys(CROWD_USERS, 0)
    holds: dict[str, tuple[str, int, int]] = {}
    admits = [rid for kind, rid, _ in events if kind == "admit"]
    assert len(admits) == len(set(admits)) == 100
    for kind, rid, user in events:
        if kind == "admit":
            e = after if learned else before
            used = spend[user] + held_spend[user]
            inside = used < INCLUDED and used + e <= INCLUDED
            x = 0 if inside else e - max(0, INCLUDED - used)
            below = (
                extra[user] + held_extra[user] < TIER_CAP
                and sum(extra.values()) + sum(held_extra.values()) < ORG_CAP
            )
            admitted = inside or below
            assert (rid in ledger) == admitted, (rid, user)
            if admitted:
                holds[rid] = (user, e, x)
                held_spend[user] += e
                held_extra[user] += x
            continue
        _, e, x = holds.pop(rid)
        held_spend[user] -= e
        held_extra[user] -= x
        learned = True
        cost = int(ledger[rid]["cost"])
        included = min(max(INCLUDED - spend[user], 0), cost)
        assert (int(ledger[rid]["included"]), ledger[rid]["user"]) == (included, user)
        spend[user] += cost
        extra[user] += cost - included
    assert sum(kind == "settle" for kind, _, _ in events) == len(ledger)
    assert {f"extra:user={u}": v for u, v in extra.items() if v} == {
        f: v for f, v in month.items() if f.startswith("extra:user=")
    }
    assert sum(extra.values()) == month["extra:org"]
    return extra


def test_a_hundred_simultaneous_requests_around_the_caps(own_valkey, tmp_path):
    """Five users of the standard tier (2 cents included, 5-cent cap, 22-cent organization
    cap) send 20 requests each, all issued at once; each user's client keeps at most 2
    connections, so 10 are in flight and admissions interleave with settlements.

    Proven from the server's own order of execution (MONITOR): every admission decision
    is exactly what the rule gives on the counters at that instant: admitted iff the user
    was within the included usage or below both caps. So no request was admitted after
    the counters showed a cap reached, and every refusal was due; the overshoot is only
    what was already in flight when a cap was reached. Month-to-date spend equals the sum
    of the admitted requests' costs to the micro-USD, and so does the month's statement."""
    users = "".join(f"      {u}: {{seat: standard}}\n" for u in CROWD_USERS)
    stack = Stack(own_valkey, tmp_path, CROWD.replace("USERS\n", users))
    try:
        events, (served, refused) = server_order(stack, lambda: crowd(stack, 2))
        extra = replay(stack, events, served)
        # The overshoot is only what was in flight: a user's last admission saw their extra
        # below the cap, and at most 4 of their requests were then admitted and unsettled
        # (2 connections, each with at most one request awaiting its answer and one whose
        # settlement may still be running), 20 for the whole organization.
        assert max(extra.values()) < TIER_CAP + 4 * C
        assert sum(extra.values()) < ORG_CAP + 20 * C
        # Not vacuous: admissions came after settlements, caps refused requests.
        first_settle = next(i for i, e in enumerate(events) if e[0] == "settle")
        assert sum(e[0] == "admit" for e in events[first_settle:]) >= 20
        assert len(refused) >= 20 and sum(extra.values()) >= ORG_CAP

        stack.clock.set(FEB_1_UTC)
        spend = Spend(stack.store, stack.clock, lambda: stack.holder.current)
        st = stack.run(spend.statement("acme", "2026-01"))
        assert (st.final, st.consistent, st.requests) == (True, True, len(served))
        assert (st.spend, st.amount_due) == (len(served) * C, sum(extra.values()))
        assert sum(line.spend for line in st.lines) == st.spend
    finally:
        stack.close()


def test_a_hundred_requests_at_the_same_instant(own_valkey, tmp_path):
    """With no client-side limit, nearly all admissions run before the settlements (in our
    runs every request was served, 18 cents of extra per user against a 5-cent cap):
    requests that pass the check before any debit overshoot the caps by everything in
    flight, as the check-before, debit-after rule says. Whatever the interleaving, every
    decision is the rule applied to the counters of its instant and the accounting is
    exact."""
    users = "".join(f"      {u}: {{seat: standard}}\n" for u in CROWD_USERS)
    stack = Stack(own_valkey, tmp_path, CROWD.replace("USERS\n", users))
    try:
        events, (served, _) = server_order(stack, lambda: crowd(stack, None))
        extra = replay(stack, events, served)
        assert sum(extra.values()) == (len(served) - 2 * len(CROWD_USERS)) * C
    finally:
        stack.close()
