"""The ledger database goes down and the shipper is killed mid-flight; every event still
reaches the database exactly once, against a real PostgreSQL server (a throwaway cluster
of the test's own, killed with ``pg_ctl stop -m immediate``) and the embedded SQLite file
(made unwritable by another connection holding an exclusive lock).

Timeline (real `tollway serve` processes on one Redis and one data directory):

1. process A serves traffic; its shipper moves every event to the database;
2. the database goes down; traffic goes on (admission never needs the database): the
   events wait in Redis, counted by the backlog metric;
3. the database comes back; once A has shipped part of the backlog, A is SIGKILLed;
4. process B starts on the same setup, serves more traffic and ships the rest.

Then the database holds one settlement event per answered request, no event twice, the
costs the upstream reported, an empty stream, and `tollway reconcile` finds no drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tollway.config import load_config
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import SystemClock
from tollway.limits.credits import Credits
from tollway.limits.ledgerdb import PostgresLedger
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store

from tests.support.fakeupstream import run_in_thread
from tests.support.faultkit import (
    ProxyProcess,
    config_yaml,
    expected_usage,
    fetch,
    request_for,
    wait_for,
)
from tests.support.pgcluster import PgCluster
from tests.support.stack import ENV

pytestmark = pytest.mark.slow

ORGS = """
organizations:
  acme:
    limits: {rpm: 100000, tpm: 100000000}
    billing: {mode: prepaid}
"""
BEFORE, DURING, AFTER = 30, 150, 30  # requests in each phase


class Ledger:
    """The test's own view of the ledger database (a connection per question)."""

    def __init__(self, backend: str, data_dir: Path, pg: PgCluster | None) -> None:
        self.backend, self.pg = backend, pg
        self.path = data_dir / "ledger.sqlite3"
        self._lock: sqlite3.Connection | None = None

    def url_yaml(self) -> str:
        if self.pg is None:
            return ""
        return f"ledger: {{url: '{self.pg.url}', ship_interval_seconds: 0.05, ship_batch: 1}}\n"

    def rows(self, sql: str) -> list[tuple]:
        if self.pg is None:
            with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as conn:
                return conn.execute(sql).fetchall()

        async def go() -> list[tuple]:
            db = PostgresLedger(self.pg.url)
            try:
                return await db.fetch(sql)
            finally:
                await db.close()

        return asyncio.run(go())

    def settled(self) -> int:
        sql = "SELECT COUNT(*) FROM ledger_events WHERE type IN ('debit', 'usage')"
        return self.rows(sql)[0][0]

    def down(self) -> None:
        if self.pg is not None:
            self.pg.kill()
        else:  # another writer holds the file: every write times out ("database is locked")
            self._lock = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self._lock.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        if self.pg is not None:
            self.pg.start()
        elif self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def _prepare(redis_url: str, prefix: str) -> str:
    async def go() -> str:
        store = Store.from_url(redis_url, Keys(prefix), timeout=2)
        try:
            await Credits(store, SystemClock()).buy("acme", 1_000_000_000)
            return (await ApiKeys(store).create("acme", 0))[1]
        finally:
            await store.close()

    return asyncio.run(go())


def _send(url: str, secret: str, first: int, n: int) -> None:
    for i in range(first, first + n):
        path, headers, body = request_for(i, secret)
        assert fetch("POST", url + path, json=body, headers=headers).status == 200


def test_database_down_and_shipper_killed_every_event_once(
    tmp_path: Path, redis_url: str, backend: str
) -> None:
    pg = PgCluster() if backend == "postgres" else None
    try:
        if pg is not None:
            pg.start()
        data = tmp_path / "data"
        ledger = Ledger(backend, data, pg)
        prefix = "l" + tmp_path.name[-10:].replace("_", "")
        with run_in_thread() as (fake, upstream):
            path = tmp_path / "tollway.yaml"
            path.write_text(
                config_yaml(redis_url, prefix, upstream, ledger.url_yaml() + ORGS)
                if pg is not None
                else config_yaml(redis_url, prefix, upstream, ORGS).replace(
                    "upstreams:", "ledger: {ship_interval_seconds: 0.05, ship_batch: 1}\nupstreams:"
                )
            )
            cfg = load_config(path, ENV)
            secret = _prepare(redis_url, prefix)

            a = ProxyProcess(path, data)
            a.wait_ready()
            _send(a.url, secret, 0, BEFORE)
            wait_for(lambda: ledger.settled() == BEFORE, 20, "phase 1 shipped")

            ledger.down()
            _send(a.url, secret, BEFORE, DURING)
            wait_for(
                lambda: a.metric("tollway_ledger_backlog_events") >= DURING,
                20,
                "the backlog metric to count the waiting events",
            )
            assert a.metric("tollway_ledger_ship_failures_total") >= 1

            ledger.up()
            deadline = time.monotonic() + 30
            while (n := ledger.settled()) <= BEFORE:  # A ships again, one event at a time
                assert time.monotonic() < deadline, "shipping did not resume"
                time.sleep(0.005)
            a.kill()
            at_kill = ledger.settled()
            assert BEFORE < n <= at_kill < BEFORE + DURING, "A was not killed mid-flight"

            b = ProxyProcess(path, data)
            b.wait_ready()
            _send(b.url, secret, BEFORE + DURING, AFTER)
            total = BEFORE + DURING + AFTER
            wait_for(lambda: ledger.settled() == total, 30, "B to ship the rest")
            wait_for(lambda: b.metric("tollway_ledger_backlog_events") == 0, 10, "no backlog")
            b.stop()

            expected = expected_usage(fake.responses, cfg.prices)
            assert expected["req"] == total
            [(events, rids, cost)] = ledger.rows(
                "SELECT COUNT(*), COUNT(DISTINCT rid), SUM(cost) FROM ledger_events "
                "WHERE type IN ('debit', 'usage', 'fail')"
            )
            assert (events, rids, cost) == (total, total, expected["cost"])

        import redis as sync_redis

        r = sync_redis.Redis.from_url(redis_url, decode_responses=True)
        assert r.xlen(Keys(prefix).ledger("acme")) == 0
        r.close()
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TOLLWAY_CONFIG")}
        env.update(ENV, TOLLWAY_DATA=str(data))
        done = subprocess.run(
            [sys.executable, "-m", "tollway.proxy.cli", "reconcile", "--config", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 difference(s)" in done.stdout
    finally:
        if pg is not None:
            pg.close()
