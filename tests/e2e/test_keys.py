"""Keys as operators manage them, through the official SDKs: an expired key is a 401, a
model outside the key's allow-list is a 403 (`PermissionDeniedError`) that changes
nothing, and a rotated key's old secret works during the overlap and is a 401 after it,
on every replica."""

from __future__ import annotations

import time
from decimal import Decimal

import anthropic
import openai
import pytest
import requests
from tollway.limits.apikeys import MAX_AGE, ApiKeys, KeySettings
from tollway.limits.plans import KeyLimits

HELLO = [{"role": "user", "content": "Say hello"}]
DAY_MS = 86_400_000
TOKEN = "admin-token-for-key-tests"


def chat(stack, secret: str, model: str = "gpt-4o-mini") -> str:
    """The answer's text (the fake upstream's usage is about a dozen tokens each way)."""
    r = stack.openai(secret).chat.completions.create(model=model, messages=HELLO)
    return r.choices[0].message.content


def message(stack, secret: str, model: str = "claude-haiku-4-5") -> str:
    r = stack.anthropic(secret).messages.create(model=model, max_tokens=20, messages=HELLO)
    return r.content[0].text


def test_an_expired_key_is_refused_401_in_both_formats(stack):
    settings = KeySettings(name="trial", expires_ms=stack.clock.now_ms() + 30 * DAY_MS)
    _, secret = stack.key_record(settings=settings)
    assert chat(stack, secret) and message(stack, secret)
    stack.wait_settled()
    stack.clock.advance(ms=30 * DAY_MS - 1)
    assert chat(stack, secret)  # the last millisecond of its life
    stack.wait_settled()
    stack.clock.advance(ms=1)
    with pytest.raises(openai.AuthenticationError) as e:
        chat(stack, secret)
    assert e.value.status_code == 401 and "expired" in e.value.message
    assert e.value.code == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as a:
        message(stack, secret)
    assert a.value.status_code == 401 and "expired" in a.value.message


def test_a_model_outside_the_allow_list_is_403_and_changes_nothing(stack):
    _, secret = stack.key_record(settings=KeySettings(models=("gpt-4o*", "claude-haiku-*")))
    assert chat(stack, secret, "gpt-4o-mini") and chat(stack, secret, "gpt-4o")
    assert message(stack, secret, "claude-haiku-4-5")
    stack.wait_settled()
    before = stack.snapshot()
    upstream_calls = len(stack.fake.requests)
    with pytest.raises(openai.PermissionDeniedError) as e:
        stack.openai(secret).embeddings.create(model="text-embedding-3-small", input="hi")
    assert e.value.status_code == 403 and "text-embedding-3-small" in e.value.message
    with pytest.raises(anthropic.PermissionDeniedError) as a:
        message(stack, secret, "claude-sonnet-4-6")
    assert a.value.status_code == 403
    assert a.value.body["error"]["type"] == "permission_error"
    assert stack.snapshot() == before
    assert len(stack.fake.requests) == upstream_calls  # never forwarded


