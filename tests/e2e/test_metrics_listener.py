"""/metrics is for operators only: the client port answers 404 there (no tenant reads
another organization's name, balance or spend), the metrics listener serves it on its own
address, and with `server.metrics_token_env` set it wants that bearer token."""

from __future__ import annotations

import uuid

import pytest

from tests.support.faultkit import ProxyProcess, config_yaml, fetch, wait_for

HELLO = [{"role": "user", "content": "hi"}]


def test_client_port_has_no_metrics(stack) -> None:
    key = stack.key()
    stack.openai(key).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    # A tenant, with or without its key, gets nothing on the client port.
    for headers in ({}, {"authorization": f"Bearer {key}"}):
        reply = fetch("GET", stack.url + "/metrics", headers=headers)
        assert reply.status == 404
        assert b"tollway_" not in reply.body and b"acme" not in reply.body
    # The operators' listener has it all.
    text = fetch("GET", stack.metrics_url + "/metrics").body.decode()
    assert 'tollway_requests_total{org="acme",outcome="ok",route="/v1/chat/completions"}' in text


def test_metrics_token_is_required_when_configured(stack_factory, monkeypatch) -> None:
    monkeypatch.setenv("TW_TEST_METRICS_TOKEN", "s3cret-scrape")
    stack = stack_factory(extra_yaml="server: {metrics_token_env: TW_TEST_METRICS_TOKEN}\n")
    url = stack.metrics_url + "/metrics"
    assert fetch("GET", url).status == 401
    assert fetch("GET", url, headers={"authorization": "Bearer wrong"}).status == 401
    ok = fetch("GET", url, headers={"authorization": "Bearer s3cret-scrape"})
    assert ok.status == 200 and b"tollway_requests_total" in ok.body
    # A configured token whose variable is gone disables the endpoint; it is never open.
    monkeypatch.delenv("TW_TEST_METRICS_TOKEN")
    assert fetch("GET", url).status == 403


@pytest.mark.slow
def test_serve_binds_metrics_on_its_own_address(redis_url, tmp_path) -> None:
    """A real `tollway serve`: clients get 404 on /metrics, the metrics port has them."""
    path = tmp_path / "tollway.yaml"
    orgs = "organizations:\n  acme: {limits: {rpm: 100}}\n"
    path.write_text(config_yaml(redis_url, "t" + uuid.uuid4().hex[:10], "http://127.0.0.1:9", orgs))
    proxy = ProxyProcess(path, tmp_path / "data")
    try:
        proxy.wait_ready()
        assert fetch("GET", proxy.url + "/metrics").status == 404
        # It starts just after the client port.
        wait_for(lambda: _up(proxy.metrics_url), 10, "the metrics listener")
        fetch("POST", proxy.url + "/v1/chat/completions", json={"model": "gpt-4o-mini"})
        assert proxy.metric("tollway_requests_total", outcome="unauthorized") == 1
    finally:
        proxy.stop()


def _up(url: str) -> bool:
    try:
        return fetch("GET", url + "/metrics", timeout=1).status == 200
    except OSError:
        return False
