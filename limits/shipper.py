"""The shipper: moves ledger events from each organization's Redis stream into the ledger
database, in order and exactly once, and trims what it shipped.

The settle script (and add_lot, expiry) keep appending every event to the stream
``tw:{org}:ledger`` atomically with the balance change it records: the stream stays the
source of every event. Redis keeps an event only until it is shipped:

1. read the oldest ``batch`` entries of the stream (XRANGE, stream order);
2. insert them into the database in one transaction, idempotent by stream id;
3. trim the stream below the next id (XTRIM MINID, exact).

A shipper that dies between 2 and 3 ships the same entries again on its next pass, and the
database stores them once. Two shippers at once (a lock that expired under a slow one, a
report that ships its organization before reading) are safe for the same reason, and
because MINID only ever removes entries older than a bound that only moves forward. The
lock (`run`) makes one replica do the work, not the correctness.

While the database is down, nothing is trimmed: events wait in Redis, none is lost, and
`backlog` counts them (the ``tollway_ledger_backlog_*`` metrics and their alerts).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tollway.limits.errors import StoreUnavailable
from tollway.limits.ledgerdb import LedgerDB, split_id
from tollway.limits.store import Store

log = logging.getLogger("tollway.shipper")

BATCH = 500  # entries per transaction
LOCK_TTL_MS = 15_000


def next_id(entry_id: str) -> str:
    """The smallest stream id greater than `entry_id` (the MINID that trims it)."""
    ms, seq = split_id(entry_id)
    return f"{ms}-{seq + 1}"


@dataclass(slots=True)
class Backlog:
    """Events waiting in Redis: their number and the stream time (ms) of the oldest."""

    events: int = 0
    oldest_ms: int | None = None
    by_org: dict[str, int] = field(default_factory=dict)


class Shipper:
    """Ships the ledger streams of the organizations `orgs()` names (the config's, read on
    every pass, so a new organization is shipped from its first event)."""

    def __init__(
        self,
        store: Store,
        db: LedgerDB,
        orgs: Callable[[], Iterable[str]],
        batch: int = BATCH,
    ) -> None:
        self.store = store
        self.db = db
        self.orgs = orgs
        self.batch = batch
        self.shipped = 0  # events inserted (or found already there) since start
        self._org_locks: dict[str, asyncio.Lock] = {}

    async def ship_org(self, org: str) -> int:
        """Ship every event of `org` now in its stream; the number shipped. Raises
        `StoreUnavailable` (Redis) or `LedgerUnavailable` (the database): what was
        committed before the failure stays committed and trimmed."""
        lock = self._org_locks.setdefault(org, asyncio.Lock())
        async with lock:  # one pass per organization at a time in this process
            key = self.store.keys.ledger(org)
            client = self.store.client
            total = 0
            while True:
                entries = await self.store.call(
                    "ledger_ship_read", client.xrange, key, "-", "+", self.batch
                )
                if not entries:
                    return total
                await self.db.insert(org, entries)
                await self.store.call(
                    "ledger_ship_trim",
                    client.xtrim,
                    key,
                    minid=next_id(entries[-1][0]),
                    approximate=False,
                )
                total += len(entries)
                self.shipped += len(entries)
                if len(entries) < self.batch:
                    return total

    async def ship_all(self) -> int:
        """One pass over every organization; the number of events shipped. An
        organization that fails is logged and the others still ship; the first error is
        raised at the end, so a caller knows the pass was incomplete."""
        total, error = 0, None
        for org in sorted(set(self.orgs())):
            try:
                total += await self.ship_org(org)
            except StoreUnavailable as e:
                error = error or e
                log.warning("ledger shipping of %s failed: %s", org, e)
        if error is not None:
            raise error
        return total

    async def backlog(self) -> Backlog:
        """How many events wait in Redis, and how old the oldest is (one pipelined round
        trip on a single server; one call per organization on a cluster)."""
        out = Backlog()
        names = sorted(set(self.orgs()))
        if not names:
            return out
        pipe = self.store.client.pipeline(transaction=False)
        for org in names:
            key = self.store.keys.ledger(org)
            pipe.xlen(key)
            pipe.xrange(key, "-", "+", 1)
        replies = await self.store.call("ledger_backlog", pipe.execute)
        for i, org in enumerate(names):
            n, first = int(replies[2 * i]), replies[2 * i + 1]
            if n:
                out.by_org[org] = n
                out.events += n
            if first:
                ms, _ = split_id(first[0][0])
                out.oldest_ms = ms if out.oldest_ms is None else min(out.oldest_ms, ms)
        return out


class ShipperLock:
    """A lock in Redis so that one replica ships at a time (SET NX PX; extended and
    released with reload_lock.lua, only while still owned)."""

    def __init__(self, store: Store, ttl_ms: int = LOCK_TTL_MS) -> None:
        self.store = store
        self.key = f"{store.keys.prefix}:ledger-shipper"
        self.token = secrets.token_hex(8)
        self.ttl_ms = ttl_ms
        self.held = False

    async def acquire(self) -> bool:
        """True when this replica holds the lock now (taken or extended)."""
        if self.held:
            owned = await self.store.run(
                "reload_lock", [self.key], [self.token, "extend", self.ttl_ms]
            )
            self.held = bool(int(owned))
        if not self.held:
            took = await self.store.call(
                "ledger_lock", self.store.client.set, self.key, self.token, nx=True, px=self.ttl_ms
            )
            self.held = bool(took)
        return self.held

    async def release(self) -> None:
        if self.held:
            self.held = False
            await self.store.run("reload_lock", [self.key], [self.token, "release", 0])
