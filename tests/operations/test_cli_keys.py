"""`tollway keys create | list | show | rotate | revoke` with names, expiry, model
allow-lists and tags, against the store a running stack uses; the keys they make are used
through the official SDKs; `usage --by key` shows the keys' names."""

from __future__ import annotations

import json
import time

import openai
import pytest
from tollway.limits.apikeys import MAX_AGE
from tollway.limits.clock import SystemClock
from tollway.proxy.cli.keys import LIST_COLUMNS
from tollway.proxy.cli.main import main

from tests.support.stack import ENV

HELLO = [{"role": "user", "content": "Say hello"}]
DAY = ["--from", "2026-01-01", "--to", "2026-01-01"]  # the stack's clock starts that day


@pytest.fixture
def stack(stack_factory, monkeypatch):
    stack = stack_factory()
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    monkeypatch.setenv("TOLLWAY_CONFIG", str(stack.config_path))
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return stack


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def chat(stack, secret: str, model: str = "gpt-4o-mini") -> None:
    stack.openai(secret).chat.completions.create(model=model, messages=HELLO)


def test_create_with_settings_list_show_and_use(stack, capsys):
    code, out, err = run(
        capsys,
        *("keys", "create", "--org", "acme", "--name", "ci-bot", "--expires-in", "30d"),
        *("--models", "gpt-4o*, claude-*", "--tags", "team-ml,prod", "--format", "json"),
        *("--rpm", "2.5", "--tpm", "100000"),
    )
    assert code == 0, err
    key = json.loads(out)
    assert key["name"] == "ci-bot" and key["models"] == ["gpt-4o*", "claude-*"]
    assert key["tags"] == ["team-ml", "prod"] and key["status"] == "active"
    assert key["expires_ms"] - key["created_ms"] == 30 * 86_400_000
    assert key["limits"] == {"rpm": "2.5", "tpm": "100000", "input_tpm": None, "output_tpm": None}
    chat(stack, key["key"])
    with pytest.raises(openai.PermissionDeniedError):
        stack.openai(key["key"]).embeddings.create(model="text-embedding-3-small", input="x")

    code, out, _ = run(capsys, "keys", "list", "--org", "acme")
    assert code == 0
    header, row = out.splitlines()
    assert tuple(header.split()) == tuple(c.upper() for c in LIST_COLUMNS)
    assert row.split()[:3] == [key["id"], "ci-bot", "active"]
    assert "gpt-4o*,claude-*" in row and "team-ml,prod" in row
    assert key["key"] not in out

    code, out, _ = run(capsys, "keys", "show", key["id"], "--format", "json")
    assert code == 0 and json.loads(out)["name"] == "ci-bot"


