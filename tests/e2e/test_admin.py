"""The admin API against its own OpenAPI document: every documented route exists and
answers, every admin route is documented, the token guards every route (401 without it,
403 when no token is configured), and invalid input is a 4xx with a message."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from aiohttp.web_urldispatcher import PrefixedSubAppResource
from tollway.config import parse_config_text
from tollway.config.reload import ConfigHolder
from tollway.limits.admins import Credentials
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import ManualClock
from tollway.limits.history import History
from tollway.limits.increases import LimitIncreases
from tollway.limits.ledgerdb import SqliteLedger
from tollway.limits.rkeys import Keys
from tollway.limits.spend import Spend
from tollway.limits.store import Store
from tollway.proxy.admin.app import create_admin_app, routes

TOKEN = "admin-secret-for-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}

ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
    billing: {mode: prepaid}
    spend_caps: {monthly: 100.00}
    extra_usage: {enabled: true}
    seat_tiers:
      standard: {included: 1.00, monthly_cap: 5.00}
      premium: {included: 10.00}
    workspaces:
      cc: {limits: {tpm: 500000}, spend_caps: {monthly: 50.00}}
    users:
      alice: {seat: standard, workspace: cc, limits: {rpm: 7, tpm: 300000}}
      bob: {seat: premium}
      carol: {seat: standard}
  other:
    limits: {rpm: 10}
"""

# A valid body for every route that takes one, by operationId: a new body route without
# an example here fails test_every_documented_route_answers.
BODIES: dict[str, dict[str, Any]] = {
    "post_orgs_org_keys": {
        "name": "ci",
        "workspace": "cc",
        "user": "alice",
        "expires_in": "30d",
        "models": ["gpt-4o*"],
        "tags": ["team-a"],
    },
    "patch_keys_key_id": {"rpm": 5, "budget": "2.50", "budget_period": "day", "models": None},
    "post_keys_key_id_rotate": {"overlap": "1h"},
    "post_orgs_org_users": {"user": "erin", "seat": "standard", "workspace": "cc"},
    "patch_orgs_org_users_user": {"seat": "premium", "rpm": 5, "monthly_cap": "10"},
    "post_orgs_org_credits_purchases": {"amount": "25.00"},
    "post_orgs_org_credits_grants": {"amount": 5, "expires_in": "30d", "identity": "id-1"},
    "put_orgs_org_auto_reload": {"threshold": "5.00", "target": "20.00"},
    "put_orgs_org_caps_organization": {"amount": "50"},
    "put_orgs_org_caps_workspaces_workspace": {"amount": 20.5},
    "put_orgs_org_caps_tiers_tier": {"amount": "unlimited"},
    "put_orgs_org_caps_users_user": {"amount": None},
    "put_orgs_org_caps_models": {"amount": "5"},
    "put_orgs_org_extra_usage": {"enabled": True},
    "put_orgs_org_extra_usage_users_user": {"enabled": False},
    "post_orgs_org_limit_requests": {"user": "carol", "reason": "deadline"},
    "post_orgs_org_admins": {"role": "billing", "name": "finance"},
    "post_orgs_org_limit_requests_user_approve": {"cap": "20.00", "note": "ok"},
    "post_orgs_org_limit_requests_user_deny": {"note": "not now"},
}
# Path values that differ by operation (one pending request is decided once).
PATH_VALUES = {"post_orgs_org_limit_requests_user_deny": {"user": "bob"}}
# Required query parameters, by operation.
QUERY = {
    "put_orgs_org_caps_models": {"model": "gpt-4o*", "period": "day"},
    "delete_orgs_org_caps_models": {"model": "gpt-4o*", "period": "day"},
}


@pytest.fixture
def admin(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    return stack_factory(ORGS)


def call(stack, method: str, path: str, headers=AUTH, **kw) -> requests.Response:
    return requests.request(method, stack.url + path, headers=headers, timeout=10, **kw)


def spec(stack) -> dict[str, Any]:
    r = call(stack, "GET", "/admin/openapi.json")
    assert r.status_code == 200
    return r.json()


def documented(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]


def test_document_is_openapi_31_and_matches_the_routes(admin):
    doc = spec(admin)
    assert doc["openapi"] == "3.1.0"
    in_doc = {(m, p) for m, p, _ in documented(doc)}
    admin_app = next(
        r._app for r in admin.app.router.resources() if isinstance(r, PrefixedSubAppResource)
    )
    served = {
        (r.method, "/admin" + r.resource.canonical[len("/admin") :])
        for r in admin_app.router.routes()
        if r.method != "HEAD" and "{tail" not in r.resource.canonical
    }
    assert in_doc == served
    for _, _, op in documented(doc):
        assert op["summary"] and op["operationId"]
        assert {"400", "401", "403", "404"} <= set(op["responses"])
    # Every $ref resolves.
    text = str(doc)
    for ref in re.findall(r"#/components/schemas/(\w+)", text):
        assert ref in doc["components"]["schemas"]


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: values[m.group(1)], path)


