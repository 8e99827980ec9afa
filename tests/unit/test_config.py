"""config/: YAML -> typed, frozen Config; exact error messages; money; schema; hot reload."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError
from tollway.config import Config, ConfigError, Organization, load_config, parse_config_text
from tollway.config.reload import ConfigHolder, watch
from tollway.config.schema import json_schema
from tollway.limits.money import MICRO, format_usd, parse_usd
from tollway.limits.seats import user_cap

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "examples"
FIXTURES = Path(__file__).resolve().parents[1] / "support" / "config_fixtures"
ENV = {"OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-ant-test"}


def errors_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env if env is not None else {})
    return caught.value.errors


# ---- examples ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads(path: Path) -> None:
    config = load_config(path, env=ENV)
    assert config.source == str(path)
    assert config.organizations
    assert path.read_text().startswith("# yaml-language-server: $schema=../tollway.schema.json")


def test_spec_example_values() -> None:
    config = load_config(EXAMPLES / "tollway.yaml", env=ENV)
    assert config.upstreams["openai"].api_key.get_secret_value() == "sk-test-openai"
    price = config.prices["gpt-4o-mini"]
    assert (price.input, price.output, price.cache_read) == (150_000, 600_000, 75_000)
    assert price.cache_write == price.input  # absent -> the input price
    acme = config.organizations["acme"]
    assert acme.limits.rpm == Decimal(1000) and acme.limits.tpm == 2_000_000
    assert acme.limits.input_tpm is None
    assert acme.billing.auto_reload is not None
    assert acme.billing.auto_reload.threshold == 10 * MICRO
    assert acme.spend_caps.monthly == 500 * MICRO
    assert acme.seat_tiers["premium"].monthly_cap is None
    assert user_cap(acme, "acme", "alice", {})[0] == 300 * MICRO
    assert acme.user_included("alice") == 100 * MICRO


def test_seats_example_cap_modes() -> None:
    org = load_config(EXAMPLES / "seats.yaml", env=ENV).organizations["globex"]
    # The effective cap as admission sees it: the one precedence rule (plans.cap_plans).
    modes = {
        name: (user.cap_mode, user_cap(org, "globex", name, {})[0])
        for name, user in org.users.items()
    }
    assert modes == {
        "carol": ("inherit", 200 * MICRO),  # premium tier's cap
        "dave": ("unlimited", None),
        "erin": ("amount", 120 * MICRO),
        "frank": ("inherit", 50 * MICRO),
    }
    assert org.users["carol"].limits.per_minute("rpm") == Decimal("1.75")
    assert org.users["carol"].limits.milli_per_minute("rpm") == 1750
    assert org.extra_usage.users == ("carol", "dave", "erin")


# ---- one fixture per error kind, exact messages ------------------------------------------

EXPECTED = {
    "unknown_key": [
        "4: organizations.acme.limts: unknown key (expected one of: billing, "
        "client_workspaces, extra_usage, limits, model_caps, model_limits, seat_tiers, "
        "spend_caps, users, workspaces)"
    ],
    "wrong_type": ["4: server.port: expected an integer, got 'eighty'"],
    "negative_limit": ["6: organizations.acme.limits.tpm: must not be negative"],
    "unknown_seat_tier": [
        "8: organizations.acme.users.alice.seat: unknown seat tier 'gold' "
        "(known: premium, standard)"
    ],
    "unknown_workspace": [
        "7: organizations.acme.users.alice.workspace: unknown workspace 'research' "
        "(known: platform)"
    ],
    "missing_env": [
        "5: upstreams.openai.api_key_env: environment variable TOLLWAY_TEST_UNSET_KEY is not set"
    ],
    "missing_key": ["3: upstreams.openai.base_url: missing required key"],
    "absurd_price": [
        "3: prices.gpt-4o-mini.output: the largest single-request cost at this price, "
        "100000000000000004.50 USD (every count at metering.max_tokens_per_request, every tool "
        "at metering.max_tool_requests), is above 2^53 micro-USD: it cannot be counted exactly"
    ],
    "bad_price_dates": ["7: prices.gpt-5.changes[0].since: must be later than the price before it"],
    "too_many_decimals": ["3: prices.gpt-4o-mini.output: more than 6 decimal places"],
    "syntax_error": ["4: syntax error: mapping values are not allowed here"],
    "duplicate_key": ["7: organizations.acme.users.alice: duplicate key (first defined on line 5)"],
    "duplicate_after_nfc": [
        "5: organizations.Jos\u00e9-labs: duplicate key: 'Jose\u0301-labs' and 'Jos\u00e9-labs' "
        "are the same name after Unicode normalization (NFC) (first defined on line 4)"
    ],
    "bad_name": [
        "5: organizations.acme.workspaces.team:red: invalid name 'team:red': must not contain "
        "'{', '}', ':', whitespace or control characters"
    ],
    "unknown_extra_usage_user": [
        "6: organizations.acme.extra_usage.users[1]: unknown user 'bob' (known: alice)"
    ],
    "auto_reload_order": [
        "8: organizations.acme.billing.auto_reload.target: must be greater than threshold (50.00)"
    ],
    "bad_timezone": ["3: server.timezone: unknown time zone 'Europe/Atlantis'"],
    "empty": ["1: (root): the config file is empty"],
    "top_level_list": ["2: (root): expected a mapping at the top level"],
    "infinite_number": ["4: organizations.acme.spend_caps.monthly: unsupported number '.inf'"],
    "many_errors": [
        "3: store.on_unavailable: expected 'closed' or 'open', got 'shut'",
        "4: store.redis_url: URL scheme must be one of: redis, rediss, unix, redis+sentinel, "
        "redis+cluster",
        "6: server.port: must be between 1 and 65535",
        "9: organizations.acme.extra_usage.enabled: expected true or false, got 'yes'",
        "11: organizations.acme.users.alice.monthly_cap: not an amount in USD: 'lots'",
    ],
}


def test_every_fixture_has_an_expectation() -> None:
    assert {p.stem for p in FIXTURES.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_error_message(name: str) -> None:
    path = FIXTURES / f"{name}.yaml"
    assert errors_of(path) == [f"{path}:{tail}" for tail in EXPECTED[name]]


def test_config_error_str_joins_all_errors() -> None:
    path = FIXTURES / "many_errors.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value) == "\n".join(caught.value.errors)
    assert len(caught.value.errors) == 5


def test_unreadable_file() -> None:
    path = FIXTURES / "no_such_file.yaml"
    assert errors_of(path) == [f"{path}:1: (root): cannot read the file: No such file or directory"]


def test_secret_never_shown() -> None:
    text = "upstreams:\n  openai: {base_url: 'https://x.test/v1/', api_key_env: K, timeout: 0}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, env={"K": "sk-very-secret"})
    assert caught.value.errors == ["<string>:2: upstreams.openai.timeout: must be greater than 0"]
    config = parse_config_text(
        text.replace("timeout: 0", "timeout: 5"), env={"K": "sk-very-secret"}
    )
    upstream = config.upstreams["openai"]
    assert upstream.base_url == "https://x.test/v1"
    assert "sk-very-secret" not in repr(config) + str(config) + config.model_dump_json()
    assert upstream.api_key.get_secret_value() == "sk-very-secret"
    assert config.source is None


def test_secret_in_yaml_is_an_unknown_key() -> None:
    text = "upstreams:\n  openai: {base_url: 'https://x', api_key_env: K, api_key: sk-leak}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, env={"K": "k"})
    assert caught.value.errors == [
        "<string>:2: upstreams.openai.api_key: unknown key "
        "(expected one of: api_key_env, base_url, timeout)"
    ]


def test_names_and_keys_are_strings() -> None:
    text = "organizations:\n  acme:\n    users: {no: {}, 2024: {}}\n"
    users = parse_config_text(text, env={}).organizations["acme"].users
    assert list(users) == ["no", "2024"]


def test_merge_keys_and_anchors() -> None:
    text = (
        "organizations:\n"
        "  a: {limits: &base {rpm: 5, tpm: 100}}\n"
        "  b:\n"
        "    limits:\n"
        "      <<: *base\n"
        "      tpm: 200\n"
    )
    orgs = parse_config_text(text, env={}).organizations
    assert (orgs["b"].limits.rpm, orgs["b"].limits.tpm) == (Decimal(5), 200)


def test_redis_url_schemes_accepted() -> None:
    for url in (
        "redis://h:6379/0",
        "rediss://h",
        "unix:///tmp/r.sock",
        "redis+sentinel://h",
        "redis+cluster://h",
    ):
        assert parse_config_text(f"store: {{redis_url: '{url}'}}\n").store.redis_url == url


# ---- money -------------------------------------------------------------------------------


def test_money_is_exact() -> None:
    assert parse_usd("0.1") + parse_usd("0.2") == parse_usd("0.3") == 300_000
    assert parse_usd(Decimal("19.999999")) == 19_999_999
    assert parse_usd("1_000_000.000001") == 1_000_000_000_001
    assert parse_usd(Decimal("1000000.000001")) == 1_000_000_000_001
    assert parse_usd(7) == 7 * MICRO
    assert parse_usd("-1.5", allow_negative=True) == -1_500_000
    for bad in ("0.0000001", Decimal("0.0000001"), "1.5000000"):
        with pytest.raises(ValueError, match="more than 6 decimal places"):
            parse_usd(bad)
    for bad in ("-1", Decimal("-0.5"), -3):
        with pytest.raises(ValueError, match="must not be negative"):
            parse_usd(bad)
    for bad in (0.5, True, "1e3", "abc", "", Decimal("NaN")):
        with pytest.raises(ValueError):
            parse_usd(bad)  # type: ignore[arg-type]


def test_format_usd() -> None:
    assert format_usd(10 * MICRO) == "10.00"
    assert format_usd(12_345_678) == "12.345678"
    assert format_usd(150) == "0.00015"
    assert format_usd(-500_000) == "-0.50"
    assert format_usd(0) == "0.00"
    for micro in (1, 999_999, 123_456_789_012, -42):
        assert parse_usd(format_usd(micro), allow_negative=True) == micro


def test_yaml_money_never_goes_through_float() -> None:
    # 0.1 + 0.2-style values and 16+ significant digits would be off by one through float.
    text = (
        "prices:\n"
        "  a: {input: 0.1, output: 0.2, cache_write: 19.999999, cache_read: 1_000_000.000001}\n"
        "  b: {input: 9007199254.740993, output: '10.00'}\n"
        "organizations:\n  o: {spend_caps: {monthly: 0.3}}\n"
        # b's largest request must stay below 2^53 micro-USD (tollway.config.pricing).
        "metering: {max_tokens_per_request: 100}\n"
    )
    config = parse_config_text(text, env={})
    a = config.prices["a"]
    assert (a.input, a.output, a.cache_write, a.cache_read) == (
        100_000,
        200_000,
        19_999_999,
        1_000_000_000_001,
    )
    assert a.input + a.output == config.organizations["o"].spend_caps.monthly
    assert config.prices["b"].input == 9_007_199_254_740_993
    assert config.prices["b"].output == 10 * MICRO
    with pytest.raises(ConfigError) as caught:
        parse_config_text("prices:\n  a: {input: 0.0000001, output: 1}\n", env={})
    assert caught.value.errors == ["<string>:2: prices.a.input: more than 6 decimal places"]


def test_fractional_rpm() -> None:
    limits = (
        parse_config_text("organizations:\n  o: {limits: {rpm: 0.37}}\n").organizations["o"].limits
    )
    assert limits.rpm == Decimal("0.37") and limits.per_minute("tpm") is None
    with pytest.raises(ConfigError, match=r"limits\.rpm: more than 3 decimal places"):
        parse_config_text("organizations:\n  o: {limits: {rpm: 0.3745}}\n")
    with pytest.raises(ConfigError, match=r"limits\.tpm: expected an integer, got 1.5"):
        parse_config_text("organizations:\n  o: {limits: {tpm: 1.5}}\n")


# ---- immutability ------------------------------------------------------------------------


def test_config_is_immutable() -> None:
    config = load_config(EXAMPLES / "tollway.yaml", env=ENV)
    with pytest.raises(ValidationError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.organizations["acme"].limits.tpm = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.organizations["evil"] = Organization()  # type: ignore[index]
    with pytest.raises(TypeError):
        del config.prices["gpt-4o-mini"]  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        config.source = "elsewhere.yaml"  # type: ignore[misc]
    assert isinstance(config.server.session_headers, tuple)


# ---- JSON Schema -------------------------------------------------------------------------


def test_committed_json_schema_is_up_to_date() -> None:
    committed = json.loads((ROOT / "config" / "tollway.schema.json").read_text())
    assert committed == json_schema(), (
        "config/tollway.schema.json is stale; regenerate it with: "
        "python -m tollway.config.schema > config/tollway.schema.json"
    )


def test_schema_shape() -> None:
    schema = json_schema()
    upstream = schema["$defs"]["Upstream"]["properties"]
    assert set(upstream) == {"base_url", "api_key_env", "timeout"}  # no secrets
    assert "source" not in schema["properties"]
    threshold = schema["$defs"]["AutoReload"]["properties"]["threshold"]
    assert {t["type"] for t in threshold["anyOf"]} == {"number", "string"}


def test_schema_module_runs_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tollway.config.schema"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == json_schema()
    assert done.stderr == ""


# ---- hot reload --------------------------------------------------------------------------

GOOD = "organizations:\n  acme: {limits: {rpm: 10}}\n"


def test_reload_swaps_on_good_edit(tmp_path: Path) -> None:
    path = tmp_path / "tollway.yaml"
    path.write_text(GOOD)
    holder = ConfigHolder(load_config(path, env={}), env={})
    seen: list[Config] = []
    holder.add_listener(seen.append)
    old = holder.current
    path.write_text(GOOD.replace("rpm: 10", "rpm: 20"))
    assert holder.reload() is True
    assert holder.current is not old and seen == [holder.current]
    assert holder.current.organizations["acme"].limits.rpm == Decimal(20)
    assert (holder.reload_count, holder.failure_count, holder.last_error) == (1, 0, None)
    assert old.organizations["acme"].limits.rpm == Decimal(10)  # holders of old are unaffected


def test_reload_keeps_old_config_on_bad_edit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tollway.yaml"
    path.write_text(GOOD)
    holder = ConfigHolder(load_config(path, env={}), env={})
    failures: list[str] = []
    holder.add_failure_listener(failures.append)
    old = holder.current
    path.write_text(GOOD.replace("rpm: 10", "rpm: -1"))
    with caplog.at_level(logging.ERROR, logger="tollway.config"):
        assert holder.reload() is False
    expected = f"{path}:2: organizations.acme.limits.rpm: must not be negative"
    assert holder.current is old
    assert holder.last_error == expected and failures == [expected]
    assert (holder.reload_count, holder.failure_count) == (0, 1)
    assert expected in caplog.text


def test_listener_exception_does_not_undo_swap(tmp_path: Path) -> None:
    path = tmp_path / "tollway.yaml"
    path.write_text(GOOD)
    holder = ConfigHolder(load_config(path, env={}), env={})

    def broken(config: Config) -> None:
        raise RuntimeError("listener bug")

    holder.add_listener(broken)
    path.write_text(GOOD.replace("rpm: 10", "rpm: 30"))
    assert holder.reload() is True
    assert holder.current.organizations["acme"].limits.rpm == Decimal(30)


async def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "watch() did not react in time"
        await asyncio.sleep(0.01)


async def test_watch_picks_up_changes(tmp_path: Path) -> None:
    # watch() polls the file's mtime and size, which only real time and a real file change,
    # so this test uses real time: a short interval and a bounded wait (5 s, ~0.1 s usually).
    path = tmp_path / "tollway.yaml"
    path.write_text(GOOD)
    holder = ConfigHolder(load_config(path, env={}), env={})
    task = asyncio.create_task(watch(holder, interval=0.02))
    try:
        await asyncio.sleep(0.05)
        path.write_text(GOOD.replace("rpm: 10", "rpm: 40"))
        await _wait_for(lambda: holder.reload_count == 1, timeout=5)
        assert holder.current.organizations["acme"].limits.rpm == Decimal(40)

        # An atomic replace (new inode) with a bad config is rejected and kept out.
        tmp = tmp_path / "new.yaml"
        tmp.write_text("organizations:\n  acme: {limts: {}}\n")
        os.replace(tmp, path)
        await _wait_for(lambda: holder.failure_count == 1, timeout=5)
        assert holder.current.organizations["acme"].limits.rpm == Decimal(40)
        assert holder.last_error is not None and "acme.limts: unknown key" in holder.last_error
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_model_names_may_contain_colons_but_not_pipes():
    text = """
