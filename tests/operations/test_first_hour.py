"""An operator's first hour (issue 15): the commands a new operator tries first behave as
documented. `keys list` of an organization without keys, an unknown organization,
`recommend --config`, `caps show --org-wide`, `check-config` without the upstream keys'
variables, the README's configuration reference, `--version`, and `tollway sessions`;
then a session's wall time measured through a real `tollway serve` on the system clock."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import openai
import pytest
from tollway.limits import reports
from tollway.proxy.cli.keys import LIST_COLUMNS
from tollway.proxy.cli.main import main

from tests.support.faultkit import ProxyProcess, config_yaml, wait_for
from tests.support.stack import ENV

README = Path(__file__).resolve().parents[2] / "README.md"
ORGS = """
organizations:
  acme:
    spend_caps: {monthly: 500.00}
    workspaces: {cc: {spend_caps: {monthly: 200.00}}}
    seat_tiers: {standard: {included: 20.00, monthly_cap: 50.00}}
    users:
      alice: {seat: standard, workspace: cc}
  empty: {}
"""
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def stack(stack_factory, monkeypatch):
    stack = stack_factory(ORGS)
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    monkeypatch.setenv("TOLLWAY_CONFIG", str(stack.config_path))
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return stack


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_list_of_an_organization_without_keys(stack, capsys):
    code, out, err = run(capsys, "keys", "list", "--org", "empty")
    assert (code, err) == (0, "")
    assert out.split() == [c.upper() for c in LIST_COLUMNS]
    code, out, _ = run(capsys, "keys", "list", "--org", "empty", "--format", "json")
    assert (code, json.loads(out)) == (0, [])


def test_keys_list_refuses_an_unknown_organization(stack, capsys):
    code, out, err = run(capsys, "keys", "list", "--org", "ghost")
    assert (code, out) == (2, "")
    assert err == "tollway: unknown organization 'ghost' (known: acme, empty)\n"


def test_recommend_takes_config_like_every_command(stack, capsys):
    code, out, _ = run(capsys, "recommend", "--users", "10", "--config", str(stack.config_path))
    assert code == 0 and out.startswith("Recommended limits for 10 users")


def test_caps_show_of_one_level(stack, capsys):
    code, out, _ = run(capsys, "caps", "show", "--org", "acme", "--org-wide", "--format", "json")
    assert code == 0
    assert json.loads(out) == [
        {
            "level": "organization",
            "name": "-",
            "period": "month",
            "cap": {"usd": "500.00", "micro": 500_000_000},
            "source": "config",
        }
    ]
    code, out, _ = run(capsys, "caps", "show", "--org", "acme", "--workspace", "cc")
    assert code == 0
    assert out.splitlines()[1].split() == ["workspace", "cc", "month", "200.00", "config"]
    code, out, _ = run(capsys, "caps", "show", "--org", "acme")
    assert code == 0 and len(out.splitlines()) == 5  # header, org, workspace, tier, user
    code, _, err = run(capsys, "caps", "show", "--org", "acme", "--user", "zed")
    assert code == 2 and "unknown user 'zed'" in err


def test_check_config_needs_no_upstream_key(stack, capsys, monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name)
    code, out, _ = run(capsys, "check-config", str(stack.config_path))
    assert (code, out) == (0, f"{stack.config_path}: ok\n")
    # serve still needs them: it is the one command that talks to the upstreams.
    with pytest.raises(SystemExit) as refused:
        main(["serve", "--config", str(stack.config_path)])
    assert refused.value.code == 2
    assert "environment variable OPENAI_API_KEY is not set" in capsys.readouterr().err


def readme_reference_block() -> str:
    """The YAML block of the README's "Configuration reference" section."""
    text = README.read_text()
    section = text[text.index("## Configuration reference") :]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def test_the_readme_configuration_reference_passes_check_config(tmp_path, capsys, monkeypatch):
    for name in (*ENV, "PAY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "reference.yaml"
    path.write_text(readme_reference_block())
    code, out, err = run(capsys, "check-config", str(path))
    assert (code, out, err) == (0, f"{path}: ok\n", "")


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"tollway {version('tollway')}\n"


def test_sessions_lists_an_organizations_sessions_newest_first(stack, capsys):
    alice = stack.key("acme", user="alice")
    for session, model in (("s-old", "gpt-4o-mini"), ("s-new", "gpt-4o")):
        stack.openai(alice).chat.completions.create(
            model=model, messages=HELLO, extra_headers={"x-tollway-session": session}
        )
        stack.wait_settled()
        stack.clock.advance(seconds=60)
    stack.openai(alice).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    stack.wait_settled()
    code, out, _ = run(capsys, "sessions", "--org", "acme", "--format", "json")
    assert code == 0
    listed = json.loads(out)["sessions"]
    assert [s["session_id"] for s in listed] == ["s-new", "s-old"]
    assert [[m["model"] for m in s["models"]] for s in listed] == [["gpt-4o"], ["gpt-4o-mini"]]
    for s in listed:
        [full] = stack.run(reports.find_sessions(stack.store, ["acme"], s["session_id"]))
        assert s == full.as_dict()
    code, out, _ = run(capsys, "sessions", "--org", "acme", "--limit", "1")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].split()[:3] == ["SESSION", "LAST", "REQUEST"]
    assert lines[1].split()[0] == "s-new" and lines[1].endswith(listed[0]["cost_usd"])
    code, out, _ = run(capsys, "sessions", "--org", "empty")
    assert (code, out) == (0, "empty: no sessions\n")
    code, _, err = run(capsys, "sessions", "--org", "ghost")
    assert code == 2 and "unknown organization 'ghost'" in err