def _values(stack) -> dict[str, str]:
    secret = stack.key("acme", user="alice")
    record, _ = stack.key_record("acme", name="to-revoke")
    stack.openai(secret).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello"}],
        extra_headers={"x-tollway-session": "sess-1"},
    )
    stack.wait_settled()
    spend = Spend(stack.store, stack.clock, lambda: stack.holder.current)
    for user in ("alice", "bob"):
        stack.run(LimitIncreases(spend).file("acme", user, "more please"))
    credential, _ = stack.run(Credentials(stack.store).create("acme", "admin", 0, "ops"))
    return {
        "org": "acme",
        "key_id": record.key_id,
        "admin_id": credential.cred_id,
        "session_id": "sess-1",
        "user": "alice",
        "workspace": "cc",
        "tier": "standard",
        "month": "2026-01",
    }


def test_every_documented_route_answers(admin):
    values = _values(admin)
    doc = spec(admin)
    for method, path, op in documented(doc):
        kw: dict[str, Any] = {}
        if "requestBody" in op:
            kw["json"] = BODIES[op["operationId"]]
        url = _fill(path, values | PATH_VALUES.get(op["operationId"], {}))
        r = call(admin, method, url, params=QUERY.get(op["operationId"]), **kw)
        success = [int(s) for s in op["responses"] if s.startswith("2")]
        assert r.status_code in success, (method, path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")


def test_unauthenticated_calls_get_401(admin):
    for method, path, _ in documented(spec(admin)):
        url = _fill(path, {k: "x" for k in re.findall(r"{(\w+)}", path)})
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            r = call(admin, method, url, headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert "admin token" in r.json()["error"]["message"]
    assert call(admin, "GET", "/admin/nowhere", headers={}).status_code == 401


def test_disabled_without_a_token(stack_factory, monkeypatch):
    monkeypatch.delenv("TOLLWAY_ADMIN_TOKEN", raising=False)
    stack = stack_factory(ORGS)
    for r in routes():
        url = "/admin" + _fill(r.path, {k: "x" for k in r.path_params})
        got = call(stack, r.method, url)
        assert got.status_code == 403
        assert "disabled" in got.json()["error"]["message"]
    # An empty variable does not enable it either.
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", "")
    r = call(stack, "GET", "/admin/orgs", headers={"authorization": "Bearer "})
    assert r.status_code == 403


def test_disabled_when_the_setting_is_null(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    stack = stack_factory(ORGS, "server: {admin_token_env: null}\n")
    r = call(stack, "GET", "/admin/orgs")
    assert r.status_code == 403 and "server.admin_token_env" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("POST", "/admin/orgs/acme/keys", b"{not json", 400, "not valid JSON"),
        ("POST", "/admin/orgs/acme/keys", b"[1, 2]", 400, "JSON object"),
        ("POST", "/admin/orgs/acme/keys", b"", 400, "JSON object body"),
        ("POST", "/admin/orgs/acme/keys", {"name": 3}, 400, "name"),
        ("POST", "/admin/orgs/acme/keys", {"colour": "red"}, 400, "colour"),
        ("POST", "/admin/orgs/acme/keys", {"workspace": "nope"}, 400, "unknown workspace"),
        ("POST", "/admin/orgs/acme/keys", {"user": "dave"}, 400, "unknown user"),
        ("POST", "/admin/orgs/ghost/keys", {}, 404, "unknown organization"),
        ("GET", "/admin/orgs/acme/usage?by=colour", None, 400, "by"),
        ("GET", "/admin/orgs/acme/usage?from=2026-13-01", None, 400, "YYYY-MM-DD"),
        ("GET", "/admin/orgs/acme/usage?from=2026-02-01&to=2026-01-01", None, 400, "after"),
        ("GET", "/admin/orgs/acme/usage?from=2020-01-01&to=2026-01-01", None, 400, "days"),
        ("GET", "/admin/orgs/acme/usage?format=xml", None, 400, "format"),
        ("GET", "/admin/keys/key_nope", None, 404, "no key"),
        ("POST", "/admin/keys/key_nope/revoke", None, 404, "no key"),
        ("GET", "/admin/sessions/nope", None, 404, "no session"),
        ("GET", "/admin/orgs/acme/sessions/nope", None, 404, "no session"),
        ("GET", "/admin/no/such/route", None, 404, "no admin route"),
        ("DELETE", "/admin/orgs/acme/keys", None, 405, "GET, POST"),
        ("POST", "/admin/orgs/acme/credits/purchases", {}, 400, "amount"),
        ("POST", "/admin/orgs/acme/credits/purchases", {"amount": "1.0000001"}, 400, "6 dec"),
        ("POST", "/admin/orgs/acme/credits/purchases", {"amount": -1}, 400, "negative"),
        ("POST", "/admin/orgs/acme/credits/purchases", {"amount": "0"}, 400, "greater than"),
        ("POST", "/admin/orgs/acme/credits/purchases", {"amount": 1e30}, 400, "at most"),
        ("POST", "/admin/orgs/acme/credits/purchases", {"amount": True}, 400, "amount"),
        ("POST", "/admin/orgs/other/credits/purchases", {"amount": 1}, 400, "not prepaid"),
        ("POST", "/admin/orgs/acme/credits/grants", {"amount": 1, "expires_in": "3m"}, 400, ""),
        ("GET", "/admin/orgs/acme/credits/history?limit=0", None, 400, "limit"),
        ("PUT", "/admin/orgs/acme/auto-reload", {"threshold": "1.00"}, 400, "both"),
        ("PUT", "/admin/orgs/acme/auto-reload", {"threshold": 9, "target": 5}, 400, "greater"),
        ("PUT", "/admin/orgs/acme/auto-reload", {"enabled": "no"}, 400, "enabled"),
        ("PUT", "/admin/orgs/acme/caps/organization", {"amount": "lots"}, 400, "amount"),
        ("PUT", "/admin/orgs/acme/caps/organization", {}, 400, "amount"),
        ("PUT", "/admin/orgs/acme/caps/users/dave", {"amount": 1}, 400, "unknown user"),
        ("PUT", "/admin/orgs/acme/caps/tiers/gold", {"amount": 1}, 400, "unknown tier"),
        ("PUT", "/admin/orgs/acme/caps/organization", {"amount": 10**10}, 400, "between"),
        ("DELETE", "/admin/orgs/acme/caps/workspaces/zz", None, 400, "unknown workspace"),
        ("PUT", "/admin/orgs/acme/extra-usage", {"enabled": 1}, 400, "enabled"),
        ("PUT", "/admin/orgs/acme/extra-usage/users/dave", {"enabled": True}, 400, "dave"),
        ("GET", "/admin/orgs/acme/users/dave", None, 400, "unknown user"),
        ("GET", "/admin/orgs/acme/spend?month=2026-1", None, 400, "YYYY-MM"),
        ("GET", "/admin/orgs/acme/statements/2026-13", None, 400, "YYYY-MM"),
        ("GET", "/admin/orgs/acme/statements/2026-01?format=pdf", None, 400, "format"),
        ("POST", "/admin/orgs/acme/limit-requests", {"user": "dave"}, 400, "unknown user"),
        ("POST", "/admin/orgs/acme/limit-requests", {"reason": "x"}, 400, "user"),
        ("POST", "/admin/orgs/acme/limit-requests/alice/approve", {}, 400, "exactly one"),
        ("POST", "/admin/orgs/acme/limit-requests/alice/deny", {}, 409, "no pending"),
    ],
)
def test_invalid_input_is_a_4xx_with_a_message(admin, method, path, body, status, words):
    kw = {"json": body} if isinstance(body, dict) else {"data": body}
    before = admin.snapshot("acme"), admin.snapshot("other")
    r = call(admin, method, path, **kw)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert (admin.snapshot("acme"), admin.snapshot("other")) == before


def test_keys_create_use_list_revoke(admin):
    r = call(admin, "POST", "/admin/orgs/acme/keys", json={"name": "ci", "user": "bob"})
    assert r.status_code == 201
    created = r.json()
    assert created["user"] == "bob" and created["key"].startswith("tw-")
    client = admin.openai(created["key"])
    client.models.list()
    listed = call(admin, "GET", "/admin/orgs/acme/keys").json()["keys"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0]
    r = call(admin, "POST", f"/admin/keys/{created['id']}/revoke")
    assert r.status_code == 200 and r.json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )


