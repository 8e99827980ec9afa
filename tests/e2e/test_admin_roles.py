"""What each organization role may change through the admin API (bearer credentials), on
its own organization: billing buys and edits auto-reload, admin manages caps, extra usage,
keys and requests, owner does both; none grants credit or mints credentials; a refusal is a
403 that changes nothing; a member reaches only their own status and request."""

from __future__ import annotations

import requests

from tests.support.spendkit import balance

CHANGES = {  # (method, path, body) -> the roles that may do it
    ("POST", "/orgs/acme/credits/purchases", '{"amount": "2.00"}'): {"owner", "billing"},
    ("PUT", "/orgs/acme/auto-reload", '{"threshold": "1", "target": "9"}'): {"owner", "billing"},
    ("PUT", "/orgs/acme/caps/organization", '{"amount": "30"}'): {"owner", "admin"},
    ("PUT", "/orgs/acme/caps/tiers/standard", '{"amount": "unlimited"}'): {"owner", "admin"},
    ("PUT", "/orgs/acme/extra-usage", '{"enabled": true}'): {"owner", "admin"},
    ("POST", "/orgs/acme/keys", '{"name": "ci"}'): {"owner", "admin"},
    ("POST", "/orgs/acme/limit-requests", '{"user": "alice"}'): {"owner", "admin"},
    ("POST", "/orgs/acme/credits/grants", '{"amount": "5"}'): set(),
    ("POST", "/orgs/acme/admins", '{"role": "owner"}'): set(),
}


def call(stack, secret, method, path, body=None):
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    return requests.request(
        method, stack.url + "/admin" + path, data=body, headers=headers, timeout=10
    )


def test_each_role_changes_only_its_concerns(console_world):
    w = console_world
    stack = w.stack
    for role in ("billing", "admin", "owner"):
        secret = w.secrets[f"acme/{role}"]
        for (method, path, body), allowed in CHANGES.items():
            before = stack.snapshot("acme")
            r = call(stack, secret, method, path, body)
            if role in allowed:
                assert r.status_code in (200, 201), (role, method, path, r.text)
            else:
                assert r.status_code == 403, (role, method, path, r.text)
                assert stack.snapshot("acme") == before, (role, method, path)
            if path.endswith("limit-requests") and r.ok:  # one pending per user
                call(stack, secret, "POST", "/orgs/acme/limit-requests/alice/deny", "{}")
        # Reading is open to every role.
        for path in ("/orgs/acme/caps", "/orgs/acme/credits", "/orgs/acme/usage"):
            assert call(stack, secret, "GET", path).status_code == 200
    # Two purchases (billing and owner), both paid through the payment webhook.
    assert [c["json"]["amount_micro"] for c in w.payments.calls] == [2_000_000, 2_000_000]
    assert balance(stack) == 4_000_000


def test_a_member_reaches_only_their_own_status_and_request(console_world):
    w = console_world
    stack = w.stack
    alice = stack.key("acme", user="alice")
    assert call(stack, alice, "GET", "/orgs/acme/users/alice").json()["user"] == "alice"
    assert call(stack, alice, "GET", "/orgs/acme/users/bob").status_code == 403
    assert call(stack, alice, "GET", "/orgs").status_code == 403
    assert call(stack, alice, "GET", "/orgs/acme/caps").status_code == 403
    r = call(stack, alice, "POST", "/orgs/acme/limit-requests", '{"user": "bob"}')
    assert r.status_code == 403
    r = call(stack, alice, "POST", "/orgs/acme/limit-requests", '{"user": "alice", "reason": "x"}')
    assert r.status_code == 201 and r.json()["user"] == "alice"
    r = call(stack, alice, "POST", "/orgs/acme/limit-requests/alice/approve", '{"cap": "9"}')
    assert r.status_code == 403