def test_a_rotated_secret_works_during_the_overlap_and_is_401_after(stack):
    record, old = stack.key_record(name="ci")
    assert chat(stack, old)  # the proxy now has the old secret cached
    stack.wait_settled()
    # Rotated from another process (as `tollway keys rotate` does): the proxy learns of it
    # within MAX_AGE, real time.
    other = ApiKeys(stack.store, stack.clock)
    rotated, new = stack.run(other.rotate(record.key_id, stack.clock.now_ms(), 3_600_000))
    assert new != old and rotated.hint == new[:7] + "…"
    assert rotated.to_dict(stack.clock.now_ms())["old_secret_until_ms"] == (
        stack.clock.now_ms() + 3_600_000
    )
    time.sleep(MAX_AGE + 0.1)  # upper bound for the proxy to re-read the record
    replica = stack.second_proxy()
    assert chat(stack, old) and chat(stack, new) and message(stack, new)
    stack.wait_settled()
    stack.clock.advance(seconds=3599)
    assert chat(stack, old)
    stack.wait_settled()
    stack.clock.advance(seconds=1)
    with pytest.raises(openai.AuthenticationError) as e:
        chat(stack, old)
    assert "rotated" in e.value.message
    with pytest.raises(anthropic.AuthenticationError):
        message(stack, old)
    replica_client = openai.OpenAI(base_url=replica + "/v1", api_key=old, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        replica_client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert chat(stack, new)
    stack.wait_settled()
    # The spend stays on one key: rotation keeps the key's identity.
    spend = stack.redis.hgetall(stack.keys.month("acme", "2026-01"))
    assert int(spend[f"spend:key={record.key_id}"]) > 0


@pytest.fixture
def admin(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    return stack_factory()


def test_admin_api_creates_rotates_and_lists_keys(admin):
    auth = {"authorization": f"Bearer {TOKEN}"}
    url = admin.url + "/admin"
    body = {"name": "laptop", "expires_in": "30d", "models": ["gpt-4o*"], "tags": ["eng"]}
    r = requests.post(f"{url}/orgs/acme/keys", json=body, headers=auth, timeout=10)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["models"] == ["gpt-4o*"] and created["tags"] == ["eng"]
    assert created["expires_ms"] == admin.clock.now_ms() + 30 * DAY_MS
    assert created["status"] == "active"
    old = created["key"]
    assert chat(admin, old)
    r = requests.post(
        f"{url}/keys/{created['id']}/rotate", json={"overlap": "0s"}, headers=auth, timeout=10
    )
    assert r.status_code == 200, r.text
    new = r.json()["key"]
    # Rotated through this proxy's own admin API: no wait, the old secret is refused now.
    with pytest.raises(openai.AuthenticationError):
        chat(admin, old)
    assert chat(admin, new)
    with pytest.raises(openai.PermissionDeniedError):
        chat(admin, new, "claude-haiku-4-5")
    listed = requests.get(f"{url}/orgs/acme/keys", headers=auth, timeout=10).json()["keys"]
    assert [(k["name"], k["status"], k["hint"]) for k in listed] == [
        ("laptop", "active", new[:7] + "…")
    ]
    for bad, field in (
        ({"expires_in": "30x"}, "expires_in"),
        ({"models": []}, "models"),
        ({"tags": ["a b"]}, "tags"),
    ):
        r = requests.post(f"{url}/orgs/acme/keys", json=bad, headers=auth, timeout=10)
        assert r.status_code == 400 and field in r.json()["error"]["message"], (bad, r.text)
    r = requests.post(
        f"{url}/keys/{created['id']}/rotate", json={"overlap": "-1h"}, headers=auth, timeout=10
    )
    assert r.status_code == 400
    admin.clock.advance(ms=30 * DAY_MS)
    listed = requests.get(f"{url}/orgs/acme/keys", headers=auth, timeout=10).json()["keys"]
    assert listed[0]["status"] == "expired"


def test_a_key_with_rpm_2_gets_its_third_request_refused(stack):
    limits = KeyLimits(rpm=Decimal(2))
    record, secret = stack.key_record(settings=KeySettings(name="slow", limits=limits))
    other = stack.key()  # the organization's other keys are not limited by it
    chat(stack, secret)
    message(stack, secret)
    with pytest.raises(openai.RateLimitError) as e:
        chat(stack, secret)
    assert f"rpm of key '{record.key_id}'" in e.value.message
    with pytest.raises(anthropic.RateLimitError):
        message(stack, secret)
    assert chat(stack, other)
    stack.clock.advance(seconds=30)  # refilled by one request
    assert chat(stack, secret)
    with pytest.raises(openai.RateLimitError):
        chat(stack, secret)


def test_a_key_s_tpm_is_its_own_bucket(stack):
    _, secret = stack.key_record(settings=KeySettings(limits=KeyLimits(tpm=5)))
    r = stack.openai(secret).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO
    )
    assert int(r.headers["x-ratelimit-limit-tokens"]) == 5
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError) as e:
        chat(stack, secret)  # the first request's tokens took the bucket below zero
    assert "tpm of key" in e.value.message