def test_live_limits_show_levels_after_traffic(admin):
    secret = admin.key("acme", user="alice")
    admin.openai(secret).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
    )
    admin.wait_settled()
    body = call(admin, "GET", "/admin/orgs/acme/limits").json()
    got = {(b["scope"], b["limit"]): b for b in body["rate_limits"]}
    assert set(got) == {
        ("org", "rpm"),
        ("org", "tpm"),
        ("ws=cc", "tpm"),
        ("user=alice", "rpm"),
        ("user=alice", "tpm"),
    }
    # 5 input + 5 output tokens, one request; the clock has not moved.
    assert got[("org", "tpm")]["remaining"] == 1_000_000 - 10
    assert got[("user=alice", "tpm")]["remaining"] == 300_000 - 10
    assert got[("org", "rpm")]["remaining"] == 999
    assert got[("user=alice", "rpm")]["per_minute"] == "7"
    admin.clock.advance(seconds=60)
    body = call(admin, "GET", "/admin/orgs/acme/limits").json()
    assert all(b["remaining"] == int(b["per_minute"]) for b in body["rate_limits"])


async def test_store_down_is_a_503(aiohttp_client, unused_tcp_port, monkeypatch, tmp_path):
    """The admin app alone, on a store at a port where nothing listens."""
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    cfg = parse_config_text(ORGS, "tollway.yaml", {})
    store = Store.from_url(f"redis://127.0.0.1:{unused_tcp_port}", Keys("t"), timeout=0.2)
    store.history = History(store, SqliteLedger(tmp_path / "ledger.sqlite3"))
    app = create_admin_app(ConfigHolder(cfg, {}), store, ManualClock(), ApiKeys(store))
    client = await aiohttp_client(app)
    for path in ("/orgs/acme/keys", "/orgs/acme/usage", "/orgs/acme/limits", "/sessions/s"):
        r = await client.get(path, headers=AUTH)
        assert r.status == 503, path
        assert "store" in (await r.json())["error"]["message"]
    await store.close()


