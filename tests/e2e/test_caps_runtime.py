"""Run-time caps of every period and per model, set through the admin API and obeyed by
the official SDKs' very next request: a seat tier's daily cap resets at local midnight of
server.timezone (injected clock), a user's weekly one on Monday; a model cap refuses the
models its pattern matches and no other, and clearing it falls back to the YAML's; a
pattern the YAML does not declare is counted from when it is given a cap. Only an owner
or admin of the organization may change caps: anyone else gets a 403 and nothing
changes."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import anthropic
import openai
import pytest
import requests

from tests.support.spendkit import CLAUDE_COST, C, chat, message, priced

TOKEN = "operator-" + "t" * 40
NY = ZoneInfo("America/New_York")
ORGS = """
server: {timezone: America/New_York}
organizations:
  acme:
    billing: {mode: postpaid}
    extra_usage: {enabled: true}
    seat_tiers:
      standard: {}
    users:
      alice: {seat: standard}
      bob: {seat: standard}
    model_caps:
      "gpt-4o*": {daily: 0.05}
"""


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=NY).timestamp() * 1000)


def admin(stack, method: str, path: str, params=None, **kw) -> requests.Response:
    headers = {"authorization": f"Bearer {TOKEN}"}
    url = f"{stack.url}/admin/orgs/acme{path}"
    return requests.request(method, url, params=params, headers=headers, timeout=10, **kw)


@pytest.fixture
def stack(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    s = stack_factory(ORGS)
    priced(s)  # a gpt-4o request costs exactly C, a claude-haiku-4-5 one CLAUDE_COST
    return s


def test_a_runtime_daily_cap_on_a_tier_resets_at_local_midnight(stack):
    stack.clock.set(ms(2026, 1, 6, 23, 0))  # a Tuesday, 11 pm in New York (04:00Z on the 7th)
    r = admin(stack, "PUT", "/caps/tiers/standard", {"period": "day"}, json={"amount": "0.02"})
    assert r.status_code == 200
    assert r.json()["caps"]["tiers"]["standard"]["daily"] == {"cap": 2 * C, "source": "override"}
    alice, bob = stack.key(user="alice"), stack.key(user="bob")
    chat(stack, alice)
    chat(stack, alice)
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError) as e:
        chat(stack, alice)
    assert "seat tier 'standard' daily spend cap of $0.02 for today" in e.value.message
    assert "It resets at 2026-01-07T05:00:00" in e.value.message  # local midnight, in UTC
    with pytest.raises(anthropic.BadRequestError) as a:
        message(stack, alice)
    assert "seat tier 'standard' daily" in a.value.message
    chat(stack, bob)  # each user of the tier has the tier's cap
    stack.clock.set(ms(2026, 1, 6, 23, 59, 59))
    with pytest.raises(openai.RateLimitError):
        chat(stack, alice)  # UTC has long passed midnight; New York has not
    stack.clock.set(ms(2026, 1, 7, 0, 0, 0))
    chat(stack, alice)  # local midnight: a new day
    # A user's own weekly cap, set at run time: 3 cents this week are past it.
    r = admin(stack, "PUT", "/caps/users/alice", {"period": "week"}, json={"amount": "0.03"})
    assert r.json()["caps"]["users"]["alice"]["weekly"] == {
        "cap": 3 * C,
        "source": "user 'alice' weekly",
    }
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError) as e:
        chat(stack, alice)
    assert "user 'alice' weekly spend cap" in e.value.message
    assert "2026-01-12T05:00:00" in e.value.message  # Monday, local midnight
    # Clearing the tier's run-time daily cap falls back to the YAML: no daily cap.
    assert admin(stack, "DELETE", "/caps/tiers/standard", {"period": "day"}).json()["removed"]
    for _ in range(3):
        chat(stack, bob)
    stack.wait_settled()


def test_a_runtime_model_cap_refuses_its_models_only_and_clearing_falls_back(stack):
    key = stack.key()  # a service key: all its spend is extra
    chat(stack, key)
    stack.wait_settled()
    r = admin(
        stack, "PUT", "/caps/models", {"model": "gpt-4o*", "period": "day"}, json={"amount": "0.02"}
    )
    assert r.json()["caps"]["models"]["gpt-4o*"]["daily"] == {"cap": 2 * C, "source": "override"}
    chat(stack, key)  # 2 cents today on gpt-4o*
    stack.wait_settled()
    before = stack.snapshot()
    with pytest.raises(openai.RateLimitError) as e:
        chat(stack, key)
    assert "model 'gpt-4o*' daily spend cap of $0.02" in e.value.message
    with pytest.raises(openai.RateLimitError):  # another model of the pattern: no dodge
        stack.openai(key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
        )
    assert stack.snapshot() == before  # the refusals took nothing
    message(stack, key)  # a model outside the pattern goes on
    # Cleared: the YAML's 5 cents a day apply again.
    r = admin(stack, "DELETE", "/caps/models", {"model": "gpt-4o*", "period": "day"})
    assert r.json()["removed"] is True
    assert r.json()["caps"]["models"]["gpt-4o*"]["daily"] == {"cap": 5 * C, "source": "config"}
    for _ in range(3):
        chat(stack, key)
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError, match=r"model 'gpt-4o\*' daily spend cap of \$0.05"):
        chat(stack, key)


def test_a_model_pattern_the_yaml_lacks_is_counted_from_its_runtime_cap(stack):
    stack.clock.set(ms(2026, 1, 6, 12, 0))
    key = stack.key()
    message(stack, key)  # before the cap: not counted against it
    stack.wait_settled()
    r = admin(stack, "PUT", "/caps/models", {"model": "claude-*"}, json={"amount": "0.005"})
    assert r.json()["caps"]["models"]["claude-*"]["cap"] == 5_000
    message(stack, key)  # 4,500 of 5,000 micro-USD this month
    stack.wait_settled()
    month = stack.redis.hgetall(stack.keys.month("acme", "2026-01"))
    assert int(month["extra:model=claude-*"]) == CLAUDE_COST
    message(stack, key)  # one request past the cap, as sequential traffic overshoots
    stack.wait_settled()
    with pytest.raises(anthropic.BadRequestError, match="model 'claude-\\*' monthly"):
        message(stack, key)
    chat(stack, key)  # gpt-4o is not under claude-*
    admin(stack, "DELETE", "/caps/models", {"model": "claude-*"})
    assert stack.redis.smembers(stack.keys.model_caps("acme")) == set()
    message(stack, key)


def test_only_an_owner_or_admin_of_the_organization_changes_caps(console_world):
    w = console_world
    stack = w.stack
    changes = [
        ("PUT", "/orgs/acme/caps/tiers/standard?period=day", '{"amount": "0"}'),
        ("PUT", "/orgs/acme/caps/models?model=gpt-4o*&period=week", '{"amount": "0"}'),
        ("PUT", "/orgs/acme/caps/users/alice?period=week", '{"amount": "0"}'),
        ("DELETE", "/orgs/acme/caps/organization?period=day", None),
    ]
    stack.run(_override(stack))  # something a DELETE could remove
    callers = {
        "beta owner": w.secrets["beta/owner"],
        "acme billing": w.secrets["acme/billing"],
        "acme member": stack.key("acme", user="alice"),
    }
    for who, secret in callers.items():
        for method, path, body in changes:
            before = stack.snapshot("acme")
            r = _call(stack, secret, method, path, body)
            assert r.status_code == 403, (who, method, path, r.text)
            assert stack.snapshot("acme") == before, (who, method, path)
    for role in ("owner", "admin"):
        r = _call(stack, w.secrets[f"acme/{role}"], *changes[0])
        assert r.status_code == 200, r.text
        assert r.json()["caps"]["tiers"]["standard"]["daily"]["cap"] == 0


async def _override(stack) -> None:
    await stack.store.client.hset(stack.keys.overrides("acme"), "cap.day:org", "1000000")


def _call(stack, secret: str, method: str, path: str, body: str | None) -> requests.Response:
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    return requests.request(
        method, stack.url + "/admin" + path, data=body, headers=headers, timeout=10
    )


def test_a_users_daily_and_weekly_caps_through_the_users_route(stack):
    stack.clock.set(ms(2026, 1, 6, 12, 0))
    bob = stack.key(user="bob")
    r = admin(stack, "PATCH", "/users/bob", json={"weekly_cap": "0.01", "daily_cap": "5"})
    assert r.status_code == 200, r.text
    assert (r.json()["weekly_cap"], r.json()["daily_cap"]) == (C, 5_000_000)
    chat(stack, bob)
    stack.wait_settled()
    with pytest.raises(openai.RateLimitError, match="user 'bob' weekly spend cap"):
        chat(stack, bob)
    r = admin(stack, "PATCH", "/users/bob", json={"weekly_cap": "default"})
    assert r.json()["weekly_cap"] is None  # neither the user nor the tier has one
    assert r.json()["daily_cap"] == 5_000_000  # untouched
    chat(stack, bob)
    r = admin(stack, "PATCH", "/users/bob", json={"daily_cap": "lots"})
    assert r.status_code == 400 and "daily_cap" in r.text
