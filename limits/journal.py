"""A local journal of the settlements the store could not take, replayed when it returns.

When `Meter.settle` fails with `StoreUnavailable` (the store is down, or its answer timed
out), the proxy appends everything that settlement needs to this journal instead of losing
it: one JSON line per settlement, fsync'd before the append returns. `Replayer`
(`limits/replay.py`) settles the journal once the store answers again, each entry at the
request's own time (so it lands in the right day and month), then deletes what it settled.

Replay is idempotent: settle.lua keeps a marker per request id, so an entry settled a second
time changes nothing. That covers a process that dies in the middle of a replay, and a settle
whose write had in fact happened before its timeout (it was journaled anyway).

On disk (``<data_dir>/journal/``): every process appends to a segment of its own,
``<random>.jsonl``, which it holds locked (``flock``) while it writes to it. A replay first
closes the process's own segment, then settles every segment it can lock: its own, and
those of processes that died (the kernel released their locks). A segment fully settled is
deleted; one whose replay stopped half-way (the store went away again) is rewritten with the
lines left. A line that cannot be settled for another reason than the store (it does not
parse: a write cut by a crash) moves to ``<segment>.failed`` for the operator, and counts as
dropped.

The journal is bounded: when its segments reach ``max_bytes`` in total, a new entry is
dropped (counted and logged) rather than filling the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from tollway.limits.errors import StoreUnavailable
from tollway.limits.keyrecord import limit_fields, limits_from_fields
from tollway.limits.outcomes import Charge
from tollway.limits.plans import Principal
from tollway.limits.usage import Usage

log = logging.getLogger("tollway.journal")

SUFFIX = ".jsonl"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def to_line(charge: Charge) -> bytes:
    """One journal line (newline included). `charge.now_ms` must be set: a replay settles
    at the request's own time."""
    p, u = charge.principal, charge.usage
    if charge.now_ms is None:
        raise TypeError("a journaled charge needs its time (now_ms)")
    return (
        orjson.dumps(
            {
                "v": 1,
                "rid": charge.rid,
                "org": p.org,
                "key": p.key_id,
                "ws": p.workspace,
                "user": p.user,
                # The key's own limits as admitted: a replay settles its buckets too.
                "kl": limit_fields(p.key_limits),
                "model": charge.model,
                "u": [u.input_tokens, u.output_tokens, u.cache_write_tokens, u.cache_read_tokens],
                "cost": charge.cost,
                "ok": charge.ok,
                "sess": charge.session,
                "up": charge.upstream_ms,
                "now": charge.now_ms,
            }
        )
        + b"\n"
    )


def _usage(counts: list[int]) -> Usage:
    n = [int(c) for c in counts]
    return Usage(
        input_tokens=n[0], output_tokens=n[1], cache_write_tokens=n[2], cache_read_tokens=n[3]
    )


def from_line(line: bytes) -> Charge:
    """The charge of one journal line; raises ValueError when the line is not a whole one."""
    try:
        d = orjson.loads(line)
        return Charge(
            principal=Principal(
                d["org"], d["key"], d["ws"], d["user"], limits_from_fields(d.get("kl") or {})
            ),
            rid=str(d["rid"]),
            model=d["model"],
            usage=_usage(d["u"]),
            cost=int(d["cost"]),
            ok=bool(d["ok"]),
            session=d["sess"],
            upstream_ms=int(d["up"]),
            now_ms=int(d["now"]),
        )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"not a journal entry: {e}") from None


# Observer of journal events: (event, count). event: written | replayed | dropped |
# pending (count = entries known to be waiting, a gauge value, not an increment).
Observer = Callable[[str, int], None]


