"""Exact money parsing and formatting: USD text <-> integer micro-USD.

Tollway keeps every amount as an integer number of micro-USD (``MICRO`` per dollar), in
Python and in Lua alike. Amounts enter as text ("10.00", "0.000150", "1_000") or as the
``Decimal``/``int`` a YAML loader produced, and never pass through a binary float:
``parse_usd("0.1") + parse_usd("0.2") == parse_usd("0.3")`` holds exactly.

Contract of ``parse_usd``:

- accepts ``str``, ``int`` and ``Decimal``; ``float`` and ``bool`` are refused (a float has
  already lost the exact value the operator wrote);
- at most 6 decimal places, counted as written ("1.5000000" is refused too): more is a
  ``ValueError("more than 6 decimal places")``, never a silent rounding;
- negative amounts only with ``allow_negative=True``;
- NaN, infinities and malformed text are ``ValueError``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MICRO = 1_000_000
DECIMALS = 6

# Digits with single underscores between them (as Python and YAML write "1_000"), an
# optional fraction; an optional sign. No exponent: USD amounts are written out.
_USD_TEXT = re.compile(r"([+-]?)(\d+(?:_\d+)*)(?:\.(\d+(?:_\d+)*)?)?")


def parse_usd(text: str | int | Decimal, *, allow_negative: bool = False) -> int:
    """Return the exact amount in integer micro-USD; raise ``ValueError`` when it is not
    a valid amount (see the module docstring)."""
    if isinstance(text, bool) or not isinstance(text, str | int | Decimal):
        raise ValueError(f"expected an amount in USD, got {type(text).__name__}")
    if isinstance(text, int):
        micro = text * MICRO
    elif isinstance(text, Decimal):
        micro = _decimal_to_micro(text)
    else:
        micro = _text_to_micro(text)
    if micro < 0 and not allow_negative:
        raise ValueError("must not be negative")
    return micro


def _text_to_micro(text: str) -> int:
    match = _USD_TEXT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an amount in USD: {text!r}")
    sign, whole, fraction = match.groups()
    fraction = (fraction or "").replace("_", "")
    if len(fraction) > DECIMALS:
        raise ValueError("more than 6 decimal places")
    micro = int(whole.replace("_", "")) * MICRO + int(fraction.ljust(DECIMALS, "0"))
    return -micro if sign == "-" else micro


def _decimal_to_micro(value: Decimal) -> int:
    if not value.is_finite():
        raise ValueError(f"not an amount in USD: {value}")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite Decimals have an int exponent
    if exponent < -DECIMALS:
        raise ValueError("more than 6 decimal places")
    try:
        scaled = value.scaleb(DECIMALS)
        return int(scaled)  # exact: the exponent check above leaves no fraction
    except InvalidOperation as e:  # pragma: no cover - only for absurd exponents
        raise ValueError(f"not an amount in USD: {value}") from e


def format_usd(micro: int) -> str:
    """Format integer micro-USD as USD, trailing zeros trimmed but keeping at least 2
    decimals: 10_000_000 -> "10.00", 12_345_678 -> "12.345678", 150 -> "0.00015",
    -500_000 -> "-0.50". ``parse_usd(format_usd(m), allow_negative=True) == m``."""
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), MICRO)
    digits = f"{fraction:06d}".rstrip("0")
    return f"{sign}{whole}.{digits.ljust(2, '0')}"


def div_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up (a tie goes up, for amounts >= 0): Tollway's
    one rounding rule, used for prices (10⁻⁶ micro-USD → micro-USD,
    `tollway.limits.prices.round_micro`) and for means in reports."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    return (2 * numerator + denominator) // (2 * denominator)