def test_credits_buy_grant_show_history(admin):
    r = call(admin, "POST", "/admin/orgs/acme/credits/purchases", json={"amount": 10.5})
    assert r.status_code == 201
    assert r.json()["lot"]["amount_micro"] == 10_500_000  # a JSON number, read exactly
    grant = {"amount": "2.25", "identity": "phone-1"}
    assert call(admin, "POST", "/admin/orgs/acme/credits/grants", json=grant).status_code == 201
    again = call(admin, "POST", "/admin/orgs/acme/credits/grants", json=grant)
    assert again.status_code == 400 and "identity" in again.json()["error"]["message"]
    shown = call(admin, "GET", "/admin/orgs/acme/credits").json()
    assert shown["balance"]["available_micro"] == 12_750_000
    assert shown["payment_method"] == {
        "provider": "none",
        "registered": False,
        "webhook_url": None,
        "signed": False,
    }
    lots = call(admin, "GET", "/admin/orgs/acme/credits/lots").json()["lots"]
    assert sorted(lot["kind"] for lot in lots) == ["promotional", "purchased"]
    events = call(admin, "GET", "/admin/orgs/acme/credits/history?limit=1").json()["events"]
    assert [e["type"] for e in events] == ["grant"]
    limits = call(admin, "GET", "/admin/orgs/acme/limits").json()
    assert limits["credit"]["available_micro"] == 12_750_000


def test_auto_reload_set_off_clear(admin):
    path = "/admin/orgs/acme/auto-reload"
    assert call(admin, "GET", path).json()["auto_reload"]["enabled"] is False
    r = call(admin, "PUT", path, json={"threshold": "5", "target": "20.50"})
    assert r.json()["auto_reload"] | {"payment_provider": None} == {
        "enabled": True,
        "threshold": "5.00",
        "target": "20.50",
        "source": "override",
        "payment_provider": None,
    }
    r = call(admin, "PUT", path, json={"enabled": False})
    assert r.json()["auto_reload"]["enabled"] is False
    assert call(admin, "GET", "/admin/orgs/acme/limits").json()["overrides"] == {"reload:off": "1"}
    r = call(admin, "DELETE", path)
    assert r.status_code == 200 and r.json()["auto_reload"]["enabled"] is False
    assert call(admin, "GET", "/admin/orgs/acme/limits").json()["overrides"] == {}


def _service_key_request(stack, secret: str) -> int:
    try:
        stack.openai(secret).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
        )
    except openai.APIStatusError as e:
        return e.status_code
    stack.wait_settled()
    return 200


def monthly(cap: dict[str, Any]) -> dict[str, Any]:
    """The monthly cap of a caps entry (its daily and weekly ones are beside it)."""
    return {"cap": cap["cap"], "source": cap["source"]}