class Journal:
    """The journal of one process. `append` is safe to call from many tasks at once:
    concurrent appends are written and fsync'd together (group commit)."""

    def __init__(self, directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.observers: list[Observer] = []
        self._fd: int | None = None  # the segment this process appends to (locked)
        self._path: Path | None = None
        self._lines = 0  # lines in the current segment
        self._waiting: list[tuple[bytes, asyncio.Future[bool]]] = []
        self._flushing = False
        self._flusher: asyncio.Future[None] | None = None
        self._io = asyncio.Lock()  # segment switches and writes never overlap
        self.pending = 0  # entries this process knows are waiting

    def _emit(self, event: str, n: int) -> None:
        for observe in self.observers:
            observe(event, n)

    def _set_pending(self, n: int) -> None:
        self.pending = max(n, 0)
        self._emit("pending", self.pending)

    # --- appending --------------------------------------------------------------------
    async def append(self, entry: Charge) -> bool:
        """Write `entry` durably; False when it was dropped (journal full or unwritable)."""
        try:
            line = to_line(entry)
        except (TypeError, orjson.JSONEncodeError) as e:  # text no JSON can hold
            log.error("journal entry dropped", extra={"rid": entry.rid, "error": str(e)})
            self._emit("dropped", 1)
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((line, fut))
        if not self._flushing:
            self._flushing = True
            self._flusher = asyncio.ensure_future(self._flush())
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                lines = [line for line, _ in batch]
                async with self._io:
                    try:
                        kept = await asyncio.to_thread(self._write, lines)
                    except OSError as e:
                        log.error("journal write failed", extra={"error": str(e)})
                        kept = 0
                for i, (_, fut) in enumerate(batch):
                    if not fut.done():
                        fut.set_result(i < kept)
                if kept:
                    self._emit("written", kept)
                    self._set_pending(self.pending + kept)
                if kept < len(batch):
                    self._emit("dropped", len(batch) - kept)
                    log.error(
                        "journal full: settlements dropped",
                        extra={"dropped": len(batch) - kept, "max_bytes": self.max_bytes},
                    )
        finally:
            self._flushing = False

    def _write(self, lines: list[bytes]) -> int:
        """Append as many of `lines` as fit under the size bound, fsync; how many."""
        room = self.max_bytes - self.size()
        fit, used = 0, 0
        for line in lines:
            if used + len(line) > room:
                break
            used += len(line)
            fit += 1
        if not fit:
            return 0
        fd = self._segment()
        data = b"".join(lines[:fit])
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        self._lines += fit
        return fit

    def _segment(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / (secrets.token_hex(8) + SUFFIX)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            _fsync_dir(self.directory)  # the new file's name survives a crash too
            self._fd, self._path, self._lines = fd, path, 0
        return self._fd

    def _close_segment(self) -> None:
        """Stop appending to the current segment: it becomes replayable."""
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd, self._path, self._lines = None, None, 0

    def size(self) -> int:
        """Bytes in every segment of the directory (all processes)."""
        total = 0
        for path in self.segments():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def segments(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.name.endswith(SUFFIX))
        except FileNotFoundError:
            return []

    def close(self) -> None:
        self._close_segment()

    # --- replaying --------------------------------------------------------------------
    async def replay(self, settle: Callable[[Charge], Awaitable[Any]]) -> int:
        """Settle every segment this process can lock, each in its own order; how many
        entries were settled. Stops at the first `StoreUnavailable` (raised as `Stopped`), keeping
        what is left for the next replay."""
        async with self._io:
            if self._lines:
                self._close_segment()
        settled = 0
        try:
            for path in self.segments():
                if path == self._path:
                    continue  # appended to since the replay began: the next one takes it
                settled += await self._replay_segment(path, settle)
        except Stopped as e:
            settled += e.settled
            raise Stopped(settled) from None
        finally:
            if settled:
                self._emit("replayed", settled)
            self._set_pending(await asyncio.to_thread(self.count))
        return settled

    def count(self) -> int:
        """Entries waiting in every segment of the directory."""
        total = 0
        for path in self.segments():
            with contextlib.suppress(OSError):
                total += path.read_bytes().count(b"\n")
        return total

    async def _replay_segment(self, path: Path, settle: Callable[[Charge], Awaitable[Any]]) -> int:
        """Entries settled from one segment (0 when another process holds it)."""
        fd = await asyncio.to_thread(_lock_segment, path)
        if fd is None:
            return 0
        try:
            data = await asyncio.to_thread(_read_all, fd)
            lines = [line for line in data.split(b"\n") if line.strip()]
            done, bad = 0, []
            try:
                for line in lines:
                    try:
                        entry = from_line(line)
                    except ValueError as e:
                        log.error("journal line set aside", extra={"error": str(e)})
                        bad.append(line)
                        continue
                    # Settled but still in the file until the segment is removed: a crash
                    # now replays it again, and settle.lua answers the repeat as a duplicate.
                    try:
                        await settle(entry)
                    except StoreUnavailable:
                        raise
                    except Exception:
                        # Not the store being away: retrying would fail the same way forever.
                        log.exception("journal entry set aside", extra={"rid": entry.rid})
                        bad.append(line)
                        continue
                    done += 1
            except StoreUnavailable:
                await asyncio.to_thread(_rewrite, path, lines[done + len(bad) :])
                raise Stopped(done) from None
            finally:
                if bad:
                    await asyncio.to_thread(_set_aside, path, bad)
                    self._emit("dropped", len(bad))
            await asyncio.to_thread(_remove, path)
            return done
        finally:
            os.close(fd)


class Stopped(StoreUnavailable):
    """The store went away during a replay, after `settled` entries had been settled."""

    def __init__(self, settled: int) -> None:
        super().__init__(f"store unavailable during journal replay after {settled} entries")
        self.settled = settled


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_segment(path: Path) -> int | None:
    """An fd of `path` locked for this process, or None when someone else holds it (or
    it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Replayed and removed (or rewritten) by another process since we opened it?
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    return fd


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    """Replace `path` by `lines`, atomically (write aside, fsync, rename)."""
    if not lines:
        _remove(path)
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _set_aside(path: Path, lines: list[bytes]) -> None:
    if not lines:
        return
    with open(path.with_name(path.name + ".failed"), "ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    _fsync_dir(path.parent)
