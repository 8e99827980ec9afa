"""The hot path to the store: the admit and settle scripts of concurrent requests share one
round trip, sent on a lean connection path.

Contract:

- Order and exactness: calls are sent in the order they were made, as one pipelined write
  of ``EVALSHA`` commands on one connection; the server runs them one after another in
  that order, so each request is decided against the counters at its own instant, exactly
  as if it had been sent alone. Nothing is merged: every call keeps its own script run.
- Latency: a call made while no batch is in flight is sent on the next loop iteration,
  alone (no timer, no waiting for company: concurrency 1 costs one round trip per call).
  Calls made while a batch is in flight queue, and all of them go in the next write as
  soon as that batch's replies are in. At most one batch is in flight per store.
- Lean: the commands are packed once per batch and the replies read with redis-py's
  connection (the hiredis C parser when installed), without the general client's per-call
  retry, command lookup and instrumentation layers.
- Failures map as `Store.run`'s do: a connection error or timeout fails every call of the
  batch with `StoreUnavailable` (the connection is dropped, not reused); an error reply
  that means "not now" (`unavailable_reply`, OOM, READONLY) fails that call alone with
  `StoreUnavailable`; any other error reply is raised to its caller as it is; a server
  that lost its script cache gets the script by ``EVAL`` (through `Store.run_direct`) for the calls
  that met ``NOSCRIPT``, run again one at a time in their order before the next batch.
- A caller that is cancelled stops waiting; its call, once written, still runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from redis import exceptions as rexc
from tollway.limits.errors import StoreUnavailable

UNAVAILABLE = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.MasterDownError,
    rexc.OutOfMemoryError,
    rexc.ReadOnlyError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)


# Error replies redis-py has no class for, that mean "not now" rather than "wrong request":
# MISCONF (writes stopped after a failed snapshot), BUSY (a script or function has run past
# its time limit), NOREPLICAS (min-replicas-to-write not met), and LOADING/MASTERDOWN
# inside a script's error text.
_UNAVAILABLE_REPLIES = ("MISCONF", "BUSY", "NOREPLICAS", "LOADING", "MASTERDOWN")


def unavailable_reply(e: Exception) -> bool:
    """Whether an error reply means the store cannot serve now (it counts as unavailable)."""
    if not isinstance(e, rexc.ResponseError):
        return False
    words = str(e).split()
    # A script's failed call reads "... script: MISCONF ..." or "ERR ... BUSY ...".
    # (A pipeline's reads "Command # 1 (...) of pipeline caused error: ('BUSY ...',)".)
    return any(w.strip("-:,('\"") in _UNAVAILABLE_REPLIES for w in words[:16])


def unavailable(e: BaseException) -> bool:
    """Whether `e` means the store cannot serve now (raised as `StoreUnavailable`)."""
    return isinstance(e, UNAVAILABLE) or (isinstance(e, Exception) and unavailable_reply(e))


# (script: tollway.limits.store.Script, keys, args, the waiter's future)
_Call = tuple[Any, Sequence[str], Sequence[Any], asyncio.Future]


def batchable(client: Any) -> bool:
    """Whether `client` has one connection pool to one server (plain, TLS, Unix socket or
    Sentinel-followed primary). A cluster client has none: its calls are not batched."""
    return hasattr(client, "connection_pool") and hasattr(client.connection_pool, "get_connection")


class ScriptBatcher:
    """Runs registered scripts of one `Store`, concurrent calls sharing a round trip."""

    def __init__(self, store: Any) -> None:
        """`store`: the `tollway.limits.store.Store` whose client and observers are used."""
        self.store = store
        self.pool = store.client.connection_pool
        self._queue: list[_Call] = []
        self._busy = False
        self._task: asyncio.Task | None = None  # the drain in progress (a reference keeps it)
        self.batches = 0  # round trips made (one per batch written)
        self.calls = 0  # script calls sent in them

    async def run(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's reply, as `Store.run` answers it."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((script, keys, args, fut))
        if not self._busy:
            self._busy = True
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._flush(batch)
        finally:
            self._busy = False
            if self._queue:  # only after a failure inside _flush itself
                self._busy = True
                self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _flush(self, batch: list[_Call]) -> None:
        started = time.perf_counter()
        self.batches += 1
        self.calls += len(batch)
        self.store.round_trips += 1
        try:
            replies = await self._send(batch)
        except BaseException as e:  # every waiter must hear of it
            for script, _, _, fut in batch:
                self.store._observe(script.name, started, True)
                if fut.done():
                    continue
                if unavailable(e):
                    err = StoreUnavailable(f"store unavailable during {script.name}: {e}")
                    err.__cause__ = e
                    fut.set_exception(err)
                elif isinstance(e, Exception):
                    fut.set_exception(e)
                else:  # cancelled (the loop is closing) or exiting
                    fut.cancel()
            if not isinstance(e, Exception):
                raise
            return
        lost: list[_Call] = []
        for call, reply in zip(batch, replies, strict=True):
            script, keys, args, fut = call
            if isinstance(reply, rexc.NoScriptError):
                lost.append(call)
                continue
            failed = isinstance(reply, Exception)
            self.store._observe(script.name, started, failed)
            if fut.done():
                continue
            if not failed:
                fut.set_result(reply)
            elif unavailable(reply):
                err = StoreUnavailable(f"store unavailable during {script.name}: {reply}")
                err.__cause__ = reply
                fut.set_exception(err)
            else:
                fut.set_exception(reply)

        # The cache was lost (restart, failover): these run again through the general path
        # (EVAL loads the script), one after another in call order, before the next batch.
        for script, keys, args, fut in lost:
            await _settle_future(fut, self.store.run_direct(script.name, keys, args))

    async def _send(self, batch: list[_Call]) -> list[Any]:
        """One write of every call, then every reply read (error replies as exceptions)."""
        conn = await self.pool.get_connection()
        try:
            packed = conn.pack_commands(
                [("EVALSHA", s.sha, len(keys), *keys, *args) for s, keys, args, _ in batch]
            )
            await conn.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            # One deadline for the whole batch, and the parser read directly: the
            # connection's read_response would set up a timeout per reply. The parser
            # returns an error reply as a ResponseError instance (kept in its place).
            async with asyncio.timeout(conn.socket_timeout):
                for _ in batch:
                    replies.append(await conn._parser.read_response())
        except BaseException:
            # A half-read connection must never go back to the pool in use.
            await conn.disconnect()
            raise
        finally:
            await self.pool.release(conn)
        return replies


async def _settle_future(fut: asyncio.Future, coro: Any) -> None:
    try:
        result = await coro
    except Exception as e:  # handed to the waiter
        if not fut.done():
            fut.set_exception(e)
        return
    if not fut.done():
        fut.set_result(result)
