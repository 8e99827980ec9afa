"""Attacks on Tollway, one test each: every test fails if its attack succeeds.

Keys are hashed at rest and looked up by digest (never compared as text); the admin API
needs its token and is off without one; a key of one organization can neither read nor
spend another's; no key (the client's or the operator's) reaches a log line, a metric, an
error message or a forwarded header; no client header or request target can point the
proxy at anything but its configured upstreams."""

from __future__ import annotations

import hashlib
import logging
import re
import socket

import pytest
import redis as sync_redis
from tollway.limits.apikeys import ApiKeys
from tollway.proxy.admin.app import routes as admin_routes

from tests.support.fakeupstream import ANTHROPIC_KEY, OPENAI_KEY
from tests.support.faultkit import FaultStack, Script, ScriptedUpstream, TcpProxy, fetch, settled

ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
    workspaces: {ws1: {}}
    users: {alice: {workspace: ws1}}
  beta:
    limits: {rpm: 1000, tpm: 1000000}
    users: {bob: {}}
"""
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
ANTHROPIC_HELLO = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hello there"}],
}


@pytest.fixture
def stack(stack_factory):
    return stack_factory(ORGS)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def anthropic_headers(key: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": "2023-06-01"}


def every_value(stack) -> list[str]:
    """Every key name and every value stored under the stack's prefix, and every ledger
    event in the ledger database, as text."""
    out: list[str] = []
    r = stack.redis
    for name in r.scan_iter(match=f"{stack.prefix}:*", count=1000):
        out.append(name)
        kind = r.type(name)
        if kind == "hash":
            out.extend(f"{k}={v}" for k, v in r.hgetall(name).items())
        elif kind == "string":
            out.append(r.get(name))
        elif kind == "set":
            out.extend(r.smembers(name))
        elif kind == "zset":
            out.extend(r.zrange(name, 0, -1))
        elif kind == "stream":
            out.extend(f"{k}={v}" for _, f in r.xrange(name) for k, v in f.items())
        elif kind == "list":
            out.extend(r.lrange(name, 0, -1))
    for org in stack.holder.current.organizations:  # and the ledger database
        out.extend(f"{k}={v}" for f in stack.ledger(org) for k, v in f.items())
    return out


# --- keys at rest --------------------------------------------------------------------------------


def test_keys_are_stored_only_as_digests(stack) -> None:
    made = [stack.key_record("acme", user="alice"), stack.key_record("beta", user="bob")]
    for _, secret in made:
        assert fetch("POST", stack.url + "/v1/chat/completions", json=HELLO,
                     headers=bearer(secret)).status == 200  # fmt: skip
    settled(stack)
    stored = "\n".join(every_value(stack))
    for record, secret in made:
        body = secret.removeprefix("tw-")
        assert secret not in stored and body not in stored
        # Not even a long piece of it: only the short hint shown in key lists.
        for i in range(0, len(body) - 12):
            assert body[i : i + 12] not in stored
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert stack.redis.get(stack.keys.key_hash(digest)) == record.key_id


def test_a_key_is_looked_up_by_its_digest_never_compared_as_text(stack) -> None:
    """The store only ever sees the SHA-256 of a presented secret (MONITOR shows every
    command): no code path compares secrets, so there is no timing to measure. A 256-bit
    random key's digest reveals nothing useful."""
    _, secret = stack.key_record()
    wrong = secret[:-4] + "AAAA"
    monitor_client = sync_redis.Redis.from_url(stack.redis_url, decode_responses=True)
    seen: list[str] = []
    with monitor_client.monitor() as monitor:
        for s in (secret, wrong):
            fetch("POST", stack.url + "/v1/chat/completions", json=HELLO, headers=bearer(s))
        fetch("GET", stack.url + "/v1/models", headers=bearer(wrong))
        settled(stack)
        monitor_client.set(f"{stack.prefix}:monitor-end", "1")
        for event in monitor.listen():
            seen.append(event["command"])
            if "monitor-end" in event["command"]:
                break
    monitor_client.close()
    text = "\n".join(seen)
    assert hashlib.sha256(wrong.encode()).hexdigest() in text
    for s in (secret, wrong):
        assert s not in text and s.removeprefix("tw-")[:16] not in text


