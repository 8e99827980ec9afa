"""The background task of every replica that ships ledger events to the ledger database.

Every replica runs it; the one holding the shipper lock ships (`tollway.limits.shipper`),
every replica measures the backlog for its metrics, so the alert does not depend on which
replica is scraped. A failed pass (the database down) is counted and retried on the next
tick: the events wait in Redis meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from tollway.config.schema import Config
from tollway.limits.errors import StoreUnavailable
from tollway.limits.shipper import Shipper, ShipperLock
from tollway.proxy.metrics import Metrics

log = logging.getLogger("tollway.shipping")

STOP_SECONDS = 5.0  # the last shipping pass at shutdown


class ShippingTask:
    def __init__(self, shipper: Shipper, config: Callable[[], Config], metrics: Metrics) -> None:
        self.shipper = shipper
        self.config = config
        self.metrics = metrics
        self.lock = ShipperLock(shipper.store)
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        """One pass: ship if this replica holds the lock, then measure the backlog."""
        try:
            if await self.lock.acquire():
                before = self.shipper.shipped
                try:
                    await self.shipper.ship_all()
                finally:
                    self.metrics.ledger_shipped.inc(self.shipper.shipped - before)
        except StoreUnavailable as e:
            self.metrics.ledger_ship_failures.inc()
            log.warning("ledger shipping failed: %s", e)
        with contextlib.suppress(StoreUnavailable):
            backlog = await self.shipper.backlog()
            self.metrics.ledger_backlog.set(backlog.events)
            age = 0.0
            if backlog.oldest_ms is not None:  # a stream id: the Redis server's wall time
                age = max(0.0, time.time() - backlog.oldest_ms / 1000)
            self.metrics.ledger_backlog_age.set(age)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a reply no error class covers (BUSY in a pipeline): next tick
                self.metrics.ledger_ship_failures.inc()
                log.exception("ledger shipping pass failed")
            await asyncio.sleep(self.config().ledger.ship_interval_seconds)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        """Stop, ship what the last requests left (best effort) and free the lock."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Best effort and bounded: what is not shipped now waits in Redis for the next
        # process, so a slow store or database never holds a shutdown up.
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            async with asyncio.timeout(STOP_SECONDS):
                if await self.lock.acquire():
                    await self.shipper.ship_all()
                await self.lock.release()