def test_rotate_prints_the_new_secret_once_and_the_old_one_stops(stack, capsys):
    stack.clock.set(SystemClock().now_ms())  # the CLI stamps the rotation with real time
    code, out, _ = run(
        capsys, "keys", "create", "--org", "acme", "--name", "svc", "--format", "json"
    )
    created = json.loads(out)
    chat(stack, created["key"])
    code, out, err = run(capsys, "keys", "rotate", created["id"], "--overlap", "0s")
    assert code == 0, err
    lines = dict(line.split(":", 1) for line in out.splitlines())
    new = lines["key"].strip()
    assert new.startswith("tw-") and new != created["key"]
    assert "not shown again" in err and "refused now" in err
    time.sleep(MAX_AGE + 0.1)  # the proxy re-reads a key record within MAX_AGE
    stack.clock.set(SystemClock().now_ms())
    with pytest.raises(openai.AuthenticationError):
        chat(stack, created["key"])
    chat(stack, new)

    code, out, err = run(capsys, "keys", "rotate", created["id"], "--format", "json")
    assert code == 0 and json.loads(out)["old_secret_until_ms"] is not None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["keys", "create", "--org", "acme", "--expires-in", "30"], "--expires-in"),
        (["keys", "create", "--org", "acme", "--expires-in", "0d"], "--expires-in"),
        (["keys", "create", "--org", "acme", "--models", " , "], "--models"),
        (["keys", "create", "--org", "acme", "--tags", "a b"], "--tags"),
        (["keys", "create", "--org", "acme", "--rpm", "1.2345"], "rpm"),
        (["keys", "create", "--org", "acme", "--tpm", "-3"], "tpm"),
        (["keys", "create", "--org", "ghost"], "unknown organization"),
        (["keys", "rotate", "key_nope", "--overlap", "1y"], "--overlap"),
    ],
)
def test_bad_options_are_usage_errors(stack, capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err, err
    assert not list(stack.redis.scan_iter(match=f"{stack.prefix}:*key*"))


def test_rotate_or_show_an_unknown_or_revoked_key_is_refused(stack, capsys):
    assert run(capsys, "keys", "rotate", "key_nope")[0] == 1
    assert run(capsys, "keys", "show", "key_nope")[0] == 1
    _, out, _ = run(capsys, "keys", "create", "--org", "acme", "--format", "json")
    key_id = json.loads(out)["id"]
    assert run(capsys, "keys", "revoke", key_id)[0] == 0
    code, _, err = run(capsys, "keys", "rotate", key_id)
    assert code == 1 and "revoked" in err


def test_usage_by_key_shows_the_names(stack, capsys):
    _, out, _ = run(
        capsys, "keys", "create", "--org", "acme", "--name", "laptop", "--format", "json"
    )
    named = json.loads(out)
    unnamed = stack.key("acme", name="")
    chat(stack, named["key"])
    chat(stack, unnamed)
    stack.wait_settled()
    code, out, _ = run(capsys, "usage", "--org", "acme", "--by", "key", *DAY, "--format", "json")
    assert code == 0
    rows = {r["key"]: r["name"] for r in json.loads(out)["rows"]}
    assert rows[named["id"]] == "laptop" and list(rows.values()).count(None) == 1
    code, out, _ = run(capsys, "usage", "--org", "acme", "--by", "key", *DAY)
    assert f"{named['id']} (laptop)" in out
    code, out, _ = run(capsys, "usage", "--org", "acme", "--by", "key", *DAY, "--format", "csv")
    assert out.splitlines()[0].startswith("key,name,requests")
    assert f"{named['id']},laptop," in out


def _create(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, "keys", "create", "--org", "acme", *argv, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_set_changes_only_the_options_given_and_a_word_clears_one(stack, capsys):
    key = _create(capsys, "--name", "ci", "--rpm", "2", "--models", "gpt-4o*", "--tags", "ml")
    chat(stack, key["key"])
    chat(stack, key["key"])
    with pytest.raises(openai.RateLimitError):
        chat(stack, key["key"])
    code, out, err = run(
        capsys,
        *("keys", "set", key["id"], "--rpm", "none", "--tpm", "50000", "--budget", "2.5"),
        *("--budget-period", "week", "--max-in-flight", "3", "--format", "json"),
    )
    assert code == 0, err
    edited = json.loads(out)
    assert edited["limits"] == {"rpm": None, "tpm": "50000", "input_tpm": None, "output_tpm": None}
    assert (edited["budget_micro"], edited["budget_period"]) == (2_500_000, "week")
    assert edited["max_in_flight"] == 3
    assert (edited["name"], edited["models"], edited["tags"]) == ("ci", ["gpt-4o*"], ["ml"])
    time.sleep(MAX_AGE + 0.1)  # the proxy re-reads a key record within MAX_AGE
    for _ in range(3):
        chat(stack, key["key"])  # rpm cleared
    code, out, _ = run(capsys, "keys", "set", key["id"], "--models", "all", "--tags", "")
    assert code == 0
    assert "budget=2.50/week" in out and "max_in_flight=3" in out and "tpm=50000" in out
    shown = json.loads(run(capsys, "keys", "show", key["id"], "--format", "json")[1])
    assert shown["models"] == [] and shown["tags"] == []
    time.sleep(MAX_AGE + 0.1)
    stack.anthropic(key["key"]).messages.create(
        model="claude-haiku-4-5", max_tokens=20, messages=HELLO
    )
    code, out, _ = run(
        capsys,
        "keys",
        "set",
        key["id"],
        "--budget",
        "none",
        "--max-in-flight",
        "none",
        "--expires-in",
        "1d",
        "--format",
        "json",
    )
    edited = json.loads(out)
    assert edited["budget_micro"] is None and edited["max_in_flight"] is None
    assert edited["expires_ms"] is not None
    code, out, _ = run(
        capsys, "keys", "set", key["id"], "--expires-in", "never", "--format", "json"
    )
    assert json.loads(out)["expires_ms"] is None


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--budget", "1000000000.000001", "--budget: at most 1000000000 USD"),
        ("--budget", "1.0000001", "--budget: more than 6 decimal places"),
        ("--session-budget", "0", "--session-budget: must be more than 0 USD"),
        ("--session-budget", "2000000000", "--session-budget: at most 1000000000 USD"),
        ("--session-budget", "-1", "--session-budget:"),
        ("--max-in-flight", "0", "--max-in-flight: expected a whole number >= 1"),
        ("--max-in-flight", "1.5", "--max-in-flight: expected a whole number >= 1"),
        ("--rpm", "1.2345", "--rpm: expected a number with at most 3 decimals"),
        ("--tpm", "-3", "--tpm: expected a whole number >= 0"),
        ("--expires-in", "30x", "--expires-in: not a duration"),
        ("--models", " , ", "--models: give at least one pattern"),
        ("--tags", "a b", "--tags: 'a b' is not a valid entry"),
        ("--name", "x" * 201, "--name: at most 200 characters"),
    ],
)
def test_set_and_create_refuse_the_same_values_with_the_same_message(
    stack, capsys, option, value, message
):
    key = _create(capsys, "--name", "svc")
    before = stack.snapshot("acme")
    code, _, err = run(capsys, "keys", "set", key["id"], option, value)
    assert code == 2 and message in err, err
    assert stack.snapshot("acme") == before
    code, _, created_err = run(capsys, "keys", "create", "--org", "acme", option, value)
    assert code == 2 and created_err == err
    assert stack.snapshot("acme") == before


def test_set_an_unknown_or_revoked_key_or_nothing_is_refused(stack, capsys):
    code, _, err = run(capsys, "keys", "set", "key_nope", "--rpm", "3")
    assert code == 1 and "no key 'key_nope'" in err
    key = _create(capsys)
    code, _, err = run(capsys, "keys", "set", key["id"])
    assert code == 2 and "give at least one setting" in err
    assert run(capsys, "keys", "revoke", key["id"])[0] == 0
    code, _, err = run(capsys, "keys", "set", key["id"], "--rpm", "3")
    assert code == 1 and "revoked" in err
