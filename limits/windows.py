"""Calendar windows of a budget or cap: the day and the ISO week (Monday first) of an
instant in the server's time zone, with when each ends, and the bounds of a month (the one
place month arithmetic is done). A daily cap resets at local midnight, a weekly one at
local midnight between Sunday and Monday, a monthly one at local midnight of the 1st."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

PERIODS = ("day", "week", "month")


@dataclass(frozen=True, slots=True)
class Windows:
    day: str  # "d2026-01-31"
    week: str  # "w2026-W05"
    next_day_ms: int
    next_week_ms: int


def windows(now_ms: int, tz: ZoneInfo) -> Windows:
    """The day and week containing `now_ms` in zone `tz` (labels and ends, in ms)."""
    now = datetime.fromtimestamp(now_ms / 1000, tz)
    midnight = datetime(now.year, now.month, now.day, tzinfo=tz)
    next_day = (midnight + timedelta(days=1)).replace(tzinfo=tz)
    monday = midnight - timedelta(days=now.weekday())
    next_week = datetime(monday.year, monday.month, monday.day, tzinfo=tz) + timedelta(days=7)
    iso = now.isocalendar()
    return Windows(
        day="d" + now.strftime("%Y-%m-%d"),
        week=f"w{iso.year}-W{iso.week:02d}",
        next_day_ms=int(next_day.timestamp() * 1000),
        next_week_ms=int(next_week.timestamp() * 1000),
    )


def month_bounds(year: int, month: int, tz: ZoneInfo) -> tuple[int, int]:
    """Start and end (the next month's start) of a calendar month in zone `tz`, in ms."""
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
