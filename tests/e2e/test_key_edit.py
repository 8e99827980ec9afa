"""Editing a key after its creation (`PATCH /admin/keys/{id}`), through the official SDKs:
only the settings given change, null clears one, the checks and their messages are the
ones of creation, another replica applies the edit within the key cache age, a budget
moved to another period counts in the new window, and only the key's own organization
(owner or admin) or the operator may edit it."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import openai
import pytest
import requests
from tollway.limits.admins import Credentials
from tollway.limits.apikeys import MAX_AGE

HELLO = [{"role": "user", "content": "Say hello"}]
TOKEN = "admin-token-for-key-edits"
ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
    users:
      alice: {}
  other:
    limits: {rpm: 1000}
"""


@pytest.fixture
def admin(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    return stack_factory(ORGS)


def api(stack, method: str, path: str, body: Any = None, secret: str = TOKEN):
    headers = {"authorization": f"Bearer {secret}"}
    return requests.request(
        method, stack.url + "/admin" + path, json=body, headers=headers, timeout=10
    )


def create(stack, **body: Any) -> dict[str, Any]:
    r = api(stack, "POST", "/orgs/acme/keys", body)
    assert r.status_code == 201, r.text
    return r.json()


def chat(stack, secret: str, model: str = "gpt-4o-mini", url: str | None = None) -> None:
    client = (
        openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
        if url
        else stack.openai(secret)
    )
    client.chat.completions.create(model=model, messages=HELLO)


def message(stack, secret: str) -> None:
    stack.anthropic(secret).messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)


def cost_of_one(stack) -> int:
    secret = stack.key("other")
    chat(stack, secret)
    stack.wait_settled()
    return int(stack.redis.hget(stack.keys.month("other", "2026-01"), "spend:org"))


def test_only_the_settings_given_change_and_null_clears_one(admin):
    key = create(admin, name="ci", rpm=2, models=["gpt-4o*"], tags=["ml"], expires_in="30d")
    secret = key["key"]
    chat(admin, secret)
    chat(admin, secret)
    with pytest.raises(openai.RateLimitError):
        chat(admin, secret)  # rpm 2
    r = api(admin, "PATCH", f"/keys/{key['id']}", {"rpm": None, "tpm": "100000"})
    assert r.status_code == 200, r.text
    edited = r.json()
    assert edited["limits"] == {"rpm": None, "tpm": "100000", "input_tpm": None, "output_tpm": None}
    unchanged = ("name", "models", "tags", "expires_ms", "hint", "created_ms", "status")
    assert {k: edited[k] for k in unchanged} == {k: key[k] for k in unchanged}
    for _ in range(3):  # no rpm any more; applied at once through this proxy's own API
        chat(admin, secret)
    with pytest.raises(anthropic.PermissionDeniedError):
        message(admin, secret)
    r = api(admin, "PATCH", f"/keys/{key['id']}", {"models": None, "expires_in": None})
    assert r.json()["models"] == [] and r.json()["expires_ms"] is None
    message(admin, secret)  # every model now
    assert api(admin, "GET", f"/keys/{key['id']}").json() == r.json()
    r = api(admin, "PATCH", f"/keys/{key['id']}", {"name": "ci-2", "tags": ["ml", "prod"]})
    assert (r.json()["name"], r.json()["tags"]) == ("ci-2", ["ml", "prod"])
    assert r.json()["limits"]["tpm"] == "100000"


# Bodies refused at creation and at an edit alike, with the same message naming the field.
BAD = [
    ({"budget": "1000000000.000001"}, "budget"),
    ({"budget": "-1"}, "budget"),
    ({"budget": "1.0000001"}, "budget"),
    ({"session_budget": "0"}, "session_budget"),
    ({"session_budget": 1000000001}, "session_budget"),
    ({"rpm": "1.2345"}, "rpm"),
    ({"tpm": "-3"}, "tpm"),
    ({"input_tpm": "ten"}, "input_tpm"),
    ({"expires_in": "30x"}, "expires_in"),
    ({"models": []}, "models"),
    ({"tags": ["a b"]}, "tags"),
    ({"max_in_flight": 0}, "max_in_flight"),
    ({"budget_period": "year"}, "budget_period"),
    ({"name": "x" * 201}, "name"),
    ({"rpm": 5, "unknown": 1}, "unknown"),
]


