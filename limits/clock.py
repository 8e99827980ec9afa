"""Time, injected.

Every decision in `limits/` takes its "now" from a `Clock` passed in, never from the
system directly, so tests move time forward instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:  # 2026-01-01T00:00:00Z
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, seconds: float = 0.0, ms: int = 0) -> None:
        self._now += ms + round(seconds * 1000)

    def set(self, ms: int) -> None:
        self._now = ms
