"""The free-credit identity through the admin API (raw HTTP) and the SDKs: a grant claimed
with one spelling is refused for every other spelling, in every organization, and the
organization that was refused has no credit to spend."""

from __future__ import annotations

import anthropic
import pytest
import requests

TOKEN = "admin-secret-for-identity-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ORGS = "organizations:\n" + "".join(f"  org{i}: {{billing: {{mode: prepaid}}}}\n" for i in range(6))
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def admin(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    return stack_factory(ORGS)


def grant(stack, org: str, identity: str) -> requests.Response:
    body = {"amount": "5.00", "expires_in": "90d", "identity": identity}
    return requests.post(
        f"{stack.url}/admin/orgs/{org}/credits/grants", json=body, headers=AUTH, timeout=10
    )


def test_respelled_identities_are_refused_over_http(admin) -> None:
    assert grant(admin, "org0", "+1 (555) 010-9999").status_code == 201
    respelled = ["15550109999", "+1-555-010-9999", "001 555 010 9999"]
    for i, identity in enumerate(respelled, start=1):
        r = grant(admin, f"org{i}", identity)
        assert r.status_code == 400 and "identity" in r.json()["error"]["message"]
    assert grant(admin, "org4", "Jane.Doe+promo@Gmail.com").status_code == 201
    assert grant(admin, "org5", "janedoe@googlemail.com").status_code == 400
    # The refused organization has nothing to spend: its SDK call is refused for credit.
    client = admin.anthropic(admin.key("org5"))
    with pytest.raises(anthropic.BadRequestError, match="credit balance is too low"):
        client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=HELLO)
    assert [r for r in admin.fake.requests if r.path == "/v1/messages"] == []
