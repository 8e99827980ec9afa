"""`tollway users add | set | remove | list` against the store a running stack uses: a user
added from the command line gets a key, is metered and capped through the official SDK
with no YAML edit; exit codes of refusals."""

from __future__ import annotations

import json
import time

import openai
import pytest
from tollway.limits.users import MAX_AGE
from tollway.proxy.cli.main import main

from tests.support.stack import ENV

ORGS = """
organizations:
  acme:
    extra_usage: {enabled: true}
    seat_tiers:
      standard: {included: 0.00, monthly_cap: 100.00}
    workspaces: {eng: {}}
    users:
      alice: {seat: standard}
"""
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def stack(stack_factory, monkeypatch):
    stack = stack_factory(ORGS)
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


def test_add_key_set_list_remove(stack, capsys):
    code, out, err = run(capsys, "users", "add", "--org", "acme", "bob", "--seat", "standard")
    assert code == 0, err
    assert out.split("\n")[1].split()[:3] == ["bob", "standard", "-"]
    code, out, err = run(
        capsys, "keys", "create", "--org", "acme", "--user", "bob", "--format", "json"
    )
    assert code == 0, err
    secret = json.loads(out)["key"]
    code, out, err = run(
        capsys,
        *("users", "set", "--org", "acme", "bob", "--rpm", "1", "--monthly-cap", "25"),
        *("--workspace", "eng", "--format", "json"),
    )
    assert code == 0, err
    bob = json.loads(out)
    assert bob["limits"]["rpm"] == "1" and bob["workspace"] == "eng"
    assert bob["monthly_cap"] == 25_000_000 and bob["source"] == "runtime"
    time.sleep(MAX_AGE + 0.1)  # the proxy re-reads run-time users within MAX_AGE
    client = stack.openai(secret)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert "user 'bob'" in e.value.message
    stack.wait_settled()
    code, out, _ = run(capsys, "spend", "--org", "acme", "--month", "2026-01", "--format", "json")
    assert code == 0 and json.loads(out)["users"]["bob"]["spend_micro"] > 0

    code, out, _ = run(capsys, "users", "list", "--org", "acme", "--format", "json")
    users = {u["user"]: u for u in json.loads(out)}
    assert users["alice"]["source"] == "config" and users["bob"]["source"] == "runtime"
    code, out, _ = run(capsys, "users", "list", "--org", "acme")
    assert "25.00 (user 'bob')" in out

    code, out, err = run(capsys, "users", "remove", "--org", "acme", "bob")
    assert code == 0 and "revoked 1 key" in out, err
    code, out, _ = run(capsys, "users", "list", "--org", "acme", "--format", "json")
    assert [u["user"] for u in json.loads(out)] == ["alice"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["users", "add", "--org", "acme", "alice"], 1, "already exists"),
        (["users", "add", "--org", "ghost", "x"], 2, "unknown organization"),
        (["users", "add", "--org", "acme", "x", "--seat", "gold"], 2, "unknown seat tier"),
        (["users", "add", "--org", "acme", "a b"], 2, "invalid user name"),
        (["users", "set", "--org", "acme", "nobody", "--rpm", "2"], 1, "unknown user"),
        (["users", "set", "--org", "acme", "alice", "--tpm", "1.5"], 2, "tpm"),
        (["users", "set", "--org", "acme", "alice", "--monthly-cap", "x"], 2, "--monthly-cap"),
        (["users", "remove", "--org", "acme", "nobody"], 1, "unknown user"),
    ],
)
def test_refusals_exit_codes(stack, capsys, argv, code, message):
    got, _, err = run(capsys, *argv)
    assert got == code and message in err, err
