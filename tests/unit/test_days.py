"""The calendar of the scripts' plans (`limits/windows.py`): `Days` answers what `day_of`
computes, for every instant, whatever order the instants come in."""

from __future__ import annotations

import random
from datetime import datetime
from zoneinfo import ZoneInfo

from tollway.limits.windows import Days, day_of

HOUR = 3_600_000


def ms(zone: str, *fields: int) -> int:
    return int(datetime(*fields, tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def test_days_agrees_with_day_of_across_midnights_and_dst_changes() -> None:
    """Instants every 7 minutes over days that hold a local midnight, a DST start and a DST
    end (Santiago moves its clocks at midnight), in time order, then shuffled."""
    cases = [
        ("UTC", ms("UTC", 2026, 12, 31, 20)),  # a month and a year end
        ("Europe/Paris", ms("Europe/Paris", 2026, 3, 28, 20)),  # spring forward at 02:00
        ("Europe/Paris", ms("Europe/Paris", 2026, 10, 24, 20)),  # fall back at 03:00
        ("America/Santiago", ms("America/Santiago", 2026, 9, 5, 20)),  # 24:00 -> 01:00
        ("America/Santiago", ms("America/Santiago", 2026, 4, 4, 20)),  # 24:00 -> 23:00
        ("Pacific/Kiritimati", ms("Pacific/Kiritimati", 2026, 6, 30, 22)),
    ]
    for zone, start in cases:
        instants = list(range(start - HOUR, start + 30 * HOUR, 7 * 60_000))
        instants += [start + 4 * HOUR - 1, start + 4 * HOUR, start + 4 * HOUR + 1]
        shuffled = instants[:]
        random.Random(7).shuffle(shuffled)
        for order in (instants, shuffled, instants[::-1]):
            days = Days()
            for now in order:
                assert days.at(now, zone) == day_of(now, ZoneInfo(zone)), (zone, now)


def test_days_is_exact_at_the_midnight_boundary() -> None:
    days = Days()
    midnight = ms("Europe/Paris", 2026, 5, 2)
    assert days.at(midnight - 1, "Europe/Paris").day == "2026-05-01"
    assert days.at(midnight, "Europe/Paris").day == "2026-05-02"
    assert days.at(midnight - 1, "Europe/Paris").day == "2026-05-01"  # the clock went back
    assert days.at(midnight - 1, "UTC").day == "2026-05-01"  # one entry per zone
    assert days.at(midnight, "Europe/Paris").windows.next_day_ms == ms("Europe/Paris", 2026, 5, 3)
