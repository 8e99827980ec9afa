"""Usage and session reports equal the sums of what the fake upstream reported for the
requests made, by every grouping, over a date range; CSV and JSON carry the same numbers."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import date

import pytest
from tollway.limits import reports
from tollway.limits.prices import cost_micro
from tollway.limits.usage import Usage

ORGS = """
organizations:
  acme:
    limits: {rpm: 10000, tpm: 100000000}
    workspaces:
      cc: {}
    users:
      alice: {workspace: cc}
      bob: {}
  other:
    limits: {rpm: 100}
"""
HELLO = [{"role": "user", "content": "Say hello to everyone here"}]


@dataclass
class Made:
    """One request as the test made it, with what the upstream reported for it."""

    day: str
    key: str
    workspace: str | None
    user: str | None
    model: str
    ok: bool
    usage: Usage


class Traffic:
    def __init__(self, stack) -> None:
        self.stack = stack
        self.made: list[Made] = []
        self.keys = {}
        for name, ws, user in (("alice", None, "alice"), ("bob", None, "bob"), ("ws", "cc", None)):
            record, secret = stack.key_record("acme", workspace=ws, user=user, name=name)
            self.keys[name] = (record, secret)
        self.keys["plain"] = stack.key_record("acme", name="plain")

    def today(self) -> str:
        return date.fromtimestamp(self.stack.clock.now_ms() / 1000).isoformat()

    def send(self, who: str, model: str, *, stream: bool = False, fail: bool = False) -> None:
        record, secret = self.keys[who]
        stack = self.stack
        stack.fake.behavior.status = 500 if fail else 200
        try:
            if model.startswith("claude"):
                client = stack.anthropic(secret)
                if stream:
                    with client.messages.stream(model=model, max_tokens=50, messages=HELLO) as s:
                        s.until_done()
                else:
                    client.messages.create(model=model, max_tokens=50, messages=HELLO)
            else:
                kw = {"stream_options": {"include_usage": True}} if stream else {}
                r = stack.openai(secret).chat.completions.create(
                    model=model, messages=HELLO, stream=stream, **kw
                )
                if stream:
                    list(r)
        except Exception as e:  # the SDK raises on the 500
            assert fail, e
        stack.wait_settled()
        sent = stack.fake.responses[-1]
        usage = Usage(
            sent["input_tokens"],
            sent["output_tokens"],
            sent["cache_write_tokens"],
            sent["cache_read_tokens"],
        )
        ws = record.workspace or ("cc" if record.user == "alice" else None)
        self.made.append(Made(self.today(), record.key_id, ws, record.user, model, not fail, usage))

    def expected(self, by: str, first: str, last: str) -> dict[str | None, dict[str, int]]:
        prices = self.stack.holder.current.prices
        out: dict[str | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for m in self.made:
            if not first <= m.day <= last:
                continue
            group = {
                "org": "acme",
                "day": m.day,
                "workspace": m.workspace,
                "user": m.user,
                "key": m.key,
                "model": m.model,
            }[by]
            row = out[group]
            row["requests"] += 1
            row["failures"] += 0 if m.ok else 1
            if m.ok:
                row["input_tokens"] += m.usage.input_tokens
                row["output_tokens"] += m.usage.output_tokens
                row["cache_write_tokens"] += m.usage.cache_write_tokens
                row["cache_read_tokens"] += m.usage.cache_read_tokens
                row["cost_micro"] += cost_micro(prices[m.model], m.usage)
        return out


@pytest.fixture
def traffic(stack_factory) -> Traffic:
    stack = stack_factory(ORGS)
    t = Traffic(stack)
    b = stack.fake.behavior
    t.send("alice", "gpt-4o-mini")
    t.send("alice", "claude-haiku-4-5", stream=True)
    t.send("bob", "gpt-4o", stream=True)
    t.send("ws", "gpt-4o-mini", fail=True)
    stack.clock.advance(seconds=86_400)  # day 2
    stack.fake.reset()
    b = stack.fake.behavior
    b.cache_write_tokens, b.cache_read_tokens = 120, 3000
    t.send("plain", "claude-haiku-4-5")
    t.send("bob", "claude-haiku-4-5", stream=True)
    stack.fake.reset()
    b = stack.fake.behavior
    b.cache_read_tokens, b.chunks = 64, 9
    t.send("ws", "gpt-4o")
    t.send("alice", "gpt-4o-mini", stream=True)
    stack.clock.advance(seconds=86_400)  # day 3: outside the range asked below
    stack.fake.reset()
    t.send("alice", "gpt-4o-mini")
    return t


def _report(stack, by: str, first: str, last: str) -> reports.UsageReport:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return stack.run(reports.usage_report(stack.store, "acme", by, start, end))


def _rows(report: reports.UsageReport) -> dict[str | None, dict[str, int]]:
    out = {}
    for row in reports.report_dict(report)["rows"]:
        group = row.pop(report.by)
        row.pop("cost_usd")
        out[group] = {k: v for k, v in row.items() if v}
    return out


def _clean(expected):
    return {g: {k: v for k, v in row.items() if v} for g, row in expected.items()}


@pytest.mark.parametrize("by", reports.GROUPINGS)
def test_every_grouping_sums_what_the_upstream_reported(traffic, by):
    first, last = "2026-01-01", "2026-01-02"
    report = _report(traffic.stack, by, first, last)
    assert _rows(report) == _clean(traffic.expected(by, first, last))
    total = traffic.expected("org", first, last)["acme"]
    # The traffic covers every kind of number.
    assert total["failures"] == 1 and total["requests"] == 8
    assert all(total[k] > 0 for k in ("input_tokens", "output_tokens", "cost_micro"))
    assert total["cache_write_tokens"] > 0 and total["cache_read_tokens"] > 0
    assert {k: v for k, v in report.total.as_dict().items() if k != "cost_usd" and v} == {
        k: v for k, v in total.items() if v
    }


def test_ranges_select_days(traffic):
    for first, last in (("2026-01-02", "2026-01-03"), ("2026-01-03", "2026-01-03")):
        report = _report(traffic.stack, "model", first, last)
        assert _rows(report) == _clean(traffic.expected("model", first, last))
    assert _report(traffic.stack, "user", "2025-06-01", "2025-12-31").rows == []


def test_rows_without_a_user_are_one_null_row(traffic):
    rows = _rows(_report(traffic.stack, "user", "2026-01-01", "2026-01-02"))
    assert set(rows) == {"alice", "bob", None}
    rows = _rows(_report(traffic.stack, "workspace", "2026-01-01", "2026-01-02"))
    assert set(rows) == {"cc", None}


def test_csv_and_json_exports_carry_the_same_numbers(traffic):
    report = _report(traffic.stack, "key", "2026-01-01", "2026-01-03")
    parsed = list(csv.DictReader(io.StringIO(reports.to_csv(report))))
    doc = json.loads(reports.to_json(report))
    assert len(parsed) == len(doc["rows"]) == len(report.rows) == 4
    for line, row in zip(parsed, doc["rows"], strict=True):
        assert line["key"] == row["key"]
        for column in reports.CSV_COLUMNS:
            assert line[column] == str(row[column])
    assert doc["total"]["cost_micro"] == sum(r["cost_micro"] for r in doc["rows"])
    assert doc["from"] == "2026-01-01" and doc["to"] == "2026-01-03"


def test_other_organizations_are_not_mixed_in(traffic):
    stack = traffic.stack
    secret = stack.key("other")
    stack.openai(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    report = _report(stack, "org", "2026-01-01", "2026-01-03")
    assert report.total.requests == len(traffic.made)
    other = stack.run(
        reports.usage_report(stack.store, "other", "org", date(2026, 1, 3), date(2026, 1, 3))
    )
    assert other.total.requests == 1


def test_session_report_sums_its_requests(stack_factory):
    stack = stack_factory(ORGS)
    secret = stack.key("acme", user="alice")
    header = {"x-tollway-session": "sess-42"}
    prices = stack.holder.current.prices
    cost = tokens_in = tokens_out = 0
    start = stack.clock.now_ms()
    for i in range(3):
        stack.openai(secret).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, extra_headers=header
        )
        stack.wait_settled()
        sent = stack.fake.responses[-1]
        usage = Usage(sent["input_tokens"], sent["output_tokens"])
        cost += cost_micro(prices["gpt-4o-mini"], usage)
        tokens_in += usage.input_tokens
        tokens_out += usage.output_tokens
        if i < 2:
            stack.clock.advance(seconds=30)
    # Another session and a request without one are not counted in it.
    stack.openai(secret).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers={"x-tollway-session": "other"}
    )
    stack.openai(secret).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    [s] = stack.run(reports.find_sessions(stack.store, ["acme", "other"], "sess-42"))
    assert (s.org, s.requests, s.cost) == ("acme", 3, cost)
    assert (s.input_tokens, s.output_tokens) == (tokens_in, tokens_out)
    # Wall time runs from the first request's start (its end less its upstream time: the
    # clock is injected and stands still during a request) to the last one's end.
    assert s.last_ms == start + 60_000 and start - 5_000 < s.first_ms <= start
    assert s.wall_ms == s.last_ms - s.first_ms >= 60_000
    assert s.api_ms >= 0
    assert stack.run(reports.find_sessions(stack.store, ["acme"], "nope")) == []


def test_date_range_rules():
    today = date(2026, 3, 10)
    assert reports.date_range(None, None, today) == (date(2026, 2, 9), today)
    assert reports.date_range("2026-03-01", None, today) == (date(2026, 3, 1), today)
    for bad in (("2026-03-11", "2026-03-10"), ("x", None), (None, "2026-02-30")):
        with pytest.raises(reports.ReportError):
            reports.date_range(*bad, today)
    with pytest.raises(reports.ReportError, match="400 days"):
        reports.date_range("2024-01-01", "2026-01-01", today)
