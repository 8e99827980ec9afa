"""The ledger database: every ledger event, shipped from Redis, kept for as long as finance
needs it, queried with SQL aggregates.

Two backends speak one SQL dialect (the common part of SQLite and PostgreSQL; statements
are written with ``?`` placeholders, rewritten to ``$n`` for PostgreSQL):

- `SqliteLedger` (aiosqlite): a file in the data directory, beside the embedded Valkey, for
  the single-machine set-up (``ledger.url: null``, or ``sqlite:///path``);
- `PostgresLedger` (asyncpg, a small pool): ``postgresql://...`` for deployments.

Contracts:

- An event is identified by ``(org, ms, seq)``, its Redis stream id in the organization's
  ledger stream. `insert` is idempotent by that id (``ON CONFLICT DO NOTHING``): shipping
  the same event twice stores it once, so a shipper that dies between the commit and the
  trim of the stream, or two shippers at once, never double an event.
- Every failure to reach or use the database is raised as `LedgerUnavailable` (a
  `StoreUnavailable`: callers already know what to do when a store is not there).
- The database holds only what the events say; nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from tollway.limits.errors import StoreUnavailable

SETTLEMENT_TYPES = ("debit", "usage", "fail")  # one event per settled request (settle.lua)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger_events (
        org TEXT NOT NULL,
        ms BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        ts BIGINT NOT NULL,
        day TEXT,
        type TEXT NOT NULL,
        rid TEXT,
        workspace TEXT,
        user_id TEXT,
        key_id TEXT,
        model TEXT,
        session TEXT,
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        cache_write_tokens BIGINT NOT NULL DEFAULT 0,
        cache_read_tokens BIGINT NOT NULL DEFAULT 0,
        cost BIGINT NOT NULL DEFAULT 0,
        included BIGINT NOT NULL DEFAULT 0,
        extra BIGINT NOT NULL DEFAULT 0,
        amount BIGINT NOT NULL DEFAULT 0,
        prepaid SMALLINT NOT NULL DEFAULT 0,
        upstream_ms BIGINT NOT NULL DEFAULT 0,
        fields TEXT NOT NULL,
        PRIMARY KEY (org, ms, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_events_day ON ledger_events (org, day)",
    "CREATE INDEX IF NOT EXISTS ledger_events_ts ON ledger_events (org, ts)",
    "CREATE INDEX IF NOT EXISTS ledger_events_rid ON ledger_events (org, rid)",
    "CREATE INDEX IF NOT EXISTS ledger_events_session ON ledger_events (session)"
    " WHERE session IS NOT NULL",
)

COLUMNS = (
    "org",
    "ms",
    "seq",
    "ts",
    "day",
    "type",
    "rid",
    "workspace",
    "user_id",
    "key_id",
    "model",
    "session",
    "input_tokens",
    "output_tokens",
    "cache_write_tokens",
    "cache_read_tokens",
    "cost",
    "included",
    "extra",
    "amount",
    "prepaid",
    "upstream_ms",
    "fields",
)

_INSERT = (
    f"INSERT INTO ledger_events ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)}) ON CONFLICT DO NOTHING"
)

# Stream field name → (column, integer?). Fields not named here stay only in ``fields``.
_FIELD_COLUMNS = {
    "ts": ("ts", True),
    "day": ("day", False),
    "type": ("type", False),
    "rid": ("rid", False),
    "ws": ("workspace", False),
    "user": ("user_id", False),
    "key": ("key_id", False),
    "model": ("model", False),
    "sess": ("session", False),
    "in": ("input_tokens", True),
    "out": ("output_tokens", True),
    "cw": ("cache_write_tokens", True),
    "cr": ("cache_read_tokens", True),
    "cost": ("cost", True),
    "included": ("included", True),
    "extra": ("extra", True),
    "amount": ("amount", True),
    "prepaid": ("prepaid", True),
    "up": ("upstream_ms", True),
}


_NUMERIC = frozenset(c for c, numeric in _FIELD_COLUMNS.values() if numeric)


class LedgerUnavailable(StoreUnavailable):
    """The ledger database could not be reached or refused the statement."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as the stream held it: its id ``ms-seq`` and its fields (strings)."""

    org: str
    entry_id: str
    fields: dict[str, str]


def split_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def row_of(org: str, entry_id: str, fields: dict[str, str]) -> tuple[Any, ...]:
    """The table row of one stream entry. Empty strings (no workspace, no user) are NULL;
    a missing number is 0; every field is also kept, as JSON, in ``fields``."""
    ms, seq = split_id(entry_id)
    values: dict[str, Any] = {"org": org, "ms": ms, "seq": seq, "ts": ms}
    for name, (column, numeric) in _FIELD_COLUMNS.items():
        raw = fields.get(name)
        if raw is None or raw == "":
            continue
        values[column] = int(raw) if numeric else raw
    values["fields"] = orjson.dumps(fields).decode()
    defaults = {"type": "", "day": None}
    return tuple(values.get(c, defaults.get(c, 0 if c in _NUMERIC else None)) for c in COLUMNS)


