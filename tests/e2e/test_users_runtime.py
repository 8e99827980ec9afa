"""Users and seats at run time, through the official SDKs: a user added with no YAML edit
is metered (its spend and seat show), rate-limited and capped like a YAML user; run-time
settings override a YAML user's and `default` falls back to the YAML; a removed user's
keys stop working. Changes made by another process reach the proxy within a second."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest
import requests
from tollway.limits.users import MAX_AGE, RuntimeUsers

TOKEN = "admin-token-for-user-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}
HELLO = [{"role": "user", "content": "Say hello"}]
ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
    extra_usage: {enabled: true}
    seat_tiers:
      standard: {included: 0.00, monthly_cap: 100.00}
      premium: {included: 50.00}
    workspaces:
      eng: {}
    users:
      alice: {seat: standard, limits: {rpm: 100}}
"""


@pytest.fixture
def admin(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    return stack_factory(ORGS)


def api(stack, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, stack.url + "/admin" + path, headers=AUTH, timeout=10, **kw)


def chat(stack, secret: str) -> None:
    stack.openai(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)


def test_a_user_added_at_run_time_is_metered_and_capped(admin):
    r = api(admin, "POST", "/orgs/acme/users", json={"user": "dave", "seat": "standard"})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "runtime" and r.json()["seat"] == "standard"
    assert r.json()["monthly_cap"] == 100_000_000  # the tier's cap
    r = api(admin, "POST", "/orgs/acme/keys", json={"user": "dave", "name": "dave-laptop"})
    assert r.status_code == 201, r.text
    secret = r.json()["key"]
    chat(admin, secret)
    admin.wait_settled()
    status = api(admin, "GET", "/orgs/acme/users/dave").json()
    assert status["seat"] == "standard" and status["spend"] > 0
    assert status["extra"] == status["spend"]  # the tier includes nothing
    # Capped: a cap below what dave spent stops the next request, naming dave's cap.
    r = api(admin, "PATCH", "/orgs/acme/users/dave", json={"monthly_cap": "0.000001"})
    assert r.status_code == 200 and r.json()["monthly_cap"] == 1, r.text
    with pytest.raises(openai.RateLimitError) as e:
        chat(admin, secret)
    assert "user 'dave'" in e.value.message
    with pytest.raises(anthropic.BadRequestError) as a:
        admin.anthropic(secret).messages.create(
            model="claude-haiku-4-5", max_tokens=20, messages=HELLO
        )
    assert "user 'dave'" in a.value.message
    # `default` drops the run-time cap: the tier's applies again.
    r = api(admin, "PATCH", "/orgs/acme/users/dave", json={"monthly_cap": "default"})
    assert r.json()["monthly_cap"] == 100_000_000
    chat(admin, secret)
    # Rate-limited: rpm 2 admits two requests a minute, the third is refused.
    api(admin, "PATCH", "/orgs/acme/users/dave", json={"rpm": 2})
    admin.clock.advance(seconds=60)
    chat(admin, secret)
    chat(admin, secret)
    with pytest.raises(openai.RateLimitError) as e:
        chat(admin, secret)
    assert "rpm of user 'dave'" in e.value.message
    admin.wait_settled()
    usage = api(admin, "GET", "/orgs/acme/usage", params={"by": "user"}).json()
    assert {row["user"] for row in usage["rows"]} >= {"dave"}
    listed = {u["user"]: u for u in api(admin, "GET", "/orgs/acme/users").json()["users"]}
    assert listed["dave"]["limits"]["rpm"] == "2" and listed["alice"]["source"] == "config"


def test_run_time_settings_override_the_yaml_and_default_falls_back(admin):
    secret = admin.key("acme", user="alice")
    r = api(admin, "PATCH", "/orgs/acme/users/alice", json={"rpm": 1, "seat": "premium"})
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "config+runtime" and r.json()["seat"] == "premium"
    assert r.json()["monthly_cap"] is None  # premium has no cap
    chat(admin, secret)
    with pytest.raises(openai.RateLimitError):
        chat(admin, secret)
    r = api(admin, "PATCH", "/orgs/acme/users/alice", json={"rpm": "default", "seat": "default"})
    assert r.json()["limits"]["rpm"] == "100" and r.json()["seat"] == "standard"
    admin.clock.advance(seconds=1)  # the bucket refills at the YAML's 100 a minute again
    chat(admin, secret)
    # A YAML user cannot be removed at run time: only its run-time settings go.
    api(admin, "PATCH", "/orgs/acme/users/alice", json={"rpm": 1})
    r = api(admin, "DELETE", "/orgs/acme/users/alice")
    assert r.json()["removed"] is False
    assert api(admin, "GET", "/orgs/acme/users").json()["users"][0]["limits"]["rpm"] == "100"
    for bad, status in (
        ({"user": "alice"}, 409),
        ({"user": "x y"}, 400),
        ({"user": "zed", "seat": "gold"}, 400),
        ({"user": "zed", "workspace": "nope"}, 400),
    ):
        r = api(admin, "POST", "/orgs/acme/users", json=bad)
        assert r.status_code == status, (bad, r.text)
    assert api(admin, "PATCH", "/orgs/acme/users/ghost", json={"rpm": 1}).status_code == 404
    r = api(admin, "PATCH", "/orgs/acme/users/alice", json={"rpm": "-1"})
    assert r.status_code == 400 and "rpm" in r.text


def test_a_removed_user_s_keys_stop_and_other_replicas_learn_within_a_second(admin):
    # Added from another process (as `tollway users add` does).
    users = RuntimeUsers(admin.store)
    org_cfg = admin.holder.current.organizations["acme"]
    admin.run(users.add(org_cfg, "acme", "erin", "standard", "eng"))
    admin.run(users.set(org_cfg, "acme", "erin", limits={"rpm": "1"}))
    secret = admin.key("acme", user="erin")
    time.sleep(MAX_AGE + 0.1)  # upper bound for the proxy to re-read run-time users
    chat(admin, secret)
    with pytest.raises(openai.RateLimitError) as e:
        chat(admin, secret)
    assert "user 'erin'" in e.value.message
    admin.wait_settled()
    spend = admin.redis.hgetall(admin.keys.month("acme", "2026-01"))
    assert int(spend["spend:user=erin"]) > 0 and int(spend["spend:ws=eng"]) > 0
    r = api(admin, "DELETE", "/orgs/acme/users/erin")
    assert r.json()["removed"] is True and len(r.json()["revoked_keys"]) == 1
    admin.clock.advance(seconds=60)
    with pytest.raises(openai.AuthenticationError):
        chat(admin, secret)
