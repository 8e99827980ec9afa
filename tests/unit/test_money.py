"""The one rounding rule for money, pinned by literal tables: a request's cost is the exact
sum over its token kinds at prices per million tokens, rounded ONCE, half up, to whole
micro-USD. Every expectation below is written out by hand, never computed with
`cost_micro` or `round_micro` themselves."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from tollway.config.money import format_usd, parse_usd
from tollway.limits.prices import cost_micro
from tollway.limits.usage import Usage


@dataclass(frozen=True)
class Price:
    """Prices in micro-USD per million tokens."""

    input: int
    output: int
    cache_write: int = 0
    cache_read: int = 0


# 0.15 USD/M in, 0.60 USD/M out, 0.1875 USD/M cache writes, 0.075 USD/M cache reads.
MINI = Price(input=150_000, output=600_000, cache_write=187_500, cache_read=75_000)
# 3 USD/M in, 15 USD/M out.
LARGE = Price(input=3_000_000, output=15_000_000)


@pytest.mark.parametrize(
    ("price", "usage", "micro"),
    [
        # exact sum (10^-6 micro-USD)        -> micro-USD
        (MINI, Usage(0, 0), 0),  # 0
        (MINI, Usage(1, 0), 0),  # 150_000: 0.15 rounds down
        (MINI, Usage(3, 0), 0),  # 450_000: 0.45 rounds down
        (MINI, Usage(10, 0), 2),  # 1_500_000: 1.5, a half, rounds UP
        (MINI, Usage(0, 1), 1),  # 600_000: 0.6 rounds up
        (MINI, Usage(5, 0), 1),  # 750_000
        (MINI, Usage(1, 1), 1),  # 150_000 + 600_000 = 750_000: summed first, rounded once
        (MINI, Usage(3, 0, 0, 1), 1),  # 450_000 + 75_000 = 525_000: two roundings would give 0
        (MINI, Usage(0, 0, 8, 0), 2),  # 8 * 187_500 = 1_500_000: a half, up
        (MINI, Usage(1000, 500), 450),  # 150_000_000 + 300_000_000 = 450_000_000
        (LARGE, Usage(1, 0), 3),  # 3_000_000
        (LARGE, Usage(1, 1), 18),  # 18_000_000
        (LARGE, Usage(2000, 500), 13_500),  # 6_000_000_000 + 7_500_000_000
        (Price(input=1, output=0), Usage(499_999, 0), 0),  # 499_999: just under the half
        (Price(input=1, output=0), Usage(500_000, 0), 1),  # 500_000: the half, up
        (Price(input=1, output=0), Usage(2_500_000, 0), 3),  # 2.5: half up (not to even)
        (Price(input=1, output=0), Usage(3_499_999, 0), 3),  # 3.499999: down
    ],
)
def test_a_cost_is_summed_exactly_then_rounded_half_up_once(
    price: Price, usage: Usage, micro: int
) -> None:
    assert cost_micro(price, usage) == micro


@pytest.mark.parametrize(
    ("text", "micro", "shown"),
    [
        ("0", 0, "0.00"),
        ("0.000001", 1, "0.000001"),
        ("0.1", 100_000, "0.10"),
        ("0.00015", 150, "0.00015"),
        ("10.00", 10_000_000, "10.00"),
        ("12.345678", 12_345_678, "12.345678"),
        ("1_000", 1_000_000_000, "1000.00"),
    ],
)
def test_usd_text_is_parsed_exactly_to_micro_usd(text: str, micro: int, shown: str) -> None:
    assert parse_usd(text) == micro
    assert format_usd(micro) == shown


def test_a_seventh_decimal_is_refused_never_rounded() -> None:
    with pytest.raises(ValueError, match="more than 6 decimal places"):
        parse_usd("0.0000005")
