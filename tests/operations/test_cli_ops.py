"""`tollway usage`, `session` and `recommend` in every output format, against the store a
running stack uses (as `serve` and the CLI share one store); their exit codes; and the
`--help` of every command of the CLI explains every option."""

from __future__ import annotations

import argparse
import csv
import io
import json
import socket
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import yaml
from tollway.config import parse_config_text
from tollway.limits import reports
from tollway.limits.apikeys import ApiKeys
from tollway.proxy.cli.main import build_parser, main

from tests.support.stack import ENV

ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
    workspaces: {cc: {}}
    users:
      alice: {workspace: cc}
  other: {}
"""
HELLO = [{"role": "user", "content": "Say hello"}]
DAY = ["--from", "2026-01-01", "--to", "2026-01-01"]  # the stack's clock starts that day


@pytest.fixture
def stack(stack_factory, monkeypatch):
    stack = stack_factory(ORGS)
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    monkeypatch.setenv("TOLLWAY_CONFIG", str(stack.config_path))
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return stack


@pytest.fixture
def traffic(stack):
    alice = stack.key("acme", user="alice")
    service = stack.key("acme")
    session = {"x-tollway-session": "s-1"}
    stack.openai(alice).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers=session
    )
    stack.wait_settled()  # the settlement stamps the session's time: before the clock moves
    stack.clock.advance(seconds=75)
    stack.anthropic(alice).messages.create(
        model="claude-haiku-4-5", max_tokens=20, messages=HELLO, extra_headers=session
    )
    stack.openai(service).chat.completions.create(model="gpt-4o", messages=HELLO)
    stack.wait_settled()
    return stack


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def expected(stack, by: str) -> dict:
    day = date(2026, 1, 1)
    report = stack.run(reports.usage_report(stack.store, "acme", by, day, day))
    names = stack.run(ApiKeys(stack.store).names("acme"))  # rows by key carry key names
    return reports.report_dict(reports.name_keys(report, names))


@pytest.mark.parametrize("by", reports.GROUPINGS)
def test_usage_json_and_csv_match_the_report(traffic, capsys, by):
    code, out, _ = run(capsys, "usage", "--org", "acme", "--by", by, *DAY, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc == expected(traffic, by)
    assert doc["total"]["requests"] == 3 and doc["total"]["cost_micro"] > 0
    code, out, _ = run(capsys, "usage", "--org", "acme", "--by", by, *DAY, "--format", "csv")
    assert code == 0
    lines = list(csv.DictReader(io.StringIO(out)))
    assert [line[by] or None for line in lines] == [row[by] for row in doc["rows"]]
    assert [line["cost_usd"] for line in lines] == [row["cost_usd"] for row in doc["rows"]]


def test_usage_table(traffic, capsys):
    code, out, _ = run(capsys, "usage", "--org", "acme", "--by", "user", *DAY)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Usage of acme by user, 2026-01-01 to 2026-01-01 (UTC)"
    assert lines[2].split() == [
        "USER", "REQUESTS", "FAILED", "INPUT", "OUTPUT", "CACHE", "WRITE", "CACHE", "READ",
        "COST", "(USD)",
    ]  # fmt: skip
    total = expected(traffic, "user")["total"]
    assert lines[-1].split()[:2] == ["TOTAL", "3"] and lines[-1].endswith(total["cost_usd"])
    assert {line.split()[0] for line in lines[3:-1]} == {"alice", "(none)"}
    code, out, _ = run(capsys, "usage", "--org", "other", *DAY)
    assert code == 0 and "No metered requests" in out


def test_usage_errors_have_exit_codes(stack, capsys, monkeypatch):
    code, _, err = run(capsys, "usage", "--org", "ghost", *DAY)
    assert code == 2 and "unknown organization 'ghost'" in err
    code, _, err = run(capsys, "usage", "--org", "acme", "--from", "2026-02-30")
    assert code == 2 and "YYYY-MM-DD" in err
    code, _, err = run(
        capsys, "usage", "--org", "acme", "--from", "2026-02-01", "--to", "2026-01-01"
    )
    assert code == 2 and "after" in err
    with pytest.raises(SystemExit) as e:
        main(["usage", "--org", "acme", "--by", "colour"])
    assert e.value.code == 2
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}")
    code, _, err = run(capsys, "usage", "--org", "acme", *DAY)
    assert code == 3 and "store unavailable" in err
    code, _, err = run(capsys, "session", "s-1")
    assert code == 3


def test_session_table_and_json(traffic, capsys):
    code, out, _ = run(capsys, "session", "s-1", "--format", "json")
    assert code == 0
    [s] = json.loads(out)["sessions"]
    [report] = traffic.run(reports.find_sessions(traffic.store, ["acme"], "s-1"))
    assert s == report.as_dict()
    assert s["requests"] == 2 and 75_000 <= s["wall_ms"] < 76_000  # + the first's API time
    code, out, _ = run(capsys, "session", "s-1", "--org", "acme")
    assert code == 0
    lines = out.splitlines()
    started = datetime.fromtimestamp(s["first_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    assert lines[0] == f"Session s-1 (acme, started {started})"
    assert lines[1] == f"Total cost:            ${s['cost_usd']}"
    assert lines[2].startswith("Total duration (API):  ") and lines[2].endswith("s")
    assert lines[3] == "Total duration (wall): 1m 15s"
    assert lines[4] == (
        f"Usage:                 {s['input_tokens']:,} input, {s['output_tokens']:,} output, "
        f"{s['cache_read_tokens']:,} cache read, {s['cache_write_tokens']:,} cache write"
    )
    assert lines[5] == "Requests:              2"
    # Per model, like a coding assistant's /cost: one line each, most expensive first.
    assert lines[6] == "Usage by model:"
    models = {m["model"]: m for m in s["models"]}
    assert set(models) == {"gpt-4o-mini", "claude-haiku-4-5"}
    assert sum(m["cost_micro"] for m in s["models"]) == s["cost_micro"]
    for line, m in zip(lines[7:], s["models"], strict=True):
        assert line.split()[0] == m["model"] + ":"
        assert line.endswith(f"(${m['cost_usd']})")


def test_session_not_found_is_refused(traffic, capsys):
    code, _, err = run(capsys, "session", "nope")
    assert code == 1 and "no session 'nope'" in err
    code, _, err = run(capsys, "session", "s-1", "--org", "other")
    assert code == 1
    code, _, err = run(capsys, "session", "s-1", "--org", "ghost")
    assert code == 2


@pytest.mark.parametrize(
    ("users", "row", "org_tpm", "org_rpm"),
    [
        (1, "1-5", 300_000, "7"),
        (5, "1-5", 1_500_000, "35"),
        (6, "5-20", 900_000, "21"),
        (50, "20-50", 3_750_000, "87.5"),
        (200, "100-500", 4_000_000, "94"),  # the SPEC's example: 200 x 20k = 4M TPM
        (501, "500+", 7_515_000, "175.35"),
    ],
)
def test_recommend_in_every_format(capsys, users, row, org_tpm, org_rpm):
    code, out, _ = run(capsys, "recommend", "--users", str(users), "--format", "json")
    assert code == 0
    doc = json.loads(out, parse_float=Decimal)
    assert (doc["users"], doc["row"]) == (users, row)
    assert doc["recommended"]["organization"] == {"rpm": Decimal(org_rpm), "tpm": org_tpm}
    code, pasted, _ = run(capsys, "recommend", "--users", str(users), "--format", "yaml")
    assert code == 0 and pasted == doc["yaml"]
    # The YAML is a valid Tollway config with exactly those limits.
    cfg = parse_config_text(pasted, "pasted.yaml", {})
    limits = cfg.organizations["my-org"].limits
    assert (limits.tpm, limits.rpm) == (org_tpm, Decimal(org_rpm))
    # The commented per-user block is valid too once uncommented.
    uncommented = pasted.replace("    # users:", "    users:").replace("    #   ", "      ")
    per_user = yaml.safe_load(uncommented)["organizations"]["my-org"]["users"]["alice"]
    assert per_user["limits"]["tpm"] == doc["recommended"]["per_user"]["tpm"]
    code, out, _ = run(capsys, "recommend", "--users", str(users), "--org", "acme")
    assert code == 0
    assert "shared" in out and "while others are idle" in out
    assert out.rstrip().endswith(pasted.replace("my-org", "acme").rstrip())


def test_recommend_refuses_a_bad_number(capsys):
    code, _, err = run(capsys, "recommend", "--users", "0")
    assert code == 2 and ">= 1" in err
    with pytest.raises(SystemExit) as e:
        main(["recommend", "--users", "many"])
    assert e.value.code == 2


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("tollway",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_option_of_every_command_is_explained(capsys):
    undocumented = []
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not action.help:
                undocumented.append(f"{' '.join(path)} {action.option_strings or action.dest}")
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["--help"])
        assert e.value.code == 0
    capsys.readouterr()
    assert undocumented == []
