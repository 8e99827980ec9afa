"""Tenant isolation (issue #14), through the official SDKs and raw HTTP:

- every route x method with a tenant key: only the allowed pairs reach the upstream
  (counted at the fake upstream), the others are 405/404 in the provider's format;
- a tenant of organization A can neither read nor change anything of organization B
  through any client-facing route (proxy routes, member routes, the admin API and the
  console with A's key);
- /v1/models shows a key only the models it may use, in each provider's list format;
- count_tokens is rate-limited; a gzip body reaches the upstream decoded and unlabelled;
  a route whose upstream is not configured is a clear 404, counted as `no_upstream`.
"""

from __future__ import annotations

import gzip

import anthropic
import openai
import orjson
import pytest
import requests
from tollway.limits.apikeys import ApiKeys, KeySettings
from tollway.proxy.gateway.routes import ROUTES

from tests.support.faultkit import fetch, settled

HELLO = [{"role": "user", "content": "hi"}]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
TOKEN = "admin-secret-for-isolation-tests"
ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
    billing: {mode: prepaid}
    users: {alice: {}, carol: {}}
  beta:
    limits: {rpm: 1000, tpm: 1000000}
    billing: {mode: prepaid}
    users: {bob: {}}
"""
BODIES = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": HELLO},
    "/v1/completions": {"model": "gpt-4o-mini", "prompt": "hi"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/responses": {"model": "gpt-4o-mini", "input": "hi"},
    "/v1/messages": {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": HELLO},
    "/v1/messages/count_tokens": {"model": "claude-haiku-4-5", "messages": HELLO},
}


def headers_for(path: str, secret: str) -> dict[str, str]:
    if path.startswith("/v1/messages"):
        return {"x-api-key": secret, "anthropic-version": "2023-06-01"}
    return {"authorization": f"Bearer {secret}"}


def concrete(path: str) -> str:
    return path.replace("{model_id}", "gpt-4o-mini")


def state(stack, org: str) -> dict:
    """Every key of `org` but its ledger stream, which the ledger shipper empties into the
    ledger database in the background (balances, spend, reports, sessions stay)."""
    return {k: v for k, v in stack.snapshot(org).items() if not k.endswith(":ledger")}


def hits(stack) -> int:
    return len(stack.fake.requests)


@pytest.fixture
def two_orgs(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    stack = stack_factory(ORGS)
    for org in ("acme", "beta"):
        r = requests.post(
            f"{stack.url}/admin/orgs/{org}/credits/purchases",
            json={"amount": "10.00"},
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert r.status_code == 201
    return stack


# --- every route x method -----------------------------------------------------------------


def test_only_allowed_route_method_pairs_reach_the_upstream(two_orgs) -> None:
    stack = two_orgs
    secret = stack.key("acme", user="alice")
    walked = 0
    for route in ROUTES:
        path = concrete(route.path)
        for method in METHODS:
            before = hits(stack)
            body = orjson.dumps(BODIES.get(route.path, {})) if method != "GET" else None
            h = {**headers_for(path, secret), "content-type": "application/json"}
            reply = fetch(method, stack.url + path, headers=h, body=body)
            forwarded = hits(stack) - before
            walked += 1
            if method in route.methods:
                assert reply.status == 200, (method, path, reply.status, reply.body[:200])
                assert forwarded == 1, (method, path)
            else:
                assert reply.status == 405, (method, path, reply.status)
                assert forwarded == 0, (method, path)
                assert reply.headers["allow"] == ", ".join(sorted(route.methods))
                if method != "HEAD":  # a HEAD answer has no body
                    error = orjson.loads(reply.body)
                    if path.startswith("/v1/messages"):
                        assert error["type"] == "error"
                        assert error["error"]["type"] == "invalid_request_error"
                    else:
                        assert error["error"]["code"] == "method_not_allowed"
    assert walked == len(ROUTES) * len(METHODS)
    # Paths of the provider APIs Tollway does not serve are 404, never forwarded.
    before = hits(stack)
    for path in (
        "/v1/files",
        "/v1/fine_tuning/jobs",
        "/v1/models/a/b",
        "/v1/organization/x",
        "/v1/messages/batches",
        "/v1/models/%2e%2e/files",
        "/v1/chat/completions/x",
    ):
        for method in ("GET", "POST", "DELETE"):
            reply = fetch(method, stack.url + path, headers=headers_for(path, secret))
            assert reply.status == 404, (method, path, reply.status)
    assert hits(stack) == before
    stack.wait_settled()
    m = stack.metrics.registry.get_sample_value
    assert m("tollway_requests_total", {"route": "other", "outcome": "bad_request", "org": "-"})


def test_sdks_cannot_delete_or_create_models(two_orgs) -> None:
    stack = two_orgs
    secret = stack.key("acme", user="alice")
    before = hits(stack)
    with pytest.raises(openai.APIStatusError) as caught:
        stack.openai(secret).models.delete("gpt-4o-mini")
    assert caught.value.status_code == 405
    client = stack.anthropic(secret)
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.delete("/v1/models/claude-sonnet-4-6", cast_to=object)
    assert refused.value.status_code == 405
    assert hits(stack) == before


# --- organization A against organization B ----------------------------------------------------


def test_a_tenant_of_one_org_reaches_nothing_of_another(two_orgs) -> None:
    stack = two_orgs
    a_secret = stack.key("acme", user="alice")
    b_record, b_secret = stack.key_record("beta", user="bob", name="bobs")
    # B has traffic of its own: a session, spend, a pending limit request.
    stack.openai(b_secret).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers={"x-tollway-session": "shared-id"}
    )
    requests.post(stack.url + "/v1/tollway/limit-requests", json={"reason": "more"},
                  headers={"authorization": f"Bearer {b_secret}"}, timeout=10)  # fmt: skip
    settled(stack)
    b_before = state(stack, "beta")
    a = {"authorization": f"Bearer {a_secret}"}

    # 1. Proxy routes with A's key and every header that could name another org or session.
    spoof = {
        **a,
        "openai-organization": "beta",
        "openai-project": "beta",
        "x-tollway-org": "beta",
        "x-tollway-session": "shared-id",
        "anthropic-workspace": "beta",
    }
    client = stack.openai(a_secret, default_headers=spoof)
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.anthropic(a_secret, default_headers=spoof).messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=HELLO
    )
    forwarded = stack.fake.requests[-1].headers
    assert "x-tollway-org" not in forwarded and "openai-organization" not in forwarded

    # 2. Member routes: A's key reaches only A's own user.
    mine = fetch("GET", stack.url + "/v1/tollway/limit-requests", headers=a)
    assert mine.status == 404  # alice never filed one; bob's is not hers
    filed = fetch("POST", stack.url + "/v1/tollway/limit-requests",
                  json={"reason": "x", "org": "beta", "user": "bob"}, headers=a)  # fmt: skip
    assert filed.status == 201 and orjson.loads(filed.body)["user"] == "alice"

    # 3. Every admin route, B's names in the path, with A's key (a member's credentials).
    spec = requests.get(stack.url + "/admin/openapi.json", headers=a, timeout=10).json()
    values = {"org": "beta", "user": "bob", "key_id": b_record.key_id, "workspace": "w",
              "tier": "t", "session_id": "shared-id", "id": "x", "cred_id": "x"}  # fmt: skip
    tried = 0
    for template, ops in spec["paths"].items():
        path = template
        for name, value in values.items():
            path = path.replace("{" + name + "}", value)
        for method in ops:
            if method.upper() not in ("GET", "POST", "PUT", "DELETE", "PATCH"):
                continue
            r = requests.request(method.upper(), stack.url + "/admin" + path, headers=a,
                                 json={"amount": "1.00", "user": "bob"}, timeout=10)  # fmt: skip
            tried += 1
            if template in ("/orgs", "/openapi.json"):
                assert "beta" not in r.text or template == "/openapi.json", (method, path)
                continue
            assert r.status_code in (401, 403, 404, 405), (method, path, r.status_code)
    assert tried > 20

    # 4. The console: signed in with A's key, B's things stay out of reach.
    console = requests.Session()
    signed = console.post(stack.url + "/console/session", json={"secret": a_secret}, timeout=10)
    assert signed.status_code == 200 and signed.json()["org"] == "acme"
    csrf = {"x-csrf-token": signed.json()["csrf"]}
    for method, path in [("GET", "/admin/orgs/beta/credits"), ("GET", "/admin/orgs/beta/users/bob"),
                         ("POST", "/admin/orgs/beta/limit-requests"),
                         ("GET", f"/admin/keys/{b_record.key_id}"),
                         ("POST", f"/admin/keys/{b_record.key_id}/revoke")]:  # fmt: skip
        r = console.request(method, stack.url + path, headers=csrf, json={"user": "bob"})
        assert r.status_code in (401, 403, 404), (method, path, r.status_code)

    settled(stack)
    assert state(stack, "beta") == b_before
    # B's key still works, and B's session holds B's one request only.
    stack.openai(b_secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)


# --- /v1/models ---------------------------------------------------------------------------------


def test_model_lists_show_only_usable_models(two_orgs) -> None:
    stack = two_orgs
    secret = stack.key("acme", user="alice")
    ids = [m.id for m in stack.openai(secret).models.list()]
    # The fake account has gpt-4o-mini, gpt-4o, text-embedding-3-small and a fine-tune of
    # another customer (unpriced): the fine-tune never shows.
    assert ids == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    raw = fetch("GET", stack.url + "/v1/models", headers={"authorization": f"Bearer {secret}"})
    assert set(orjson.loads(raw.body)) == {"object", "data"}
    # A key with a model allow-list sees only those models.
    narrow = stack.run(_narrow_key(stack, ["gpt-4o*"]))
    assert [m.id for m in stack.openai(narrow).models.list()] == ["gpt-4o-mini", "gpt-4o"]
    before = hits(stack)
    with pytest.raises(openai.NotFoundError):
        stack.openai(narrow).models.retrieve("text-embedding-3-small")
    with pytest.raises(openai.NotFoundError):
        stack.openai(secret).models.retrieve("ft:gpt-4o-mini:othercorp::9xQa1")
    assert hits(stack) == before  # refused without asking the upstream
    assert stack.openai(secret).models.retrieve("gpt-4o").id == "gpt-4o"
    # Anthropic: its own list format; the dated haiku snapshot is unpriced (claude-opus-4-6
    # is priced by the pattern claude-opus-4-*).
    page = stack.anthropic(secret).models.list()
    assert [m.id for m in page.data] == ["claude-sonnet-4-6", "claude-opus-4-6"]
    body = orjson.loads(
        fetch("GET", stack.url + "/v1/models",
              headers={"x-api-key": secret, "anthropic-version": "2023-06-01"}).body
    )  # fmt: skip
    assert body == {**body, "has_more": False, "first_id": "claude-sonnet-4-6",
                    "last_id": "claude-opus-4-6"}  # fmt: skip
    with pytest.raises(anthropic.NotFoundError):
        stack.anthropic(secret).models.retrieve("claude-haiku-4-5-20251001")


async def _narrow_key(stack, models: list[str]) -> str:
    settings = KeySettings(name="narrow", models=tuple(models))
    _, secret = await ApiKeys(stack.store).create("acme", stack.clock.now_ms(), settings=settings)
    return secret


# --- count_tokens, encodings, missing upstreams -----------------------------------------------


def test_count_tokens_is_rate_limited_and_charges_nothing(stack_factory) -> None:
    stack = stack_factory("organizations:\n  acme: {limits: {rpm: 2}}\n")
    client = stack.anthropic(stack.key())
    for _ in range(2):
        assert client.messages.count_tokens(model="claude-haiku-4-5", messages=HELLO)
    before = hits(stack)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.count_tokens(model="claude-haiku-4-5", messages=HELLO)
    assert hits(stack) == before
    stack.wait_settled()
    assert stack.day() == {}  # no tokens, no money, no report entry
    assert stack.redis.zcard(stack.keys.holds("acme")) == 0  # no hold left behind


def test_a_gzip_body_reaches_the_upstream_decoded(stack) -> None:
    secret = stack.key()
    body = orjson.dumps(BODIES["/v1/chat/completions"])
    h = {"authorization": f"Bearer {secret}", "content-type": "application/json",
         "content-encoding": "gzip"}  # fmt: skip
    reply = fetch("POST", stack.url + "/v1/chat/completions", headers=h, body=gzip.compress(body))
    assert reply.status == 200
    sent = stack.fake.requests[-1]
    assert "content-encoding" not in sent.headers
    assert orjson.loads(sent.body) == orjson.loads(body)
    # A coding Tollway cannot decode is refused, never forwarded.
    before = hits(stack)
    for coding in ("compress", "gzip, gzip", "x-custom"):
        refused = fetch("POST", stack.url + "/v1/chat/completions",
                        headers={**h, "content-encoding": coding}, body=body)  # fmt: skip
        assert refused.status == 415, coding
    assert hits(stack) == before


def test_a_provider_without_upstream_is_a_clear_404(stack) -> None:
    text = stack.config_path.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("  anthropic:")]
    stack.config_path.write_text("\n".join(lines) + "\n")
    assert stack.holder.reload(), stack.holder.last_error
    client = stack.anthropic(stack.key())
    with pytest.raises(anthropic.NotFoundError, match="no 'anthropic' upstream"):
        client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=HELLO)
    models = fetch("GET", stack.url + "/v1/models",
                   headers={"x-api-key": "x", "anthropic-version": "2023-06-01"})  # fmt: skip
    assert models.status == 404 and orjson.loads(models.body)["error"]["type"] == "not_found_error"
    labels = {"route": "/v1/messages", "outcome": "no_upstream", "org": "-"}
    assert stack.metrics.registry.get_sample_value("tollway_requests_total", labels) == 1
