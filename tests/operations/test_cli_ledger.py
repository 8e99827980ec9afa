"""`tollway ledger export` (CSV, Parquet) and `tollway reconcile` against traffic sent with
the official SDKs through the proxy."""

from __future__ import annotations

import csv
import io

import pytest
from tollway.limits import reports
from tollway.proxy.cli.main import main

from tests.support.stack import ENV

ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
    workspaces: {cc: {}}
    users:
      alice: {workspace: cc}
"""
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def traffic(stack_factory, monkeypatch):
    stack = stack_factory(ORGS)
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    monkeypatch.setenv("TOLLWAY_CONFIG", str(stack.config_path))
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    alice = stack.key("acme", user="alice")
    service = stack.key("acme")
    stack.openai(alice).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.anthropic(alice).messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
    stack.openai(service).chat.completions.create(model="gpt-4o", messages=HELLO)
    stack.wait_settled()
    return stack


def total_cost(stack) -> int:
    from datetime import date

    day = date(2026, 1, 1)
    return stack.run(reports.usage_report(stack.store, "acme", "org", day, day)).total.cost


def test_export_csv_has_one_row_per_request_with_the_finance_columns(traffic, capsys):
    assert main(["ledger", "export", "--month", "2026-01"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    settled = [r for r in rows if r["type"] in ("debit", "usage", "fail")]
    assert len(settled) == 3
    assert {r["model"] for r in settled} == {"gpt-4o-mini", "claude-haiku-4-5", "gpt-4o"}
    assert [r["user"] for r in settled].count("alice") == 2
    assert {r["workspace"] for r in settled} == {"cc", ""}
    assert all(r["organization"] == "acme" and r["time"].startswith("2026-01-01T") for r in rows)
    assert sum(int(r["cost_micro"]) for r in settled) == total_cost(traffic) > 0
    assert main(["ledger", "export", "--month", "2026-02"]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # the header only


def test_export_parquet_reads_back_the_same_rows(traffic, tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "ledger.parquet"
    assert (
        main(["ledger", "export", "--month", "2026-01", "--format", "parquet", "-o", str(out)]) == 0
    )
    table = pq.read_table(out)
    assert table.num_rows == 3
    assert sum(table.column("cost_micro").to_pylist()) == total_cost(traffic)
    assert str(table.schema.field("time").type) == "timestamp[ms, tz=UTC]"


def test_reconcile_finds_no_drift_then_a_tampered_month(traffic, capsys):
    assert main(["reconcile"]) == 0
    assert "1 organization(s): 0 difference(s)" in capsys.readouterr().out
    traffic.redis.hincrby(traffic.keys.month("acme", "2026-01"), "spend:org", 5)
    assert main(["reconcile", "--org", "acme"]) == 1
    out = capsys.readouterr().out
    assert "DRIFT acme 2026-01 spend:org" in out and "1 difference(s)" in out
