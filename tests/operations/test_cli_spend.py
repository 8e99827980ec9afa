"""`tollway spend | caps | extra-usage | requests | statement` through the CLI's `main`,
against the store of a running stack whose traffic goes through the official SDKs: the
output (table, JSON, CSV), the exit codes, changes that the very next request obeys, and
refusals that change nothing."""

from __future__ import annotations

import csv
import io
import json

import openai
import pytest
from tollway.limits.clock import SystemClock
from tollway.limits.increases import LimitIncreases
from tollway.limits.spend import Spend
from tollway.proxy.cli import main as cli
from tollway.proxy.gateway import providers

from tests.support.spendkit import C, chat, priced

ORGS = """
organizations:
  acme:
    billing: {mode: postpaid}
    extra_usage: {enabled: true}
    spend_caps: {monthly: 1.00}
    seat_tiers:
      standard: {included: 0.02, monthly_cap: 0.01}
      premium: {included: 0.05, monthly_cap: unlimited}
    workspaces:
      eng: {}
    users:
      alice: {seat: standard, workspace: eng}
      bob: {seat: standard}
"""


class Cli:
    def __init__(self, stack, capsys) -> None:
        self.stack, self.capsys = stack, capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = cli.main([*argv, "--config", str(self.stack.config_path)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert code == 0, err
        return out

    def json(self, *argv: str):
        return json.loads(self.ok(*argv, "--format", "json"))


@pytest.fixture
def setup(stack_factory, monkeypatch, capsys):
    stack = stack_factory(ORGS)
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    priced(stack)
    return stack, Cli(stack, capsys)


def blocked(stack, user: str) -> str:
    """A key of `user` after 3 requests: 2 cents included, then the 1-cent cap reached."""
    key = stack.key(user=user)
    for _ in range(3):
        chat(stack, key)
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError):
        chat(stack, key)
    return key


def test_spend_by_user_workspace_and_key(setup):
    stack, run = setup
    blocked(stack, "alice")
    service = stack.key()
    chat(stack, service)
    stack.wait_settled()
    out = run.ok("spend", "--org", "acme", "--month", "2026-01")
    assert out.splitlines() == [
        "acme 2026-01 (UTC), resets 2026-02-01 00:00:00Z",
        "USER   SPEND  INCLUDED  EXTRA",
        "alice  0.03   0.02      0.01",
        "TOTAL  0.04   0.02      0.02",
    ]
    out = run.ok("spend", "--org", "acme", "--month", "2026-01", "--by", "workspace")
    assert out.splitlines()[2] == "eng        0.03   0.02      0.01"
    data = run.json("spend", "--org", "acme", "--month", "2026-01", "--by", "key")
    assert data["organization"] == {
        "spend": "0.04",
        "included": "0.02",
        "extra": "0.02",
        "spend_micro": 4 * C,
        "included_micro": 2 * C,
        "extra_micro": 2 * C,
    }
    assert sorted(v["spend_micro"] for v in data["keys"].values()) == [C, 3 * C]
    assert data["period_end"] == "2026-02-01 00:00:00Z"
    # Another month is empty; a bad month is refused.
    assert run.json("spend", "--org", "acme", "--month", "2025-12")["users"] == {}
    code, _, err = run("spend", "--org", "acme", "--month", "2026-1")
    assert (code, err) == (1, "tollway: a month is written YYYY-MM, not '2026-1'\n")
    code, _, err = run("spend", "--org", "nope")
    assert code == 2 and "unknown organization 'nope' (known: acme)" in err


def test_caps_set_clear_and_show_apply_to_the_next_request(setup):
    stack, run = setup
    key = blocked(stack, "alice")
    out = run.ok("caps", "set", "--org", "acme", "--user", "alice", "--amount", "0.02")
    assert out == "acme: monthly cap of user alice set to 0.02 (run-time override)\n"
    chat(stack, key)  # the very next request
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError, match="user 'alice'"):
        chat(stack, key)
    run.ok("caps", "set", "--org", "acme", "--tier", "standard", "--unlimited")
    with pytest.raises(openai.RateLimitError):  # alice's own override still applies
        chat(stack, key)
    assert run.ok("caps", "clear", "--org", "acme", "--user", "alice").endswith(
        "cleared: the config applies\n"
    )
    chat(stack, key)  # now the tier's unlimited run-time cap
    rows = {(r["level"], r["name"]): r for r in run.json("caps", "show", "--org", "acme")}
    assert rows[("tier", "standard")] == {
        "level": "tier",
        "name": "standard",
        "period": "month",
        "cap": {"usd": "unlimited", "micro": None},
        "source": "override",
    }
    assert rows[("organization", "-")]["cap"] == {"usd": "1.00", "micro": 1_000_000}
    assert rows[("user", "bob")]["source"] == "seat tier 'standard'"
    table = run.ok("caps", "show", "--org", "acme").splitlines()
    assert table[0].split() == ["LEVEL", "NAME", "PERIOD", "CAP", "SOURCE"]
    run.ok("caps", "set", "--org", "acme", "--org-wide", "--amount", "0")
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError, match="organization monthly"):
        chat(stack, key)
    run.ok("caps", "clear", "--org", "acme", "--org-wide")
    run.ok("caps", "clear", "--org", "acme", "--tier", "standard")
    out = run.ok("caps", "clear", "--org", "acme", "--workspace", "eng")
    assert out == "acme: monthly cap of workspace eng had no run-time override\n"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("--user", "alice", "--amount", "0.0000001"), 1, "more than 6 decimal places"),
        (("--user", "alice", "--amount", "-1"), 1, "must not be negative"),
        (("--user", "alice", "--amount", "1e3"), 1, "not an amount in USD"),
        (("--user", "zoe", "--amount", "1"), 2, "unknown user 'zoe' in 'acme'"),
        (("--tier", "gold", "--unlimited"), 2, "unknown tier 'gold'"),
        (("--workspace", "ops", "--unlimited"), 2, "unknown workspace 'ops'"),
    ],
)
def test_bad_cap_commands_are_refused_and_change_nothing(setup, argv, code, message):
    stack, run = setup
    before = stack.snapshot()
    got, _, err = run("caps", "set", "--org", "acme", *argv)
    assert (got, message in err) == (code, True), err
    assert stack.snapshot() == before


