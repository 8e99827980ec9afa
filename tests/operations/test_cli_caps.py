"""`tollway caps set | clear | show` with ``--period`` and ``--model``, through the CLI's
`main`, against the store of a running stack whose traffic goes through the official
SDKs: the very next request obeys a change, clearing falls back to the YAML, `show`
lists every period and model cap with its source, and refusals change nothing."""

from __future__ import annotations

import openai
import pytest

from tests.operations.test_cli_spend import Cli
from tests.support.spendkit import C, chat, message, priced

ORGS = """
organizations:
  acme:
    billing: {mode: postpaid}
    extra_usage: {enabled: true}
    seat_tiers:
      standard: {daily_cap: 0.05}
    users:
      alice: {seat: standard}
    model_caps:
      "gpt-4o*": {weekly: 1.00}
"""


@pytest.fixture
def setup(stack_factory, monkeypatch, capsys):
    stack = stack_factory(ORGS)
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    priced(stack)  # a gpt-4o request costs exactly C
    return stack, Cli(stack, capsys)


def rows(run, *argv: str) -> dict[tuple[str, str, str], dict]:
    got = run.json("caps", "show", "--org", "acme", *argv)
    return {(r["level"], r["name"], r["period"]): r for r in got}


def test_daily_and_model_caps_set_show_and_clear(setup):
    stack, run = setup
    alice = stack.key(user="alice")
    out = run.ok(
        "caps", "set", "--org", "acme", "--user", "alice", "--period", "day", "--amount", "0.01"
    )
    assert out == "acme: daily cap of user alice set to 0.01 (run-time override)\n"
    chat(stack, alice)
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError, match=r"user 'alice' daily spend cap of \$0.01"):
        chat(stack, alice)
    shown = rows(run)
    assert shown[("user", "alice", "day")]["cap"] == {"usd": "0.01", "micro": C}
    assert shown[("user", "alice", "day")]["source"] == "user 'alice' daily"
    assert shown[("tier", "standard", "day")]["source"] == "config"
    assert shown[("model", "gpt-4o*", "week")]["cap"]["micro"] == 100 * C
    assert ("organization", "-", "day") not in shown  # no daily cap there: not listed
    # Clearing falls back to the YAML: the tier's 5 cents a day.
    out = run.ok("caps", "clear", "--org", "acme", "--user", "alice", "--period", "day")
    assert out == "acme: daily cap of user alice cleared: the config applies\n"
    for _ in range(4):
        chat(stack, alice)
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError, match="seat tier 'standard' daily"):
        chat(stack, alice)
    # A model cap: the pattern's models stop, the others go on.
    service = stack.key()
    week = ("--period", "week")
    run.ok("caps", "set", "--org", "acme", "--model", "gpt-4o*", *week, "--amount", "0")
    with pytest.raises(openai.RateLimitError, match=r"model 'gpt-4o\*' weekly spend cap of \$0.00"):
        chat(stack, service)
    message(stack, service)
    table = run.ok("caps", "show", "--org", "acme", "--model", "gpt-4o*").splitlines()
    assert table[0].split() == ["LEVEL", "NAME", "PERIOD", "CAP", "SOURCE"]
    assert table[1:] == [
        "model  gpt-4o*  month   unlimited  config",
        "model  gpt-4o*  week    0.00       override",
    ]
    run.ok("caps", "clear", "--org", "acme", "--model", "gpt-4o*", *week)
    chat(stack, service)  # the YAML's dollar a week


def test_a_model_the_yaml_does_not_cap(setup):
    stack, run = setup
    service = stack.key()
    run.ok("caps", "set", "--org", "acme", "--model", "claude-*", "--unlimited")
    assert stack.redis.smembers(stack.keys.model_caps("acme")) == {"claude-*"}
    assert rows(run, "--model", "claude-*")[("model", "claude-*", "month")]["source"] == "override"
    out = run.ok("caps", "clear", "--org", "acme", "--model", "claude-*")
    assert out == "acme: monthly cap of model claude-* cleared: the config applies\n"
    assert stack.redis.smembers(stack.keys.model_caps("acme")) == set()
    message(stack, service)
    code, _, err = run("caps", "show", "--org", "acme", "--model", "claude-*")
    assert (code, "unknown model 'claude-*'" in err) == (2, True)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("--org-wide", "--period", "year", "--amount", "1"), 2, "invalid choice: 'year'"),
        (("--model", "gpt 4o", "--amount", "1"), 1, "whitespace"),
        (("--model", "a|b", "--amount", "1"), 1, "must not contain"),
        (("--model", "gpt-4o", "--user", "alice", "--amount", "1"), 2, "not allowed with"),
        (("--tier", "gold", "--period", "day", "--amount", "1"), 2, "unknown tier 'gold'"),
        (("--user", "alice", "--period", "week", "--amount", "-1"), 1, "must not be negative"),
    ],
)
def test_bad_caps_are_refused_and_change_nothing(setup, argv, code, message):
    stack, run = setup
    before = stack.snapshot()
    if (code == 2 and "invalid choice" in message) or "not allowed" in message:
        with pytest.raises(SystemExit) as e:  # argparse refuses before anything runs
            run("caps", "set", "--org", "acme", *argv)
        assert e.value.code == 2
        assert message in run.capsys.readouterr().err
    else:
        got, _, err = run("caps", "set", "--org", "acme", *argv)
        assert (got, message in err) == (code, True), err
    assert stack.snapshot() == before


def test_users_set_daily_cap_and_default(setup):
    stack, run = setup
    alice = stack.key(user="alice")
    out = run.json("users", "set", "--org", "acme", "alice", "--daily-cap", "0.01")
    assert (out["daily_cap"], out["weekly_cap"]) == (C, None)
    chat(stack, alice)
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError, match="user 'alice' daily spend cap"):
        chat(stack, alice)
    out = run.json("users", "set", "--org", "acme", "alice", "--daily-cap", "default")
    assert out["daily_cap"] == 5 * C  # the tier's, from the YAML
    chat(stack, alice)
    code, _, err = run("users", "set", "--org", "acme", "alice", "--weekly-cap", "1e3")
    assert code == 2 and "--weekly-cap" in err  # as for --monthly-cap
