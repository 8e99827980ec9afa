"""One read in flight per thing: concurrent callers that need the same re-read (a key
record, an organization's run-time users) share one call to the store instead of each
making its own.

Without it, when a cached entry expires under load every request that arrives before
the first re-read answers makes its own (at 50 concurrent requests, up to 50 reads of
one key record each second, on the general client: ~6 % of a request's CPU in a
profile). The shared call runs as a task of its own: a caller that is cancelled stops
waiting, and the others still get the answer; an error reaches every waiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class Flights:
    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[Any]] = {}

    async def run(self, key: Hashable, read: Callable[[], Awaitable[T]], *, new: bool = False) -> T:
        """The result of `read()`, shared with every caller of the same `key` while it
        runs. `new`: start a read of its own (one that must begin after this call, e.g.
        after a write); later callers then share that one."""
        task = None if new else self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(read())
            self._running[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: Hashable, task: asyncio.Future[Any]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters that all left must not leave a warning