def test_cap_overrides_apply_to_the_next_request(admin):
    secret = admin.key("acme", name="service")  # no seat: all its spend is extra
    call(admin, "POST", "/admin/orgs/acme/credits/purchases", json={"amount": "10"})
    assert _service_key_request(admin, secret) == 200
    r = call(admin, "PUT", "/admin/orgs/acme/caps/organization", json={"amount": "0"})
    assert monthly(r.json()["caps"]["organization"]) == {"cap": 0, "source": "override"}
    before = admin.snapshot()
    assert _service_key_request(admin, secret) == 429
    assert admin.snapshot() == before
    r = call(admin, "DELETE", "/admin/orgs/acme/caps/organization")
    assert r.json()["removed"] is True
    assert monthly(r.json()["caps"]["organization"]) == {"cap": 100_000_000, "source": "config"}
    assert _service_key_request(admin, secret) == 200
    mtd = call(admin, "GET", "/admin/orgs/acme/spend").json()
    assert mtd["month"] == "2026-01" and mtd["organization"]["spend"] > 0
    assert mtd["organization"]["extra"] == mtd["organization"]["spend"]
    limits = call(admin, "GET", "/admin/orgs/acme/limits").json()
    assert limits["month_to_date"]["organization"] == mtd["organization"]
    assert monthly(limits["caps"]["workspaces"]["cc"]) == {"cap": 50_000_000, "source": "config"}


def test_statement_json_and_csv(admin):
    secret = admin.key("acme", user="alice")
    admin.openai(secret).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
    )
    admin.wait_settled()
    st = call(admin, "GET", "/admin/orgs/acme/statements/2026-01").json()
    assert [line["user"] for line in st["lines"]] == ["alice"]
    assert st["consistent"] is True and st["spend"] > 0
    r = call(admin, "GET", "/admin/orgs/acme/statements/2026-01?format=csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0].startswith("user,seat,requests")
    assert r.text.splitlines()[-1].startswith("TOTAL,")


def test_extra_usage_switches(admin):
    path = "/admin/orgs/acme/extra-usage"
    body = call(admin, "GET", path).json()
    assert body["configured"] is True and body["override"] is None
    assert body["users"] == {"alice": True, "bob": True, "carol": True}
    body = call(admin, "PUT", path + "/users/bob", json={"enabled": False}).json()
    assert body["users"]["bob"] is False
    body = call(admin, "PUT", path, json={"enabled": False}).json()
    assert body["override"] is False and not any(body["users"].values())
    call(admin, "DELETE", path)
    body = call(admin, "DELETE", path + "/users/bob").json()
    assert body["override"] is None and all(body["users"].values())


def test_limit_request_file_list_approve_deny(admin):
    r = call(admin, "POST", "/admin/orgs/acme/limit-requests", json={"user": "alice"})
    assert r.status_code == 201 and r.json()["status"] == "pending"
    again = call(admin, "POST", "/admin/orgs/acme/limit-requests", json={"user": "alice"})
    assert again.status_code == 409
    admin.clock.advance(seconds=5)  # pending requests are listed oldest first
    call(admin, "POST", "/admin/orgs/acme/limit-requests", json={"user": "bob", "reason": "x"})
    pending = call(admin, "GET", "/admin/orgs/acme/limit-requests").json()["pending"]
    assert [(p["request"]["user"], p["user"]["seat"]) for p in pending] == [
        ("alice", "standard"),
        ("bob", "premium"),
    ]
    r = call(
        admin, "POST", "/admin/orgs/acme/limit-requests/alice/approve", json={"tier": "premium"}
    )
    assert r.json()["status"] == "approved" and r.json()["decision"]["tier"] == "premium"
    assert call(admin, "GET", "/admin/orgs/acme/users/alice").json()["seat"] == "premium"
    r = call(
        admin, "POST", "/admin/orgs/acme/limit-requests/bob/approve", json={"cap": "unlimited"}
    )
    assert r.json()["decision"] == {"cap": "unlimited"}
    assert call(admin, "GET", "/admin/orgs/acme/users/bob").json()["cap"] is None
    assert call(admin, "GET", "/admin/orgs/acme/limit-requests").json()["pending"] == []


def test_operations_doc_lists_every_route():
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    listed = set()
    for methods, path in re.findall(r"^\| `([A-Z, ]+) (/admin/\S+)` \|", text, re.M):
        listed |= {(m.strip(), path) for m in methods.split(",")}
    assert listed == {(r.method, "/admin" + r.path) for r in routes()}