upstreams:
  openai: {base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}
prices:
  "ft:gpt-4o-mini:acme::abc123": {input: 0.30, output: 1.20}
organizations:
  a: {model_limits: {"ft:gpt-4o-mini:acme::abc123": {rpm: 3}}}
"""
    cfg = parse_config_text(text, "models.yaml", {"OPENAI_API_KEY": "x"})
    assert cfg.prices["ft:gpt-4o-mini:acme::abc123"].input == 300_000
    with pytest.raises(ConfigError) as e:
        parse_config_text(text.replace("::abc123", "|x"), "models.yaml", {"OPENAI_API_KEY": "x"})
    assert "must not contain '{', '}', '|'" in str(e.value)


def test_store_only_commands_may_load_without_upstream_secrets(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "upstreams:\n  openai: {base_url: 'http://127.0.0.1:9', api_key_env: TW_UNSET_KEY}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    assert "environment variable TW_UNSET_KEY is not set" in str(e.value)
    cfg = load_config(path, {}, secrets=False)
    assert cfg.upstreams["openai"].api_key.get_secret_value() == ""


def test_names_are_nfc_everywhere() -> None:
    """A name typed with a combining accent is the same name as the precomposed one: the
    organization, a user and the seat tier the user references all meet in NFC."""
    nfd, nfc = "cafe\u0301", "caf\u00e9"
    text = (
        "organizations:\n"
        f"  {nfd}:\n"
        f"    seat_tiers: {{{nfc}: {{included: 1}}}}\n"
        f"    users: {{{nfd}-user: {{seat: {nfd}}}}}\n"
    )
    cfg = parse_config_text(text, "names.yaml", {})
    assert list(cfg.organizations) == [nfc]
    org = cfg.organizations[nfc]
    assert list(org.users) == [nfc + "-user"] and org.users[nfc + "-user"].seat == nfc
