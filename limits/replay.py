"""`Replayer`: settles the journal (`tollway.limits.journal`) in the background, every
`interval` seconds while entries wait, once the store answers its ping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tollway.limits.journal import Journal, Stopped
from tollway.limits.outcomes import Charge

log = logging.getLogger("tollway.journal")


class Replayer:
    """Settles the journal in the background: every `interval` seconds while entries are
    waiting, once the store answers `ping`."""

    def __init__(
        self,
        journal: Journal,
        settle: Callable[[Charge], Awaitable[Any]],
        ping: Callable[[], Awaitable[bool]],
        interval: float = 1.0,
    ) -> None:
        self.journal = journal
        self.settle = settle
        self.ping = ping
        self.interval = interval

    async def run_once(self) -> int:
        """One replay attempt; how many entries it settled."""
        if not self.journal.segments():
            return 0
        if not await self.ping():
            return 0
        try:
            return await self.journal.replay(self.settle)
        except Stopped as e:
            log.warning(
                "journal replay stopped: store unavailable",
                extra={"settled": e.settled, "pending": self.journal.pending},
            )
            return e.settled

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("journal replay failed")
            await asyncio.sleep(self.interval)