class LedgerDB:
    """Base of the backends: `execute_many`, `fetch` and `close` are theirs."""

    url: str

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def execute_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def insert(self, org: str, entries: Iterable[tuple[str, dict[str, str]]]) -> None:
        """Store stream entries ``(id, fields)`` of `org` in one transaction, each once."""
        rows = [row_of(org, entry_id, fields) for entry_id, fields in entries]
        if rows:
            await self.execute_many(_INSERT, rows)

    async def count(self, org: str | None = None) -> int:
        if org is None:
            [(n,)] = await self.fetch("SELECT COUNT(*) FROM ledger_events")
        else:
            [(n,)] = await self.fetch("SELECT COUNT(*) FROM ledger_events WHERE org = ?", org)
        return int(n)


class SqliteLedger(LedgerDB):
    """One SQLite file, written by one connection (WAL, so readers never wait)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        import aiosqlite

        async with self._lock:
            if self._conn is not None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = await aiosqlite.connect(self.path, timeout=5.0)
                await conn.execute("PRAGMA journal_mode=WAL")
                await conn.execute("PRAGMA synchronous=NORMAL")
                for statement in SCHEMA:
                    await conn.execute(statement)
                await conn.commit()
            except (sqlite3.Error, OSError) as e:
                raise LedgerUnavailable(f"ledger database {self.url}: {e}") from e
            self._conn = conn

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    async def execute_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        await self.open()
        try:
            await self._conn.executemany(sql, rows)
            await self._conn.commit()
        except (sqlite3.Error, OSError) as e:
            await self._rollback()
            raise LedgerUnavailable(f"ledger database {self.url}: {e}") from e

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        await self.open()
        try:
            async with self._conn.execute(sql, params) as cur:
                return [tuple(r) for r in await cur.fetchall()]
        except (sqlite3.Error, OSError) as e:
            raise LedgerUnavailable(f"ledger database {self.url}: {e}") from e

    async def _rollback(self) -> None:
        # A connection that is gone has nothing to roll back.
        with contextlib.suppress(sqlite3.Error, OSError):
            await self._conn.rollback()


_PLACEHOLDER = re.compile(r"\?")


def to_dollar(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (no statement here has a ``?``
    inside a literal)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


class PostgresLedger(LedgerDB):
    """A PostgreSQL server through an asyncpg pool, opened on first use and reopened after
    the server went away."""

    def __init__(self, url: str, pool_size: int = 4, timeout: float = 5.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.timeout = timeout
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        import asyncpg

        async with self._lock:
            if self._pool is not None:
                return
            try:
                pool = await asyncpg.create_pool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=self.timeout,
                    command_timeout=self.timeout * 6,
                )
                # Replicas starting at once must not race on CREATE ... IF NOT EXISTS.
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(74177)")
                    for statement in SCHEMA:
                        await conn.execute(statement)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                raise LedgerUnavailable(f"ledger database: {e}") from e
            self._pool = pool

    async def close(self) -> None:
        async with self._lock:
            if self._pool is not None:
                pool, self._pool = self._pool, None
                try:
                    await asyncio.wait_for(pool.close(), self.timeout)
                except (TimeoutError, OSError):
                    pool.terminate()

    async def _fail(self, e: BaseException) -> LedgerUnavailable:
        """Drop the pool after a connection-level failure, so the next call reconnects."""
        import asyncpg

        if not isinstance(e, asyncpg.PostgresError) or isinstance(
            e, asyncpg.exceptions.PostgresConnectionError | asyncpg.exceptions.AdminShutdownError
        ):
            async with self._lock:
                if self._pool is not None:
                    self._pool.terminate()
                    self._pool = None
        return LedgerUnavailable(f"ledger database: {e}")

    async def execute_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        import asyncpg

        await self.open()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.executemany(to_dollar(sql), rows)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise await self._fail(e) from e

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import asyncpg

        await self.open()
        try:
            async with self._pool.acquire() as conn:
                return [tuple(r) for r in await conn.fetch(to_dollar(sql), *params)]
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise await self._fail(e) from e


DEFAULT_FILE = "ledger.sqlite3"


def open_ledger(url: str | None, data_dir: str | Path) -> LedgerDB:
    """The ledger database of `url` (not connected yet: it connects on first use).

    None: ``ledger.sqlite3`` in `data_dir`; ``sqlite:///relative`` or ``sqlite:////abs``;
    ``postgresql://`` or ``postgres://`` (libpq URL, as asyncpg reads it)."""
    if url is None:
        return SqliteLedger(Path(data_dir) / DEFAULT_FILE)
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return SqliteLedger(url[len("sqlite:///") :])
    if scheme in ("postgresql", "postgres"):
        return PostgresLedger(url)
    raise ValueError(f"unsupported ledger URL scheme {scheme!r}")
