"""The price book: lookups (exact, alias, pattern, default), versions by date, every price
variant (tiers, long context, 1-hour cache writes, tool fees), the rounding rule, and the
loader's refusal of a price it cannot count exactly (also through `tollway check-config`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tollway.config import parse_config_text
from tollway.limits.prices import cost_micro, round_micro
from tollway.limits.usage import Usage, within_ceiling

FIXTURES = Path(__file__).resolve().parents[1] / "support" / "config_fixtures"
EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"

BOOK = """
prices:
  gpt-4o-mini: {input: 0.15, output: 0.60, cache_read: 0.075}
  gpt-4o-mini-*: {input: 0.30, output: 1.20}
  gpt-*: {input: 9.00, output: 9.00}
  "*": {input: 50.00, output: 50.00}
  claude-sonnet-4-*:
    input: 3.00
    output: 15.00
    cache_write: 3.75
    cache_write_1h: 6.00
    cache_read: 0.30
    long_context: {above: 200000, input: 6.00, output: 22.50, cache_write: 7.50,
                   cache_write_1h: 12.00, cache_read: 0.60}
    tiers:
      batch: {input: 1.50, output: 7.50, cache_write: 1.875, cache_read: 0.15}
      priority: {input: 6.00, output: 30.00}
    tools: {web_search: 0.01, web_fetch: 0.000001}
  dated:
    input: 1.00
    output: 2.00
    since: 2026-01-01
    changes:
      - {since: "2026-03-01T12:00:00Z", input: 0.50, output: 1.00}
price_aliases:
  sonnet: claude-sonnet-4-*
