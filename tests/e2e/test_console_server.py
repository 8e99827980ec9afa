"""The console's own routes, without a browser: the page and its files with their security
headers, sign-in refusals, and a session that ends on sign-out."""

from __future__ import annotations

import requests

ORGS = """
organizations:
  acme: {}
"""


def test_page_files_and_headers(stack_factory):
    stack = stack_factory(ORGS)
    for path in ("/console", "/console/", "/console/static/core.js", "/console/static/console.css"):
        r = requests.get(stack.url + path, timeout=10)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "text/html" in requests.get(stack.url + "/console", timeout=10).headers["content-type"]
    for path in ("/console/static/../app.py", "/console/static/app.py", "/console/static/nope.js"):
        assert requests.get(stack.url + path, timeout=10).status_code == 404, path


def test_sign_in_refusals(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", "operator-" + "k" * 30)
    stack = stack_factory(ORGS)
    url = stack.url + "/console/session"
    service_key = stack.key("acme")  # a key with no user has no member view
    assert requests.post(url, data="secret=x", timeout=10).status_code == 415
    assert requests.post(url, json={"nope": 1}, timeout=10).status_code == 400
    for secret in ("twa-wrong", "tw-wrong", service_key, "operator-" + "k" * 30):
        r = requests.post(url, json={"secret": secret}, timeout=10)
        assert r.status_code == 401, secret
        assert "set-cookie" not in r.headers
    assert requests.get(url, timeout=10).status_code == 401


def test_a_session_ends_on_sign_out(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", "operator-" + "k" * 30)
    stack = stack_factory(ORGS.replace("acme: {}", "acme: {users: {alice: {}}}"))
    alice = stack.key("acme", user="alice")
    s = requests.Session()
    who = s.post(stack.url + "/console/session", json={"secret": alice}, timeout=10).json()
    assert (who["role"], who["org"], who["user"]) == ("member", "acme", "alice")
    assert s.get(stack.url + "/admin/orgs/acme/users/alice", timeout=10).status_code == 200
    assert s.get(stack.url + "/admin/orgs/acme/users/bob", timeout=10).status_code == 403
    assert s.delete(stack.url + "/console/session", timeout=10).status_code == 403  # no CSRF
    headers = {"x-csrf-token": who["csrf"]}
    assert s.delete(stack.url + "/console/session", headers=headers, timeout=10).ok
    assert s.get(stack.url + "/admin/orgs/acme/users/alice", timeout=10).status_code == 401


def test_a_member_session_ends_when_the_key_expires(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", "operator-" + "k" * 30)
    stack = stack_factory(ORGS.replace("acme: {}", "acme: {users: {alice: {}}}"))
    r = requests.post(
        stack.url + "/admin/orgs/acme/keys",
        json={"user": "alice", "name": "short", "expires_in": "1h"},
        headers={"authorization": "Bearer operator-" + "k" * 30},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    s = requests.Session()
    assert s.post(stack.url + "/console/session", json={"secret": r.json()["key"]}, timeout=10).ok
    assert s.get(stack.url + "/admin/orgs/acme/users/alice", timeout=10).status_code == 200
    stack.clock.advance(seconds=3601)
    assert s.get(stack.url + "/admin/orgs/acme/users/alice", timeout=10).status_code == 401