def test_extra_usage_enable_disable_clear(setup):
    stack, run = setup
    key = stack.key(user="bob")
    for _ in range(2):
        chat(stack, key)
    stack.wait_settled()
    assert run.ok("extra-usage", "disable", "--org", "acme") == (
        "acme: extra usage disabled for the organization\n"
    )
    with pytest.raises(openai.RateLimitError, match="extra usage is not enabled"):
        chat(stack, key)
    run.ok("extra-usage", "enable", "--org", "acme", "--user", "bob")
    with pytest.raises(openai.RateLimitError):  # disabled for everyone wins
        chat(stack, key)
    run.ok("extra-usage", "clear", "--org", "acme")
    chat(stack, key)
    code, _, err = run("extra-usage", "enable", "--org", "acme", "--user", "zoe")
    assert code == 2 and "unknown user 'zoe'" in err


def test_requests_list_approve_and_deny(setup):
    stack, run = setup
    # The CLI shows this month's spend by the system clock: the stack's clock joins it (a
    # month boundary passing during the test would be the only way to break this).
    stack.clock.set(SystemClock().now_ms())
    asked = providers.rfc3339(stack.clock.now_ms()).replace("T", " ")
    alice_key = blocked(stack, "alice")
    blocked(stack, "bob")
    assert run.ok("requests", "list", "--org", "acme") == (
        "acme: no pending limit-increase request\n"
    )
    spend = Spend(stack.store, stack.clock, lambda: stack.holder.current)
    stack.run(LimitIncreases(spend).file("acme", "alice", "demo tomorrow"))
    stack.clock.advance(seconds=60)
    stack.run(LimitIncreases(spend).file("acme", "bob"))
    lines = run.ok("requests", "list", "--org", "acme").splitlines()
    assert lines[0].split() == ["USER", "SEAT", "SPEND", "EXTRA", "CAP", "ASKED", "REASON"]
    assert lines[1].split() == [
        "alice",
        "standard",
        "0.03",
        "0.01",
        "0.01",
        *asked.split(),
        "demo",
        "tomorrow",
    ]
    assert lines[2].split()[0] == "bob"
    (first, second) = run.json("requests", "list", "--org", "acme")
    assert (first["request"]["user"], first["user"]["spend"], second["request"]["user"]) == (
        "alice",
        3 * C,
        "bob",
    )
    out = run.ok("requests", "approve", "--org", "acme", "--user", "alice", "--cap", "0.03")
    assert out == f"acme: request of alice approved (cap {3 * C})\n"
    chat(stack, alice_key)  # the very next request
    denied = run.json("requests", "deny", "--org", "acme", "--user", "bob", "--note", "no budget")
    assert (denied["status"], denied["note"]) == ("denied", "no budget")
    code, _, err = run("requests", "deny", "--org", "acme", "--user", "bob")
    assert code == 1 and "its latest request is denied" in err
    code, _, err = run("requests", "approve", "--org", "acme", "--user", "bob", "--tier", "gold")
    assert code == 2 and "unknown seat tier 'gold'" in err
    stack.run(LimitIncreases(spend).file("acme", "bob"))
    out = run.ok("requests", "approve", "--org", "acme", "--user", "bob", "--tier", "premium")
    assert out == "acme: request of bob approved (tier premium, cap unlimited)\n"


def test_statement_table_json_and_csv_equal_the_settled_requests(setup):
    stack, run = setup
    blocked(stack, "alice")
    bob = stack.key(user="bob")
    chat(stack, bob)
    chat(stack, stack.key())
    stack.wait_settled()
    data = run.json("statement", "--org", "acme", "--month", "2026-01")
    assert (data["spend"], data["extra"], data["amount_due"], data["requests"]) == (
        5 * C,
        2 * C,
        2 * C,
        5,
    )
    assert data["consistent"]
    table = run.ok("statement", "--org", "acme", "--month", "2026-01").splitlines()
    assert table[-1] == "amount due: 0.02 USD"
    text = run.ok("statement", "--org", "acme", "--month", "2026-01", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["user"], r["spend_usd"], r["extra_usd"]) for r in rows] == [
        ("alice", "0.03", "0.01"),
        ("bob", "0.01", "0.00"),
        ("(keys without a user)", "0.01", "0.01"),
        ("TOTAL", "0.05", "0.02"),
    ]