# --- the admin API -------------------------------------------------------------------------------


def admin_paths() -> list[tuple[str, str]]:
    out = []
    for r in admin_routes():
        path = re.sub(r"\{[^}]+\}", lambda m: {"{org}": "acme"}.get(m.group(0), "x"), r.path)
        out.append((r.method, "/admin" + path))
    return out


def test_the_admin_api_is_off_without_a_token(stack, monkeypatch) -> None:
    monkeypatch.delenv("TOLLWAY_ADMIN_TOKEN", raising=False)
    client_key = stack.key()
    before = stack.snapshot()
    for method, path in admin_paths():
        for h in ({}, bearer(""), bearer(client_key), bearer("anything")):
            reply = fetch(method, stack.url + path, headers=h, json={})
            assert reply.status == 403, (method, path, reply.status)
    assert stack.snapshot() == before


def test_the_admin_api_refuses_a_missing_or_wrong_token(stack, monkeypatch) -> None:
    token = "admin-" + "s3cr3t" * 6
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", token)
    client_key = stack.key()
    before = stack.snapshot()
    wrong = [
        {},
        bearer(client_key),  # a client's API key is no admin token
        bearer(token[:-1]),
        bearer(token + "x"),
        bearer(token.upper()),
        {"authorization": f"Basic {token}"},
        {"x-api-key": token},
        {"authorization": token},
    ]
    for method, path in admin_paths():
        for h in wrong:
            reply = fetch(method, stack.url + path, headers=h, json={})
            assert reply.status == 401, (method, path, h, reply.status)
            assert token not in reply.body.decode()
    assert stack.snapshot() == before
    assert fetch("GET", stack.url + "/admin/orgs", headers=bearer(token)).status == 200


def test_the_admin_token_is_compared_in_constant_time(stack, monkeypatch) -> None:
    """Every admin token check goes through hmac.compare_digest (whose time does not depend
    on where the strings differ): an attacker cannot guess the token byte by byte."""
    import tollway.proxy.admin.auth

    token = "admin-" + "q" * 40
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", token)
    seen: list[tuple[bytes, bytes]] = []
    real = tollway.proxy.admin.auth.hmac.compare_digest

    def recording(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tollway.proxy.admin.auth.hmac, "compare_digest", recording)
    for guess in ("a", token[:-1] + "x", token):
        fetch("GET", stack.url + "/admin/orgs", headers=bearer(guess))
    assert [a.decode() for a, _ in seen] == ["a", token[:-1] + "x", token]
    assert all(b == token.encode() for _, b in seen)


# --- one organization against another ------------------------------------------------------------


def test_a_key_never_reads_or_spends_another_organization(stack, monkeypatch) -> None:
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", "admin-token-" + "z" * 30)
    beta_record, beta_secret = stack.key_record("beta", user="bob")
    fetch("POST", stack.url + "/v1/chat/completions", json=HELLO, headers=bearer(beta_secret))
    settled(stack)
    beta_before = stack.snapshot("beta")
    _, acme_secret = stack.key_record("acme", user="alice")
    # Everything an acme key could try to make beta pay or to see beta's data.
    spoof = {
        "x-tollway-org": "beta",
        "openai-organization": "beta",
        "openai-project": "beta",
        "anthropic-organization-id": "beta",
        "x-tollway-session": "beta-session",
    }
    answers = []
    for path, body, h in [
        ("/v1/chat/completions", HELLO, bearer(acme_secret)),
        ("/v1/chat/completions?org=beta", HELLO, {**bearer(acme_secret), **spoof}),
        ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi"}, bearer(acme_secret)),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"},
         bearer(acme_secret)),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, bearer(acme_secret)),
        ("/v1/messages", ANTHROPIC_HELLO, anthropic_headers(acme_secret)),
        ("/v1/messages/count_tokens", ANTHROPIC_HELLO, anthropic_headers(acme_secret)),
        ("/v1/tollway/limit-requests", {"reason": "more"}, bearer(acme_secret)),
    ]:  # fmt: skip
        answers.append(fetch("POST", stack.url + path, json=body, headers=h))
    for path in ("/v1/models", "/v1/models/gpt-4o-mini", "/v1/tollway/limit-requests"):
        answers.append(fetch("GET", stack.url + path, headers=bearer(acme_secret)))
    for method, path in admin_paths():
        beta_path = path.replace("/orgs/acme", "/orgs/beta")
        answers.append(fetch(method, stack.url + beta_path, headers=bearer(acme_secret), json={}))
        # A member's key reaches its own status only (and the OpenAPI document).
        expected = 200 if path == "/admin/openapi.json" else 403
        assert answers[-1].status == expected, (method, beta_path)
    settled(stack)
    assert stack.snapshot("beta") == beta_before
    for reply in answers:
        text = reply.body.decode(errors="replace")
        assert beta_record.key_id not in text and "bob" not in text
    # Six metered requests, all charged to acme: chat (twice), completions, embeddings,
    # responses, messages.
    assert stack.day("acme")["org|req"] == 6


