"""Coding assistants as tenants (issue 20): Claude Code's requests go to the organization's
client workspace whatever key made them, are limited there while the same key's other
requests pass, no key can be made for that workspace, and the cost per developer per day
equals what was sent, to the micro-USD."""

from __future__ import annotations

import json
import math

import anthropic
import pytest
import requests
from tollway.limits.admins import Credentials
from tollway.limits.developers import developer_cost
from tollway.limits.spend import Spend
from tollway.proxy.cli.main import main

from tests.support.browser import go, shoot, sign_in
from tests.support.stack import ENV

ORGS = """
organizations:
  acme:
    billing: {mode: postpaid}
    workspaces:
      scripts: {}
    users:
      alice: {workspace: scripts}
      bob: {}
      carol: {}
    client_workspaces: {claude-code: claude-code}
"""
TOKEN = "admin-token-for-tests"
MODEL = "claude-haiku-4-5"  # $1.00 in, $5.00 out per million tokens (tests/support/stack.py)
HELLO = [{"role": "user", "content": "Hello"}]
# What Claude Code sends on every request (user agent, app header, betas, session id).
CLAUDE_CODE = {
    "user-agent": "claude-cli/2.1.0 (external, cli)",
    "x-app": "cli",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
}


@pytest.fixture
def stack(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    s = stack_factory(ORGS)
    monkeypatch.setenv("REDIS_URL", s.redis_url)
    monkeypatch.setenv("TOLLWAY_CONFIG", str(s.config_path))
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return s


def cost_of(input_tokens: int, output_tokens: int) -> int:
    """micro-USD at $1 per million input tokens and $5 per million output tokens."""
    return input_tokens * 1 + output_tokens * 5


def ask(stack, key: str, output_tokens: int, claude_code: bool, session: str = "s1") -> None:
    stack.fake.behavior.input_tokens = 1_000
    stack.fake.behavior.output_tokens = output_tokens
    headers = {**CLAUDE_CODE, "x-claude-code-session-id": session} if claude_code else {}
    stack.anthropic(key, default_headers=headers).messages.create(
        model=MODEL, max_tokens=512, messages=HELLO
    )
    stack.wait_settled()


def spend(stack) -> Spend:
    return Spend(stack.store, stack.clock, lambda: stack.holder.current)


def month(stack) -> dict:
    return stack.run(spend(stack).month_to_date("acme"))


def test_claude_code_requests_go_to_the_client_workspace_and_its_cap(stack) -> None:
    key = stack.key(workspace="scripts", user="alice")
    ask(stack, key, output_tokens=200, claude_code=True)  # 1000 + 1000 micro-USD
    ask(stack, key, output_tokens=200, claude_code=False)
    m = month(stack)
    assert m["workspaces"]["claude-code"]["spend"] == 2_000
    assert m["workspaces"]["scripts"]["spend"] == 2_000
    assert m["users"]["alice"]["spend"] == 4_000  # the key's user counts both

    # A cap on the client workspace (it was never declared: it exists for the client).
    stack.run(spend(stack).set_cap("acme", "workspace", "claude-code", 3_000))
    ask(stack, key, output_tokens=200, claude_code=True)  # 4,000 of 3,000: the one overshoot
    before = month(stack)
    with pytest.raises(anthropic.BadRequestError, match="claude-code"):
        ask(stack, key, output_tokens=200, claude_code=True)
    assert month(stack) == before  # a refusal changes nothing
    ask(stack, key, output_tokens=200, claude_code=False)  # the same key, not Claude Code
    after = month(stack)
    assert after["workspaces"]["scripts"]["spend"] == 4_000
    assert after["workspaces"]["claude-code"]["spend"] == 4_000


def test_a_session_header_alone_is_claude_code_and_other_clients_are_not(stack) -> None:
    key = stack.key(user="bob")
    stack.fake.behavior.input_tokens, stack.fake.behavior.output_tokens = 1_000, 0
    client = stack.anthropic(key, default_headers={"x-claude-code-session-id": "abc"})
    client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    other = stack.anthropic(key, default_headers={"user-agent": "my-script/1.0", "x-app": "web"})
    other.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    stack.wait_settled()
    m = month(stack)
    assert m["workspaces"]["claude-code"]["spend"] == 1_000
    assert m["users"]["bob"]["spend"] == 2_000


def test_no_key_can_be_created_for_the_client_workspace(stack, capsys) -> None:
    code = main(["keys", "create", "--org", "acme", "--workspace", "claude-code"])
    err = capsys.readouterr().err
    assert code == 2 and "workspace 'claude-code' is the workspace of the client" in err
    r = requests.post(
        stack.url + "/admin/orgs/acme/keys",
        json={"workspace": "claude-code"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert r.status_code == 400 and "no key" in r.json()["error"]["message"]
    keys = requests.get(
        stack.url + "/admin/orgs/acme/keys",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    ).json()
    assert keys["keys"] == []  # nothing was created


def test_cost_per_developer_per_day_equals_what_was_sent(stack, capsys) -> None:
    keys = {u: stack.key(user=u) for u in ("alice", "bob", "carol")}
    service = stack.key()  # a key without a user: never a developer's
    day1 = [("alice", 200), ("alice", 1_000), ("bob", 400), ("carol", 3_000)]
    day2 = [("alice", 600), ("bob", 0)]
    sent: dict[tuple[str, str], int] = {}
    for day, traffic in (("2026-01-01", day1), ("2026-01-02", day2)):
        for user, out in traffic:
            ask(stack, keys[user], out, claude_code=True)
            sent[(day, user)] = sent.get((day, user), 0) + cost_of(1_000, out)
        ask(stack, service, 100, claude_code=True)
        stack.clock.advance(seconds=86_400)

    costs = sorted(sent.values())
    expected_mean = (2 * sum(costs) + len(costs)) // (2 * len(costs))  # half up
    expected_p90 = costs[math.ceil(0.9 * len(costs)) - 1]
    per_month: dict[str, int] = {}
    for (_, user), c in sent.items():
        per_month[user] = per_month.get(user, 0) + c
    expected_month = (2 * sum(per_month.values()) + 3) // (2 * 3)

    r = stack.run(developer_cost(stack.store.history, "acme", "2026-01-01", "2026-01-02"))
    assert (r.developers, r.developer_days, r.cost) == (3, len(sent), sum(costs))
    assert (r.mean_daily, r.p90_daily, r.monthly) == (expected_mean, expected_p90, expected_month)
    assert [(d.day, d.active_developers, d.cost) for d in r.days] == [
        (day, n, sum(c for (d, _), c in sent.items() if d == day))
        for day, n in (("2026-01-01", 3), ("2026-01-02", 2))
    ]

    # The same figures through the admin API (client = its workspace) and the CLI.
    answer = requests.get(
        stack.url + "/admin/orgs/acme/developers?from=2026-01-01&to=2026-01-02&client=claude-code",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    ).json()
    assert answer["workspace"] == "claude-code" and answer["mean_daily"] == expected_mean
    assert answer["reference"]["mean_daily_micro"] == 6_000_000
    period = ["--org", "acme", "--from", "2026-01-01", "--to", "2026-01-02"]
    code = main(["developers", *period, "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["p90_daily"] == expected_p90 and out["monthly"] == expected_month
    code = main(["developers", *period])
    table = capsys.readouterr().out
    assert code == 0 and "p90 per developer-day" in table and "$12" in table

    # recommend --observed: the busiest minute (day 1: 5 requests, 9,700 tokens) per active
    # developer (3), beside the recommended range for a team of 3.
    code = main(["recommend", "--observed", *period, "--format", "json"])
    seen = json.loads(capsys.readouterr().out)
    assert code == 0 and (seen["active_users"], seen["peak_rpm"], seen["peak_tpm"]) == (3, 5, 9_700)
    assert seen["per_user"] == {"tpm": "3233", "rpm": "1.67"}
    assert seen["recommended_per_user"]["tpm"] == [200_000, 300_000]


def test_a_report_of_an_unknown_client_or_workspace_is_refused(stack, capsys) -> None:
    for query, says in (
        ("client=cursor", "no client workspace for 'cursor'"),
        ("workspace=nowhere", "unknown workspace 'nowhere'"),
    ):
        r = requests.get(
            f"{stack.url}/admin/orgs/acme/developers?{query}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert r.status_code == 400 and says in r.json()["error"]["message"]
    code = main(["developers", "--org", "acme", "--client", "cursor"])
    assert code == 2 and "no client workspace for 'cursor'" in capsys.readouterr().err


# Last in the module: Playwright's sync API keeps an event loop running once the browser
# has started, and the CLI's asyncio.run() cannot run after it in this process.
def console_usd(micro: int) -> str:
    """The console's money format: "$1,234.50", more decimals only when there are some."""
    whole, frac = divmod(micro, 1_000_000)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"${whole:,}.{digits}"


def test_the_console_reports_page_shows_the_cost_per_developer(stack, browser) -> None:
    keys = {u: stack.key(user=u) for u in ("alice", "bob")}
    for user, out in (("alice", 200), ("alice", 600), ("bob", 3_000)):
        ask(stack, keys[user], out, claude_code=True)
    r = stack.run(developer_cost(stack.store.history, "acme", "2026-01-01", "2026-01-01"))
    _, secret = stack.run(Credentials(stack.store).create("acme", "owner", 0, "owner"))
    page = sign_in(browser, stack, secret)
    go(page, "reports", "Reports")
    assert page.locator("#dev-mean").inner_text() == console_usd(r.mean_daily)
    assert page.locator("#dev-p90").inner_text() == console_usd(r.p90_daily)
    assert page.locator("#dev-month").inner_text() == console_usd(r.monthly)
    assert "about $6.00 per developer per day" in page.content()
    shoot(page, "reports-developers")
    page.context.close()
