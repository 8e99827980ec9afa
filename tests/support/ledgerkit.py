"""Read what the ledger database holds, in the shapes tests used to read from Redis: the
day's counters as ``"<dim>|<metric>"`` (the fields settle.lua once kept per day) and the
ledger events as the stream's field dicts. Both ship waiting events first."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from tollway.limits.history import History, history_of
from tollway.limits.ledgerdb import DEFAULT_FILE, SqliteLedger
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store

_DIMS = {"org": "org", "workspace": "ws=", "user": "user=", "key": "key=", "model": "model="}


async def day_counters(store: Store, org: str, day: str) -> dict[str, int]:
    """``{"org|req": 2, "user=alice|cost": 150, ...}`` of one day; zeros left out. ``req``
    counts successful requests, ``fail`` failed ones."""
    history = history_of(store)
    out: dict[str, int] = {}
    for by, prefix in _DIMS.items():
        for row in await history.usage(org, by, day, day):
            if row.group is None:
                continue
            dim = "org" if by == "org" else prefix + row.group
            metrics = {
                "req": row.requests - row.failures,
                "fail": row.failures,
                "in": row.input_tokens,
                "out": row.output_tokens,
                "cw": row.cache_write_tokens,
                "cr": row.cache_read_tokens,
                "cost": row.cost,
            }
            out.update({f"{dim}|{m}": v for m, v in metrics.items() if v})
    return out


async def ledger_events(store: Store, org: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Every ledger event of `org` (of type `kind` when given), oldest first."""
    history = history_of(store)
    await history.catch_up([org])
    rows = await history.db.fetch(
        "SELECT type, fields FROM ledger_events WHERE org = ? ORDER BY ms, seq", org
    )
    return [orjson.loads(f) for t, f in rows if kind is None or t == kind]


def process_ledger(redis_url: str, prefix: str, data_dir: Path) -> _ProcessLedger:
    """The ledger of `tollway serve` processes that ran on `redis_url` with key prefix
    `prefix` and data directory `data_dir` (their SQLite ledger), for synchronous tests."""
    return _ProcessLedger(redis_url, prefix, data_dir)


class _ProcessLedger:
    def __init__(self, redis_url: str, prefix: str, data_dir: Path) -> None:
        self.redis_url, self.prefix, self.data_dir = redis_url, prefix, data_dir

    def _run(self, fn: Any) -> Any:
        async def go() -> Any:
            store = Store.from_url(self.redis_url, Keys(self.prefix), timeout=2.0)
            store.history = History(store, SqliteLedger(self.data_dir / DEFAULT_FILE))
            try:
                return await fn(store)
            finally:
                await store.history.close()
                await store.close()

        return asyncio.run(go())

    def events(self, org: str, kind: str | None = None) -> list[dict[str, Any]]:
        return self._run(lambda store: ledger_events(store, org, kind))

    def day(self, org: str, day: str) -> dict[str, int]:
        return self._run(lambda store: day_counters(store, org, day))
