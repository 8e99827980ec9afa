"""Durations as operators write them: a whole number and a unit, ``30s``, ``15m``,
``12h``, ``90d``, ``2w`` (SPEC §7 "DUR"). Months are not a unit: their length varies."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(\d{1,9})([smhdw])")
UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_ms(text: str, *, zero: bool = False) -> int:
    """``<N><unit>`` → milliseconds; ValueError naming the expected form otherwise.
    A zero duration is refused unless `zero` (an overlap of ``0s`` means "at once")."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (write <N>s, m, h, d or w, e.g. 30d)")
    ms = int(match.group(1)) * UNIT_MS[match.group(2)]
    if ms == 0 and not zero:
        raise ValueError("the duration must be greater than zero")
    return ms


_PERIOD = re.compile(r"(\d{1,6})([hdw])")
_PERIOD_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_period(text: str) -> timedelta:
    """A lot's validity, ``12h``, ``90d``, ``12w`` → a timedelta; ValueError otherwise
    (months are not accepted: their length varies, write days)."""
    match = _PERIOD.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (write <N>h, <N>d or <N>w, e.g. 90d)")
    n, unit = int(match.group(1)), match.group(2)
    if n == 0:
        raise ValueError("the duration must be greater than zero")
    return timedelta(**{_PERIOD_UNITS[unit]: n})
