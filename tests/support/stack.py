"""A whole Tollway stack for end-to-end tests: the fake upstream and the proxy, served on
loopback from a background thread with its own event loop, so that the official SDKs,
sync and async alike, talk to it as real clients would. Time is a `ManualClock`."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import openai
from aiohttp import web
from tollway.config import load_config
from tollway.config.reload import ConfigHolder
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import ManualClock
from tollway.limits.history import History
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store
from tollway.proxy.runtime.app import METER, METRICS, SETTLER, create_app
from tollway.proxy.runtime.metrics_server import create_metrics_app

from tests.support.fakeupstream import ANTHROPIC_KEY, OPENAI_KEY, FakeUpstream, start_fake_upstream
from tests.support.ledgerkit import day_counters, ledger_events
from tests.support.valkeycluster import sync_client

T = TypeVar("T")

PRICES = """
prices:
  gpt-4o-mini: {input: 0.15, output: 0.60, cache_read: 0.075}
  gpt-4o: {input: 2.50, output: 10.00, cache_read: 1.25}
  text-embedding-3-small: {input: 0.02, output: 0}
  claude-sonnet-4-6: {input: 3.00, output: 15.00, cache_write: 3.75, cache_read: 0.30}
  claude-haiku-4-5: {input: 1.00, output: 5.00, cache_write: 1.25, cache_read: 0.10}
  gpt-5*:
    input: 1.25
    output: 10.00
    cache_write: 1.50
    cache_write_1h: 2.00
    cache_read: 0.125
    tiers:
      priority: {input: 2.50, output: 20.00, cache_write: 3.00, cache_write_1h: 4.00,
                 cache_read: 0.25}
      flex: {input: 0.625, output: 5.00, cache_read: 0.0625}
    tools: {web_search: 0.01, file_search: 0.0025}
  claude-opus-4-*:
    input: 5.00
    output: 25.00
    cache_write: 6.25
    cache_write_1h: 10.00
    cache_read: 0.50
    long_context: {above: 200000, input: 10.00, output: 37.50, cache_write: 12.50,
                   cache_write_1h: 20.00, cache_read: 1.00}
    tiers:
      batch: {input: 2.50, output: 12.50, cache_write: 3.125, cache_write_1h: 5.00,
              cache_read: 0.25}
      fast: {input: 30.00, output: 150.00, cache_write: 37.50, cache_write_1h: 60.00,
             cache_read: 3.00}
    tools: {web_search: 0.01, web_fetch: 0.001}
"""

DEFAULT_ORGS = """
organizations:
  acme:
    limits: {rpm: 1000, tpm: 1000000}