"""
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def book():
    return parse_config_text(BOOK, env={})


def test_exact_name_wins_then_alias_then_most_specific_pattern(book) -> None:
    pb = book.price_book
    assert pb.entry_name("gpt-4o-mini") == "gpt-4o-mini"
    assert pb.entry_name("gpt-4o-mini-2024-07-18") == "gpt-4o-mini-*"
    assert pb.entry_name("gpt-4.1") == "gpt-*"
    assert pb.entry_name("sonnet") == "claude-sonnet-4-*"
    assert pb.entry_name("claude-sonnet-4-6") == "claude-sonnet-4-*"
    assert pb.entry_name("llama-3") == "*"  # the default
    assert pb.find("gpt-4o-mini", T0).input == 150_000


def test_no_default_means_no_price() -> None:
    cfg = parse_config_text("prices:\n  claude-opus-4-*: {input: 5, output: 25}\n", env={})
    assert cfg.price_book.find("claude-opus-4-8", T0).output == 25_000_000
    assert cfg.price_book.find("claude-opus-5", T0) is None
    assert cfg.price_book.find("claude-opus-4", T0) is None  # the pattern needs its "-"


def test_the_price_in_force_at_an_instant(book) -> None:
    pb = book.price_book
    assert pb.find("dated", T0 - 1) is None  # before the entry's own since
    assert pb.find("dated", T0).input == 1_000_000
    change = T0 + (59 * 86_400 + 12 * 3600) * 1000  # 2026-03-01T12:00:00Z
    assert pb.find("dated", change - 1).input == 1_000_000
    assert pb.find("dated", change).input == 500_000


def test_every_token_kind_and_tool_is_priced(book) -> None:
    price = book.price_book.find("claude-sonnet-4-6", T0)
    usage = Usage(
        input_tokens=1000,
        output_tokens=2000,
        cache_write_tokens=3000,
        cache_write_1h_tokens=1000,
        cache_read_tokens=4000,
        reasoning_tokens=500,  # part of the output: not billed twice
        web_search_requests=3,
        web_fetch_requests=1,
    )
    # micro-USD: tokens * (USD per M) each, 5-minute writes = 3000 - 1000 at 3.75,
    # 1-hour writes at 6.00; 3 searches at 0.01 and one fetch at 0.000001.
    tokens = 1000 * 3 + 2000 * 15 + 2000 * 3.75 + 1000 * 6 + 4000 * 0.30
    assert tokens == 47_700
    assert cost_micro(price, usage) == 47_700 + 3 * 10_000 + 1


def test_long_context_prices_every_token_above_the_threshold(book) -> None:
    price = book.price_book.find("claude-sonnet-4-6", T0)
    at = Usage(input_tokens=150_000, cache_read_tokens=50_000, output_tokens=1000)
    above = Usage(input_tokens=150_001, cache_read_tokens=50_000, output_tokens=1000)
    assert cost_micro(price, at) == 150_000 * 3 + 50_000 * 3 // 10 + 1000 * 15
    assert cost_micro(price, above) == 150_001 * 6 + 50_000 * 6 // 10 + round(1000 * 22.5)


def test_service_tiers(book) -> None:
    price = book.price_book.find("claude-sonnet-4-6", T0)
    n = 100_000  # input and output tokens each, below the long-context threshold
    for tier in ("standard", "default", "auto", None):
        assert cost_micro(price, Usage(n, n, service_tier=tier)) == 1_800_000
    assert cost_micro(price, Usage(n, n, service_tier="batch")) == 900_000
    assert cost_micro(price, Usage(n, n, service_tier="priority")) == 3_600_000
    # a tier the entry does not price: the base prices
    assert cost_micro(price, Usage(n, n, service_tier="flex")) == 1_800_000


def test_cache_write_1h_defaults_to_the_cache_write_price() -> None:
    cfg = parse_config_text("prices:\n  m: {input: 2, output: 4, cache_write: 2.5}\n", env={})
    price = cfg.prices["m"]
    assert (price.cache_write, price.cache_write_1h, price.cache_read) == (2_500_000,) * 2 + (
        2_000_000,
    )


@pytest.mark.parametrize(
    ("exact", "micro"),
    [(0, 0), (499_999, 0), (500_000, 1), (1_499_999, 1), (1_500_000, 2), (2_500_000, 3)],
)
def test_rounding_is_half_up_once(exact: int, micro: int) -> None:
    assert round_micro(exact) == micro


def test_absurd_usage_is_charged_the_ceiling_and_named() -> None:
    usage = Usage(input_tokens=50_000_000, output_tokens=10, web_search_requests=5_000)
    fixed, flagged = within_ceiling(usage, 10_000_000, 1000)
    assert fixed == Usage(input_tokens=10_000_000, output_tokens=10, web_search_requests=1000)
    assert flagged == ["input_tokens", "web_search_requests"]
    assert within_ceiling(Usage(5, 5), 10, 10) == (Usage(5, 5), [])


def test_loader_refuses_a_price_it_cannot_count_exactly() -> None:
    path = FIXTURES / "absurd_price.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "tollway.proxy.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        f"{path}:3: prices.gpt-4o-mini.output: the largest single-request cost at this price, "
        "100000000000000004.50 USD (every count at metering.max_tokens_per_request, every tool at "
        "metering.max_tool_requests), is above 2^53 micro-USD: it cannot be counted exactly"
    )


def test_a_lower_ceiling_admits_a_higher_price() -> None:
    text = "prices:\n  m: {input: 300000000, output: 300000000}\n"
    with pytest.raises(Exception, match="cannot be counted exactly"):
        parse_config_text(text, env={})
    parse_config_text(text + "metering: {max_tokens_per_request: 1000000}\n", env={})


def test_price_dates_and_aliases_are_checked() -> None:
    path = FIXTURES / "bad_price_dates.yaml"
    with pytest.raises(Exception) as caught:
        parse_config_text(path.read_text(), str(path), env={})
    assert caught.value.errors == [
        f"{path}:7: prices.gpt-5.changes[0].since: must be later than the price before it",
    ]
    text = "prices:\n  gpt-5: {input: 1, output: 2}\nprice_aliases:\n  gpt-latest: gpt-6\n"
    with pytest.raises(Exception) as caught:
        parse_config_text(text, env={})
    assert caught.value.errors == [
        "<string>:4: price_aliases.gpt-latest: unknown price entry 'gpt-6' (known: gpt-5)"
    ]


@pytest.mark.parametrize(
    "model",
    [
        "claude-opus-4-8",
        "claude-opus-5",
        "claude-sonnet-4-6",
        "claude-sonnet-5-5",
        "claude-haiku-4-5-20251001",
        "claude-haiku-5-5",
    ],
)
def test_examples_price_the_models_claude_code_uses(model: str) -> None:
    env = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "y"}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        cfg = parse_config_text(path.read_text(), str(path), env=env)
        assert cfg.price_book.find(model, T0) is not None, (path.name, model)
