"""The Redis-compatible store: one client, the registered Lua scripts, one error type.

Every Redis error that means "the store is not there" (connection refused or reset,
timeout, cluster down, loading, BUSY running a script past its time limit) or "it cannot
take writes now" (out of memory, a replica that became read-only in a failover, MISCONF
after a failed snapshot, NOREPLICAS) is raised as `StoreUnavailable`, so callers apply one
named policy (`store.on_unavailable`). Scripts are loaded once and run with EVALSHA; a
server that lost its script cache (restart, failover) gets them loaded again on the spot.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis, RedisCluster
from tollway.limits.batch import UNAVAILABLE as _UNAVAILABLE
from tollway.limits.batch import ScriptBatcher, batchable, unavailable_reply
from tollway.limits.connect import connect
from tollway.limits.errors import StoreUnavailable
from tollway.limits.rkeys import Keys

SCRIPT_NAMES = ("admit", "settle", "add_lot", "expire", "reload_lock", "release")
# The per-request scripts: batched on the lean path (`tollway.limits.batch`) where it can.
HOT_SCRIPTS = frozenset({"admit", "settle"})


def load_script(name: str) -> str:
    """The source of a script: common.lua followed by ``<name>.lua``."""
    folder = resources.files("tollway.limits") / "scripts"
    common = (folder / "common.lua").read_text(encoding="utf-8")
    return common + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")


class Script:
    def __init__(self, name: str) -> None:
        self.name = name
        self.source = load_script(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


# Observer of every store call: (operation, seconds, failed). Metrics plug in here.
Observer = Callable[[str, float, bool], None]


class Store:
    """A client and the scripts. `client` may be a Redis or a RedisCluster client."""

    def __init__(self, client: Redis | RedisCluster, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.scripts = {name: Script(name) for name in SCRIPT_NAMES}
        self.observers: list[Observer] = []
        # The ledger database's reader (tollway.limits.history.History), attached by whoever
        # opens both: reports, statements and the ledger replay read it.
        self.history: Any = None
        # Round trips to the store made by this process (a pipelined batch counts one).
        self.round_trips = 0
        self.batcher: ScriptBatcher | None = ScriptBatcher(self) if batchable(client) else None

    @classmethod
    def from_url(cls, url: str, keys: Keys | None = None, timeout: float = 0.5) -> Store:
        """A store on `url`: redis://, rediss://, unix://, redis+sentinel://, redis+cluster://
        (see `tollway.limits.connect`)."""
        return cls(connect(url, timeout), keys)

    async def close(self) -> None:
        await self.client.aclose()

    def _observe(self, op: str, started: float, failed: bool) -> None:
        elapsed = time.perf_counter() - started
        for observe in self.observers:
            observe(op, elapsed, failed)

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a registered script (one round trip; two only after a script-cache miss).

        The admit and settle scripts go through the batcher on a single-server client:
        concurrent calls then share one round trip, each still run on its own, in order."""
        if self.batcher is not None and name in HOT_SCRIPTS:
            return await self.batcher.run(self.scripts[name], keys, args)
        return await self.run_direct(name, keys, args)

    async def run_direct(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """`run` on the general client, alone (EVALSHA, and EVAL after a cache miss)."""
        script = self.scripts[name]
        self.round_trips += 1
        started = time.perf_counter()
        try:
            try:
                result = await self.client.evalsha(script.sha, len(keys), *keys, *args)
            except rexc.NoScriptError:
                self.round_trips += 1
                result = await self.client.eval(script.source, len(keys), *keys, *args)
        except _UNAVAILABLE as e:
            self._observe(name, started, True)
            raise StoreUnavailable(f"store unavailable during {name}: {e}") from e
        except rexc.ResponseError as e:
            if not unavailable_reply(e):
                raise
            self._observe(name, started, True)
            raise StoreUnavailable(f"store unavailable during {name}: {e}") from e
        self._observe(name, started, False)
        return result

    async def call(self, op: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one plain client call, with the same error wrapping and timing as `run`."""
        started = time.perf_counter()
        self.round_trips += 1
        try:
            result = await fn(*args, **kwargs)
        except _UNAVAILABLE as e:
            self._observe(op, started, True)
            raise StoreUnavailable(f"store unavailable during {op}: {e}") from e
        except rexc.ResponseError as e:
            if not unavailable_reply(e):
                raise
            self._observe(op, started, True)
            raise StoreUnavailable(f"store unavailable during {op}: {e}") from e
        self._observe(op, started, False)
        return result

    async def load_scripts(self) -> None:
        """Load every script into the server's cache (start-up; failures are not fatal)."""
        for script in self.scripts.values():
            await self.call("script_load", self.client.script_load, script.source)

    async def ping(self) -> bool:
        try:
            await self.call("ping", self.client.ping)
        except StoreUnavailable:
            return False
        return True