"""

ENV = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}


class Stack:
    def __init__(
        self,
        redis_url: str,
        tmp: Path,
        orgs_yaml: str = DEFAULT_ORGS,
        extra_yaml: str = "",
        prices_yaml: str = PRICES,
    ) -> None:
        self.prices_yaml = prices_yaml
        self.redis_url = redis_url
        self.tmp = tmp
        self.clock = ManualClock()
        self.prefix = "t" + uuid.uuid4().hex[:10]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake, self._fake_runner, self.fake_url = self.run(start_fake_upstream())
        self.config_path = tmp / "tollway.yaml"
        self.write_config(orgs_yaml, extra_yaml)
        self.holder = ConfigHolder(load_config(self.config_path, ENV), ENV)
        self.store = self.run(self._store())
        self.app = create_app(self.holder, self.store, self.clock)
        self.runner = web.AppRunner(self.app, handler_cancellation=False)
        self.run(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.run(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        # The operators' metrics listener, on a port of its own (never the client port).
        token_env = self.holder.current.server.metrics_token_env
        self._metrics_runner = web.AppRunner(create_metrics_app(self.app[METRICS], token_env))
        self.run(self._metrics_runner.setup())
        msite = web.TCPSite(self._metrics_runner, "127.0.0.1", 0)
        self.run(msite.start())
        mport = msite._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.metrics_url = f"http://127.0.0.1:{mport}"
        self.redis = sync_client(redis_url)  # a cluster client for redis+cluster:// URLs
        self.reader = self.store  # what ledger() and day() ship and read through
        self._extra_runners: list[web.AppRunner] = []

    async def _store(self) -> Store:
        return Store.from_url(self.redis_url, Keys(self.prefix), timeout=2.0)

    async def _reader_on(self, url: str) -> Store:
        """A store on `url` sharing the app's ledger database (to read past a relay)."""
        store = Store.from_url(url, Keys(self.prefix), timeout=2.0)
        store.history = History(store, self.store.history.db)
        return store

    def config_text(self, orgs_yaml: str, extra_yaml: str = "", upstream: str = "") -> str:
        upstream = upstream or self.fake_url
        return (
            f"store:\n  key_prefix: {self.prefix}\n"
            "upstreams:\n"
            f"  openai: {{base_url: '{upstream}', api_key_env: OPENAI_API_KEY}}\n"
            f"  anthropic: {{base_url: '{upstream}', api_key_env: ANTHROPIC_API_KEY}}\n"
            + self.prices_yaml
            + extra_yaml
            + orgs_yaml
        )

    def write_config(self, orgs_yaml: str, extra_yaml: str = "", upstream: str = "") -> None:
        self.orgs_yaml, self.extra_yaml = orgs_yaml, extra_yaml
        self.config_path.write_text(self.config_text(orgs_yaml, extra_yaml, upstream))

    def point_upstreams_to(self, url: str) -> None:
        """Send both upstreams to another address (a closed port, say) and apply it."""
        self.write_config(self.orgs_yaml, self.extra_yaml, url)
        assert self.holder.reload(), self.holder.last_error

    def day(self, org: str = "acme", day: str | None = None) -> dict[str, int]:
        """The day's usage of an organization as ``"<dim>|<metric>"`` counters, from the
        ledger database (tests.support.ledgerkit.day_counters)."""
        from tollway.limits.meter import periods

        day = day or periods(self.clock.now_ms(), self.holder.current.server.tzinfo)[1]
        return self.run(day_counters(self.reader, org, day))

    def ledger(self, org: str = "acme", kind: str | None = None) -> list[dict[str, Any]]:
        """The organization's ledger events (of type `kind`), oldest first, from the ledger
        database after shipping what waits in Redis."""
        return self.run(ledger_events(self.reader, org, kind))

    def second_proxy(self) -> str:
        """Another proxy replica on the same store (its own process state): its URL."""
        store = self.run(self._store())
        app = create_app(self.holder, store, self.clock)
        runner = web.AppRunner(app, handler_cancellation=False)
        self.run(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.run(site.start())
        self._extra_runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    def reconfigure(self, orgs_yaml: str, extra_yaml: str = "") -> None:
        """Write a new config and apply it now (what the file watcher does)."""
        self.write_config(orgs_yaml, extra_yaml)
        assert self.holder.reload(), self.holder.last_error

    # --- helpers ---------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def fake_upstream(self) -> FakeUpstream:
        return self.fake

    @property
    def meter(self):
        return self.app[METER]

    @property
    def metrics(self):
        return self.app[METRICS]

    @property
    def keys(self) -> Keys:
        return self.store.keys

    def key(
        self,
        org: str = "acme",
        workspace: str | None = None,
        user: str | None = None,
        name: str = "test",
    ) -> str:
        apikeys = ApiKeys(self.store)
        _, secret = self.run(apikeys.create(org, self.clock.now_ms(), workspace, user, name))
        return secret

    def key_record(self, org: str = "acme", **kw: Any):
        apikeys = ApiKeys(self.store)
        return self.run(apikeys.create(org, self.clock.now_ms(), **kw))

    def openai(self, key: str, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def async_openai(self, key: str, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def anthropic(self, key: str, **kw: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=key, max_retries=0, **kw)

    def async_anthropic(self, key: str, **kw: Any) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.url, api_key=key, max_retries=0, **kw)

    def wait_settled(self, timeout: float = 10) -> None:
        """Wait until every settlement the proxy started has been written."""

        async def drain() -> None:
            settler = self.app[SETTLER]
            for _ in range(int(timeout * 100)):
                if not settler.pending:
                    # One more turn: a response may be finishing its settle right now.
                    await asyncio.sleep(0.01)
                    if not settler.pending:
                        return
                await asyncio.sleep(0.01)
            raise TimeoutError("settlements still running")

        self.run(drain(), timeout + 5)

    def snapshot(self, org: str = "acme") -> dict[str, Any]:
        """Every key of an organization with its value, to prove nothing changed; the
        ledger stream's value is the whole ledger (the database after shipping)."""
        out: dict[str, Any] = {self.keys.ledger(org): self.ledger(org)}
        for name in sorted(self.redis.scan_iter(match=f"{self.prefix}:{{{org}}}:*", count=1000)):
            kind = self.redis.type(name)
            if kind == "hash":
                out[name] = self.redis.hgetall(name)
            elif kind == "string":
                out[name] = self.redis.get(name)
            elif kind == "zset":
                out[name] = self.redis.zrange(name, 0, -1, withscores=True)
            elif kind == "set":
                out[name] = sorted(self.redis.smembers(name))
            elif kind == "stream":
                continue  # the ledger: read above
            else:
                out[name] = kind
        return out

    def close(self) -> None:
        for runner in self._extra_runners:
            self.run(runner.cleanup())
        self.run(self.runner.cleanup())
        self.run(self._metrics_runner.cleanup())
        self.run(self._fake_runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.redis.close()
