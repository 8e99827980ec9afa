"""`tollway credits ...` run through `tollway.proxy.cli.main.main` against the test server, with a
temporary config: output (table and JSON), exit codes, and refusals that change nothing."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from tollway.limits.durations import parse_period
from tollway.proxy.cli import main as cli

CONFIG = """
store: {{key_prefix: {prefix}}}
upstreams:
  openai: {{base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}}
prices:
  m: {{input: 1, output: 1}}
organizations:
  acme:
    billing: {{mode: prepaid, promo_expiry_days: 30}}
  beta:
    billing:
      mode: prepaid
      auto_reload: {{threshold: 5.00, target: 20.00}}
      payment: {{provider: webhook, webhook_url: "http://127.0.0.1:9/pay"}}
  post:
    billing: {{mode: postpaid}}
"""
DAY = 86_400_000


class Cli:
    def __init__(self, path: Path, prefix: str, url: str, capsys) -> None:
        self.path, self.prefix, self.capsys = path, prefix, capsys
        self.redis = redis.Redis.from_url(url, decode_responses=True)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = cli.main([*argv, "--config", str(self.path)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str):
        code, out, err = self(*argv, "--format", "json")
        assert code == 0, err
        return json.loads(out)

    def snapshot(self) -> dict:
        out = {}
        for name in sorted(self.redis.scan_iter(match=f"{self.prefix}:*", count=1000)):
            kind = self.redis.type(name)
            if kind == "hash":
                out[name] = self.redis.hgetall(name)
            elif kind == "stream":
                out[name] = self.redis.xrange(name)
            elif kind == "zset":
                out[name] = self.redis.zrange(name, 0, -1, withscores=True)
            else:
                out[name] = self.redis.get(name) if kind == "string" else kind
        return out


@pytest.fixture
def run(redis_url, tmp_path, monkeypatch, capsys):
    prefix = "t" + uuid.uuid4().hex[:10]
    path = tmp_path / "tollway.yaml"
    path.write_text(CONFIG.format(prefix=prefix))
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    c = Cli(path, prefix, redis_url, capsys)
    yield c
    c.redis.close()


def test_buy_then_show(run):
    code, out, err = run("credits", "buy", "--org", "acme", "--amount", "12.5")
    assert code == 0, err
    assert out.startswith("purchased lot lot_")
    assert "12.50 USD, expires" in out and "available:   12.50 USD" in out
    shown = run.json("credits", "show", "--org", "acme")
    assert shown["balance"]["available"] == "12.50"
    assert shown["balance"]["available_micro"] == 12_500_000
    [lot] = shown["lots"]
    assert (lot["kind"], lot["amount"], lot["remaining"], lot["source"]) == (
        "purchased",
        "12.50",
        "12.50",
        "purchase",
    )
    # One calendar year: 365 or 366 days.
    assert lot["expires_ms"] - lot["created_ms"] in (365 * DAY, 366 * DAY)
    assert [e["type"] for e in shown["events"]] == ["purchase"]
    assert shown["auto_reload"] == {"enabled": False, "payment_provider": "none"}

    code, out, _ = run("credits", "show", "--org", "acme")
    assert code == 0
    assert "available:   12.50 USD" in out and "auto-reload: off (payment: none)" in out
    assert "purchased" in out and lot["id"] in out and "EXPIRES" in out


def test_grant_durations_and_default_expiry(run):
    lot = run.json("credits", "grant", "--org", "acme", "--amount", "1", "--expires-in", "12w")
    assert lot["lot"]["expires_ms"] - lot["lot"]["created_ms"] == 84 * DAY
    lot = run.json("credits", "grant", "--org", "acme", "--amount", "0.000001")
    assert lot["lot"]["expires_ms"] - lot["lot"]["created_ms"] == 30 * DAY  # promo_expiry_days
    assert lot["lot"]["kind"] == "promotional" and lot["lot"]["amount"] == "0.000001"
    assert lot["balance"]["available"] == "1.000001"
    assert parse_period("90d") == timedelta(days=90)
    assert parse_period("48h") == timedelta(hours=48)
    before = run.snapshot()
    for bad in ("3m", "0d", "90", "d", "-1d", "1.5d"):
        code, _, err = run(
            "credits", "grant", "--org", "acme", "--amount", "1", f"--expires-in={bad}"
        )
        assert code == 2 and "--expires-in:" in err, (bad, err)
    assert run.snapshot() == before


def test_identity_grant_is_given_once(run):
    args = ("credits", "grant", "--amount", "5", "--identity", "sha256:phone-1")
    assert run(*args, "--org", "acme")[0] == 0
    before = run.snapshot()
    code, _, err = run(*args, "--org", "beta")
    assert code == 1
    assert "this identity has already received a promotional grant" in err
    assert run.snapshot() == before


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("0", "must be greater than zero"),
        ("-1", "invalid amount '-1': must not be negative"),
        ("1.0000001", "invalid amount '1.0000001': more than 6 decimal places"),
        ("ten", "invalid amount 'ten': not an amount in USD"),
        ("1e3", "not an amount in USD"),
    ],
)
def test_bad_amounts_are_refused_and_change_nothing(run, amount, message):
    run("credits", "buy", "--org", "acme", "--amount", "1")
    before = run.snapshot()
    for action in ("buy", "grant"):
        code, out, err = run("credits", action, "--org", "acme", "--amount", amount)
        assert code == 1, err
        assert message in err and out == ""
    assert run.snapshot() == before


def test_unknown_and_postpaid_organizations(run):
    before = run.snapshot()
    code, _, err = run("credits", "buy", "--org", "nope", "--amount", "1")
    assert code == 2 and "unknown organization 'nope' (known: acme, beta, post)" in err
    code, _, err = run("credits", "buy", "--org", "post", "--amount", "1")
    assert code == 1 and "organization 'post' is not prepaid" in err
    assert run.snapshot() == before


def test_history_newest_first(run):
    run("credits", "buy", "--org", "acme", "--amount", "2")
    run("credits", "grant", "--org", "acme", "--amount", "1", "--expires-in", "1h")
    events = run.json("credits", "history", "--org", "acme")
    assert [(e["type"], e["amount"]) for e in events] == [("grant", "1.00"), ("purchase", "2.00")]
    assert len(run.json("credits", "history", "--org", "acme", "--limit", "1")) == 1
    code, out, _ = run("credits", "history", "--org", "acme")
    assert code == 0 and out.splitlines()[0].split() == ["TIME", "TYPE", "AMOUNT", "DETAIL"]
    assert "grant" in out.splitlines()[1]


def test_auto_reload_settings(run):
    shown = run.json("credits", "show", "--org", "beta")
    assert shown["auto_reload"] == {
        "enabled": True,
        "threshold": "5.00",
        "target": "20.00",
        "source": "config",
        "payment_provider": "webhook",
    }
    out = run.json("credits", "auto-reload", "--org", "beta", "--threshold", "2.5", "--target", "9")
    assert out["auto_reload"]["threshold"] == "2.50" and out["auto_reload"]["source"] == "override"
    assert run.json("credits", "auto-reload", "--org", "beta", "--off")["auto_reload"] == {
        "enabled": False,
        "payment_provider": "webhook",
    }
    out = run.json("credits", "auto-reload", "--org", "beta", "--clear")
    assert out["auto_reload"]["source"] == "config"
    # acme has no payment method: allowed, but the operator is told nothing will be bought.
    code, out, err = run(
        "credits", "auto-reload", "--org", "acme", "--threshold", "1", "--target", "2"
    )
    assert code == 0 and "below 1.00 USD, up to 2.00 USD (override)" in out
    assert "no payment method is registered" in err

    before = run.snapshot()
    refusals = [
        (("--threshold", "5", "--target", "5"), 1, "must be greater than the threshold"),
        (("--threshold", "5", "--target", "1.0000001"), 1, "more than 6 decimal places"),
        (("--threshold", "5"), 2, "--threshold and --target go together"),
        ((), 2, "give --threshold and --target, or --off, or --clear"),
        (("--off", "--clear"), 2, "give --threshold and --target, or --off, or --clear"),
    ]
    for args, expected, message in refusals:
        code, _, err = run("credits", "auto-reload", "--org", "beta", *args)
        assert (code, message in err) == (expected, True), (args, err)
    code, _, err = run("credits", "auto-reload", "--org", "post", "--off")
    assert code == 1 and "not prepaid" in err
    assert run.snapshot() == before


def test_store_unavailable_exit_code(tmp_path, monkeypatch, capsys, unused_tcp_port):
    path = tmp_path / "tollway.yaml"
    path.write_text(CONFIG.format(prefix="tx"))
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{unused_tcp_port}")
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    code = cli.main(["credits", "show", "--org", "acme", "--config", str(path)])
    assert code == 3
    assert "store unavailable" in capsys.readouterr().err