@pytest.mark.slow
def test_session_wall_time_covers_its_requests_on_a_real_clock(stack, tmp_path):
    """Two sequential requests of 0.6 s each through a real `tollway serve` (system clock):
    wall time at least their API time; a one-request session's wall time is that request's."""
    path = tmp_path / "served.yaml"
    path.write_text(config_yaml(stack.redis_url, stack.prefix, stack.fake_url, ORGS))
    proc = ProxyProcess(path, tmp_path / "data")
    try:
        proc.wait_ready(timeout=30)
        stack.fake.behavior.delay_first_byte = 0.6
        key = stack.key("acme", user="alice")
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0)

        def ask(session: str) -> None:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, extra_headers={"x-tollway-session": session}
            )

        def settled(session: str, n: int) -> reports.SessionReport:
            found: list[reports.SessionReport] = []

            def done() -> bool:
                found[:] = stack.run(reports.find_sessions(stack.store, ["acme"], session))
                return bool(found) and found[0].requests == n

            wait_for(done, 10, f"{n} settlements of session {session}")
            return found[0]

        started = time.time()
        ask("one")
        one = settled("one", 1)
        assert 600 <= one.api_ms <= one.wall_ms <= (time.time() - started) * 1000 + 50
        ask("two")
        ask("two")
        two = settled("two", 2)
        assert two.api_ms >= 1200
        assert two.wall_ms >= two.api_ms
        banner = [x for x in proc.log_path.read_text().splitlines() if x.startswith("Tollway ")]
        assert len(banner) == 1 and f"listening on {proc.url}; config {path}; " in banner[0]
    finally:
        proc.stop()


def test_the_start_up_line_names_address_config_store_and_workers(stack):
    """What `serve` prints once it listens (the human line of `make serve`): a store URL
    never shows its password; the embedded Valkey shows its data directory."""
    from tollway.limits.embedded import EmbeddedValkey
    from tollway.proxy.runtime.locate import StoreHandle, version
    from tollway.proxy.runtime.serve import startup_line

    cfg = stack.holder.current
    remote = StoreHandle("rediss://tollway:s3cret@redis.internal:6380/0", None)
    line = startup_line(cfg, remote, "0.0.0.0", 8080, 4, ("127.0.0.1", 0))
    assert line == (
        f"Tollway {version()} listening on http://0.0.0.0:8080; config {cfg.source}; "
        "store rediss://***@redis.internal:6380/0; 4 workers; no metrics listener"
    )
    embedded = StoreHandle("redis://127.0.0.1:7000", EmbeddedValkey("/srv/tollway/data"))
    line = startup_line(cfg, embedded, "127.0.0.1", 8080, 1, ("127.0.0.1", 9464))
    assert "; store embedded Valkey, data in /srv/tollway/data (redis://127.0.0.1:7000); " in line
    assert line.endswith("; 1 worker; metrics on http://127.0.0.1:9464/metrics")
