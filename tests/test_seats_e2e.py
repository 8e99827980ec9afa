"""Seats, extra usage and spend caps end to end: the official SDKs against the proxy and
the fake upstream, with the injected clock. Every priced request costs exactly one cent
on gpt-4o and 4_500 micro-USD on claude-haiku-4-5 (see tests/spendkit.py)."""

from __future__ import annotations

import anthropic
import openai
import pytest

from limits.spend import UNLIMITED, Spend
from tests.spendkit import (
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

FEB_1_UTC = 1_769_904_000_000  # 2026-02-01T00:00:00Z

SEATS = """
organizations:
  acme:
    limits: {rpm: 100000, tpm: 100000000}
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
    buy(stack, "1.00")
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
    assert events[-1]["lots"] == f"lot1={C}"


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
    assert e.body["message"] == (
        "You have reached your specified API usage limits: the seat tier 'standard' spend "
        "cap. It resets at 2026-02-01T00:00:00Z. To ask for a higher limit, POST "
        "/v1/tollway/limit-requests with this key."
    )
    before = stack.snapshot()
    with pytest.raises(anthropic.BadRequestError) as refused:
        message(stack, key)
    assert refused.value.status_code == 400
    text = refused.value.body["error"]["message"]
    assert text.startswith("You have reached your specified API usage limits")
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
        "You have used all the usage included in your seat for this month and extra usage "
        "is not enabled. Your usage resets at 2026-02-01T00:00:00Z."
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