# --- keys never leak -----------------------------------------------------------------------------


def test_no_key_reaches_logs_metrics_errors_or_the_upstream(stack, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    _, secret = stack.key_record("acme", user="alice")
    revoked_record, revoked = stack.key_record("acme", name="old")
    stack.run(ApiKeys(stack.store).revoke(revoked_record.key_id))
    secrets = [secret, revoked, secret + "x", OPENAI_KEY, ANTHROPIC_KEY]
    bodies = []
    for h in (bearer(secret), bearer(revoked), bearer(secret + "x"), anthropic_headers(secret)):
        path = "/v1/messages" if "x-api-key" in h else "/v1/chat/completions"
        body = ANTHROPIC_HELLO if "x-api-key" in h else HELLO
        for stream in (False, True):
            bodies.append(
                fetch("POST", stack.url + path, json={**body, "stream": stream}, headers=h)
            )
    stack.fake.behavior.status = 500
    bodies.append(fetch("POST", stack.url + "/v1/chat/completions", json=HELLO,
                        headers=bearer(secret)))  # fmt: skip
    settled(stack)
    bodies.append(fetch("GET", stack.metrics_url + "/metrics"))
    for reply in bodies:
        text = reply.body.decode(errors="replace") + repr(reply.headers)
        for s in secrets:
            assert s not in text
    assert caplog.records
    for s in secrets:
        assert s not in caplog.text
    # Upstream: the operator's key in its provider's header, never the client's key.
    for r in stack.fake.requests:
        flat = repr(list(r.headers.items()))
        assert secret not in flat and revoked not in flat
        if r.path.startswith("/v1/messages"):
            assert r.headers["x-api-key"] == ANTHROPIC_KEY and "authorization" not in r.headers
        else:
            assert r.headers["authorization"] == f"Bearer {OPENAI_KEY}"
            assert "x-api-key" not in r.headers


def test_an_upstream_that_echoes_the_operator_key_does_not_reveal_it(stack) -> None:
    scripted = ScriptedUpstream(stack)
    try:
        stack.point_upstreams_to(scripted.url)
        key = stack.key()
        for status in (401, 400, 500):
            for provider_key, path, body, h in (
                (OPENAI_KEY, "/v1/chat/completions", HELLO, bearer(key)),
                (ANTHROPIC_KEY, "/v1/messages", ANTHROPIC_HELLO, anthropic_headers(key)),
                (OPENAI_KEY, "/v1/models", None, bearer(key)),
            ):
                message = (
                    f'{{"error": {{"message": "Incorrect API key provided: {provider_key}"}}}}'
                )
                scripted.script = Script(status=status, pieces=[message[:20], message[20:]])
                reply = fetch("POST" if body else "GET", stack.url + path, json=body, headers=h)
                assert reply.status == status
                assert provider_key not in reply.body.decode()
                assert b"Incorrect API key provided" in reply.body
    finally:
        scripted.close()


def test_the_journal_on_disk_holds_no_key(redis_url: str, tmp_path) -> None:
    """Settlements journaled while the store is away name the key by id, never by secret."""
    relay = TcpProxy(int(redis_url.rsplit(":", 1)[1]))
    path = tmp_path / "journal-stack"
    path.mkdir()
    s = FaultStack(relay.url, path, store_yaml="on_unavailable: open\ntimeout_seconds: 0.3")
    try:
        s.inspect_via(redis_url)
        record, secret = s.key_record()
        assert fetch("POST", s.url + "/v1/chat/completions", json=HELLO,
                     headers=bearer(secret)).status == 200  # fmt: skip
        settled(s)
        relay.set_mode("refuse")
        assert fetch("POST", s.url + "/v1/chat/completions", json=HELLO,
                     headers=bearer(secret)).status == 200  # fmt: skip
        settled(s)
        files = list((path / ".tollway" / "journal").iterdir())
        assert files
        data = b"".join(f.read_bytes() for f in files)
        assert record.key_id.encode() in data
        for k in (secret, OPENAI_KEY, ANTHROPIC_KEY):
            assert k.encode() not in data
    finally:
        relay.set_mode("pass")
        s.close()
        relay.close()


# --- where requests go ---------------------------------------------------------------------------


def raw(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_client_headers_cannot_redirect_the_upstream_request(stack) -> None:
    decoy = ScriptedUpstream(stack)
    try:
        key = stack.key()
        evil = decoy.url.removeprefix("http://")
        headers = {
            **bearer(key),
            "host": evil,
            "x-forwarded-host": evil,
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-proto": "https",
            "x-forwarded-port": "443",
            "x-forwarded-prefix": "/evil",
            "forwarded": f"host={evil};proto=http;for=6.6.6.6",
            "x-real-ip": "6.6.6.6",
            "x-original-url": "/v1/admin",
            "x-rewrite-url": "/v1/admin",
            "x-http-method-override": "DELETE",
            "x-host": evil,
            "via": f"1.1 {evil}",
        }
        reply = fetch("POST", stack.url + "/v1/chat/completions", json=HELLO, headers=headers)
        assert reply.status == 200
        assert decoy.bodies == []
        [sent] = stack.fake.requests
        assert sent.method == "POST" and sent.path == "/v1/chat/completions"
        forwarded = {k.lower() for k in sent.headers}
        for name in headers:
            if name not in ("host", "authorization"):
                assert name not in forwarded, name
        assert sent.headers["host"] == stack.fake_url.removeprefix("http://")
    finally:
        decoy.close()


@pytest.mark.parametrize(
    "target",
    [
        "http://{evil}/v1/chat/completions",  # absolute form: the path is taken, not the host
        "//{evil}/v1/chat/completions",
        "/v1/chat/completions/../../{evil}/v1/chat/completions",
        "/v1/models/..%2F..%2F..%2Fadmin",
        "/v1/models/%2e%2e",
        "/v1/models/..",
        "/v1/models/a%2F..%2F..%2Fx",
        "/v1/models/a%5C..%5Cx",
        "/%2e%2e/v1/chat/completions",
        "/v1/chat/completions%2F..%2F..%2Fx",
    ],
)
def test_request_targets_cannot_leave_the_configured_upstream(stack, target: str) -> None:
    decoy = ScriptedUpstream(stack)
    try:
        key = stack.key()
        evil = decoy.url.removeprefix("http://")
        path = target.format(evil=evil)
        body = b'{"model": "gpt-4o-mini", "messages": []}'
        response = raw(
            stack.url,
            f"POST {path} HTTP/1.1\r\nHost: {evil}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body,
        )
        status = int(response.split(b" ", 2)[1])
        assert status in (200, 400, 404, 405), response[:200]
        assert decoy.bodies == []
        for r in stack.fake.requests:
            assert ".." not in r.path and "\\" not in r.path
            assert r.path in ("/v1/chat/completions",), r.path
    finally:
        decoy.close()