def test_an_edit_is_checked_as_a_creation_and_a_refused_one_changes_nothing(admin):
    key = create(admin, name="svc", budget="5", budget_period="week")
    before = admin.snapshot("acme")
    for bad, field in BAD:
        made = api(admin, "POST", "/orgs/acme/keys", bad)
        edit = api(admin, "PATCH", f"/keys/{key['id']}", bad)
        assert made.status_code == edit.status_code == 400, (bad, made.text, edit.text)
        assert made.json() == edit.json(), bad  # the same error, word for word
        assert edit.json()["error"]["message"].startswith(field), (bad, edit.text)
    assert admin.snapshot("acme") == before
    assert (
        "at most 1000000000 USD"
        in api(admin, "PATCH", f"/keys/{key['id']}", {"budget": "1000000001"}).json()["error"][
            "message"
        ]
    )
    ok = api(admin, "PATCH", f"/keys/{key['id']}", {"budget": "1000000000", "session_budget": 1})
    assert ok.status_code == 200, ok.text
    assert (ok.json()["budget_micro"], ok.json()["session_budget_micro"]) == (10**15, 10**6)


def test_another_replica_applies_an_edit_within_the_key_cache_age(admin):
    key = create(admin, name="shared")
    replica = admin.second_proxy()
    chat(admin, key["key"], url=replica)  # the replica caches the key's record
    r = api(admin, "PATCH", f"/keys/{key['id']}", {"rpm": 1})
    assert r.status_code == 200
    time.sleep(MAX_AGE + 0.1)  # upper bound for the replica to re-read the record
    chat(admin, key["key"], url=replica)
    with pytest.raises(openai.RateLimitError) as e:
        chat(admin, key["key"], url=replica)
    assert f"rpm of key '{key['id']}'" in e.value.message


def test_a_budget_moved_to_another_period_counts_in_the_new_window(admin):
    c = cost_of_one(admin)
    budget = f"{(c + c // 2) / 1e6:.6f}"
    key = create(admin, name="bot", budget=budget)  # monthly
    chat(admin, key["key"])
    chat(admin, key["key"])  # one past the budget
    admin.wait_settled()
    with pytest.raises(openai.RateLimitError) as e:
        chat(admin, key["key"])
    assert "monthly budget" in e.value.message
    admin.clock.advance(seconds=86_400)  # January 2nd: the month's budget is still spent
    with pytest.raises(openai.RateLimitError):
        chat(admin, key["key"])
    r = api(admin, "PATCH", f"/keys/{key['id']}", {"budget_period": "day"})
    assert r.json()["budget_period"] == "day" and r.json()["budget_micro"] == c + c // 2
    chat(admin, key["key"])  # today's spend only
    chat(admin, key["key"])
    admin.wait_settled()
    with pytest.raises(openai.RateLimitError) as e:
        chat(admin, key["key"])
    assert "daily budget" in e.value.message and "2026-01-03T00:00:00" in e.value.message
    r = api(admin, "PATCH", f"/keys/{key['id']}", {"budget": None})
    assert r.json()["budget_micro"] is None
    chat(admin, key["key"])  # no budget any more


def test_only_the_key_s_organization_or_the_operator_may_edit_it(admin):
    key = create(admin, name="guarded", rpm=2)
    creds = Credentials(admin.store)
    secrets = {
        (org, role): admin.run(creds.create(org, role, 0, role))[1]
        for org in ("acme", "other")
        for role in ("owner", "admin", "billing")
    }
    member = admin.key("acme", user="alice")
    path = f"/keys/{key['id']}"
    before = admin.snapshot("acme")
    for who in (*[secrets["other", role] for role in ("owner", "admin", "billing")], member):
        r = api(admin, "PATCH", path, {"rpm": None}, secret=who)
        assert r.status_code == 403, r.text
    r = api(admin, "PATCH", path, {"rpm": None}, secret=secrets["acme", "billing"])
    assert r.status_code == 403 and "needs admin or owner" in r.json()["error"]["message"]
    assert api(admin, "PATCH", path, {"rpm": None}, secret="tw-nobody").status_code == 401
    assert admin.snapshot("acme") == before
    assert api(admin, "PATCH", path, {"rpm": 3}, secret=secrets["acme", "admin"]).ok
    assert api(admin, "PATCH", path, {"rpm": 4}, secret=secrets["acme", "owner"]).ok
    assert api(admin, "GET", path).json()["limits"]["rpm"] == "4"
    assert api(admin, "PATCH", "/keys/key_nope", {"rpm": 1}).status_code == 404
    assert api(admin, "POST", f"{path}/revoke").ok
    r = api(admin, "PATCH", path, {"rpm": 1})
    assert r.status_code == 409 and "revoked" in r.json()["error"]["message"]
    assert api(admin, "GET", path).json()["limits"]["rpm"] == "4"
