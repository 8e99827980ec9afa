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


@dataclass(frozen=True, slots=True)
class Day:
    """What the scripts' plans need to know about the local date of an instant: the month
    ("YYYY-MM") and day ("YYYY-MM-DD") labels, the start of the next month (ms) and the
    day and week `Windows`."""

    month: str
    day: str
    next_month_ms: int
    windows: Windows


def periods(now_ms: int, tz: ZoneInfo) -> tuple[str, str, int]:
    """(month "YYYY-MM", day "YYYY-MM-DD", start of next month in ms) in zone `tz`."""
    now = datetime.fromtimestamp(now_ms / 1000, tz)
    next_month = month_bounds(now.year, now.month, tz)[1]
    return now.strftime("%Y-%m"), now.strftime("%Y-%m-%d"), next_month


def day_of(now_ms: int, tz: ZoneInfo) -> Day:
    """The `Day` containing `now_ms` in zone `tz`."""
    return Day(*periods(now_ms, tz), windows(now_ms, tz))


class Days:
    """`day_of`, memoized over the instants it is known to hold for.

    Everything in a `Day` is a function of the local date, which changes only at local
    midnight: ``windows.next_day_ms``. So a `Day` computed at an instant holds from that
    instant (or an earlier one that computed the same date) until then, and an instant
    in that range is answered without any calendar arithmetic (two `windows` and a
    `datetime` per request were ~10 % of a request's CPU). One entry per zone name."""

    def __init__(self) -> None:
        self._zones: dict[str, ZoneInfo] = {}
        # zone name -> (first instant known to fall on the day, next_day_ms, the Day)
        self._known: dict[str, tuple[int, int, Day]] = {}

    def zone(self, name: str) -> ZoneInfo:
        zone = self._zones.get(name)
        if zone is None:
            zone = self._zones[name] = ZoneInfo(name)
        return zone

    def at(self, now_ms: int, zone_name: str) -> Day:
        hit = self._known.get(zone_name)
        if hit is not None and hit[0] <= now_ms < hit[1]:
            return hit[2]
        day = day_of(now_ms, self.zone(zone_name))
        start = now_ms
        if hit is not None and hit[2] == day:  # an earlier instant of the same date
            start = min(start, hit[0])
        self._known[zone_name] = (start, day.windows.next_day_ms, day)
        return day
