"""The benchmark's tables: medians of the rounds, ratios to the direct and bare rows, and
the targets of issue 7 checked against them."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COLUMNS = [("rps", "req/s", 0), ("p50", "p50 ms", 2), ("p90", "p90 ms", 2),
           ("p99", "p99 ms", 2), ("cpu_ms", "CPU ms/req", 3), ("rss_mb", "RSS MB", 1)]  # fmt: skip
LATENCY = ("p50", "p90", "p99")


def aggregate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, row): the median of each figure over the rounds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault((s["scenario"], s["row"]), []).append(s)
    out = []
    for (scenario, row), ss in groups.items():
        agg: dict[str, Any] = {"scenario": scenario, "row": row, "rounds": len(ss)}
        for key in ("rps", "p50", "p90", "p99", "cpu_ms", "foreign_cores"):
            agg[key] = statistics.median(s[key] for s in ss)
        agg["rss_mb"] = max(s["rss_mb"] for s in ss)
        agg["rps_min"], agg["rps_max"] = min(s["rps"] for s in ss), max(s["rps"] for s in ss)
        redis = [s["redis_cpu_ms"] for s in ss if s["redis_cpu_ms"] is not None]
        agg["redis_cpu_ms"] = statistics.median(redis) if redis else None
        scripts = [s["script_ms_per_req"] for s in ss if s.get("script_ms_per_req")]
        agg["script_ms_per_req"] = statistics.median(scripts) if scripts else None
        agg["redis_calls_per_req"] = ss[-1]["redis_calls_per_req"]
        for key in ("commands_per_req", "reads_per_req"):
            vals = [s[key] for s in ss if s.get(key) is not None]
            agg[key] = statistics.median(vals) if vals else None
        agg["foreign_cores_max"] = max(s["foreign_cores"] for s in ss)
        agg["errors"] = sum(s.get("errors", 0) for s in ss)
        out.append(agg)
    return out


def _fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _row(r: dict[str, Any], name: str | None = None) -> str:
    label = name or r["row"]
    if r.get("errors"):
        label += f" ({r['errors']} errors/non-2xx)"
    cells = [label] + [_fmt(r[k], d) for k, _, d in COLUMNS]
    cells.append(_fmt(r["redis_cpu_ms"], 3))
    cells.append(_fmt(r.get("script_ms_per_req"), 3))
    cells.append(_fmt(r.get("commands_per_req"), 1))
    cells.append(_fmt(r.get("reads_per_req"), 2))
    cells.append(f"{r['foreign_cores']:.2f} (max {r['foreign_cores_max']:.2f})")
    return "| " + " | ".join(cells) + " |"


def _ratio_row(r: dict[str, Any], base: dict[str, Any], label: str) -> str:
    cells = [f"  ÷ {label}"]
    for k, _, _ in COLUMNS:
        cells.append(f"{r[k] / base[k]:.2f}" if base[k] else "-")
    return "| " + " | ".join(cells) + " | | | | | |"


def _delta_row(r: dict[str, Any], base: dict[str, Any], label: str) -> str:
    cells = [f"  - {label} (ms)", ""]
    cells += [f"{r[k] - base[k]:+.2f}" for k in LATENCY]
    return "| " + " | ".join(cells) + " | | | | | | | |"


def _get(results: dict[str, Any], scenario: str, row: str) -> dict[str, Any] | None:
    return next((r for r in results["rows"] if r["scenario"] == scenario and r["row"] == row), None)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of issue 7."""
    from bench.run import TARGETS as T

    out: list[tuple[str, str, bool | None]] = []
    bare, toll = _get(results, "json-c50", "bare"), _get(results, "json-c50", "tollway")
    if bare and toll:
        ratio = toll["rps"] / bare["rps"]
        out.append((f"throughput at c50 ≥ {T['c50_vs_bare']:.0%} of the bare proxy",
                    f"{ratio:.0%} ({toll['rps']:,.0f} vs {bare['rps']:,.0f} req/s)",
                    ratio >= T["c50_vs_bare"]))  # fmt: skip
    direct, toll1 = _get(results, "json-c1", "direct"), _get(results, "json-c1", "tollway")
    if direct and toll1:
        d50, d99 = toll1["p50"] - direct["p50"], toll1["p99"] - direct["p99"]
        out.append((f"added p50 at c1 ≤ {T['added_p50_ms']} ms", f"{d50:.2f} ms",
                    d50 <= T["added_p50_ms"]))  # fmt: skip
        out.append((f"added p99 at c1 ≤ {T['added_p99_ms']} ms", f"{d99:.2f} ms",
                    d99 <= T["added_p99_ms"]))  # fmt: skip
    if toll and toll.get("redis_calls_per_req"):
        calls = toll["redis_calls_per_req"]
        sha, ev = calls.get("evalsha", 0.0), calls.get("eval", 0.0)
        out.append(("Redis round trips per metered request: 2 script calls (EVALSHA), "
                    "nothing else (exact, with MONITOR: tests/e2e/test_roundtrips.py)",
                    f"EVALSHA {sha:.3f}/request, EVAL {ev:.3f} (server commandstats over "
                    "the c50 run; commands run inside the scripts are not round trips)",
                    abs(sha - 2) < 0.01 and ev == 0))  # fmt: skip
    if toll and toll.get("redis_cpu_ms") is not None:
        base = _get(results, "json-c50", "tollway-base") or {}
        was = f" (tollway-base {base['redis_cpu_ms']:.3f})" if base.get("redis_cpu_ms") else ""
        out.append(("Valkey CPU ≤ 0.1 ms per request (c50)",
                    f"{toll['redis_cpu_ms']:.3f} ms{was}",
                    toll["redis_cpu_ms"] <= 0.1))  # fmt: skip
    ttfb = results.get("ttfb")
    if ttfb:
        d = ttfb["tollway"]["p50"] - ttfb["bare"]["p50"]
        d99 = ttfb["tollway"]["p99"] - ttfb["bare"]["p99"]
        unbuffered = ttfb["first_event_before_second_chunk"]["tollway"]
        out.append((f"stream: first event within {T['ttfb_vs_bare_ms']} ms of the bare proxy "
                    "(p50), no buffering",
                    f"{d:+.2f} ms (p99 {d99:+.2f} ms); first event always before the "
                    f"upstream's 2nd chunk: {unbuffered}",
                    d <= T["ttfb_vs_bare_ms"] and unbuffered))  # fmt: skip
    lag = results.get("loop_lag")
    if lag:
        m = lag["big_prompt_requests"]["max_ms"]
        out.append((f"100k-token prompts hold the event loop ≤ {T['loop_lag_ms']} ms",
                    f"max loop lag {m:.2f} ms (estimate itself {lag['estimate_ms']:.2f} ms; "
                    f"exact tokenizing would take {lag['exact_tokenize_ms']:.0f} ms)",
                    m <= T["loop_lag_ms"]))  # fmt: skip
    rss = [r["rss_mb"] for r in results["rows"] if r["row"].startswith("tollway")]
    soak = results.get("soak")
    if soak:
        rss.append(max(p["rss_mb"] for p in soak["points"]))
    if rss:
        out.append((f"RSS ≤ {T['rss_mb']:.0f} MB per worker", f"max {max(rss):.1f} MB",
                    max(rss) <= T["rss_mb"]))  # fmt: skip
    if soak:
        a, b = soak["rss_at_10k"], soak["rss_at_end"]
        g = soak["growth"]
        out.append((f"RSS flat (±{T['rss_flat']:.0%}) from 10k to 200k requests",
                    f"{a['rss_mb']} MB at {a['requests']:,} → {b['rss_mb']} MB at "
                    f"{b['requests']:,} ({g:+.1%})",
                    abs(g) <= T["rss_flat"] and b["requests"] >= 200_000))  # fmt: skip
    two = _get(results, "json-c50", "tollwayx2")
    if two and toll:
        ratio = two["rps"] / toll["rps"]
        s1, s2 = _get(results, "stream-c20", "tollway"), _get(results, "stream-c20", "tollwayx2")
        extra = f"; streaming {s2['rps'] / s1['rps']:.2f}x" if s1 and s2 else ""
        out.append((f"2 workers ≥ {T['two_workers']}x one worker (c50)",
                    f"{ratio:.2f}x{extra}", ratio >= T["two_workers"]))  # fmt: skip
    return out


def markdown(results: dict[str, Any]) -> str:
    r = results
    lines = [
        f"# Tollway benchmark, {r['date']} ({r['mode']} run)",
        "",
        f"- Machine: {r['cores']} cores ({r['cpu_model']}), Python {r['python']}, "
        f"store: {r['store']}.",
        f"- Load average (1, 5, 15 min) before: {r['load_before']}; after: {r['load_after']}. "
        "The machine is shared: the *other load* column is the CPU (in cores) used by "
        "processes outside the benchmark during each run.",
        f"- CPU pinning (taskset): {r['layout']}.",
        f"- Each figure: the median of {r['rounds']} round(s) of {r['seconds_per_run']:g} s "
        "per row; rows alternate within a round. Latency is wrk's, in ms. CPU ms/req: "
        "utime+stime of the server's processes (the upstream's for *direct*) over the "
        "requests served. RSS: the largest serving process. Redis CPU: the Valkey process's "
        "utime+stime per request; scripts: the time Valkey spent running admit and settle "
        "per request (INFO commandstats); store cmds: the commands the scripts ran per "
        "request (INFO commandstats, EVALSHA itself not counted); store reads: the read "
        "events of the Valkey server per request (INFO stats total_reads_processed): the "
        "round trips of the row, counted by the server (a pipelined batch is one read, or "
        "a few when it exceeds the server's read buffer).",
        *[f"- Note: {n}" for n in r["notes"]],
        "",
    ]
    header = ["row"] + [h for _, h, _ in COLUMNS]
    header += ["Redis CPU ms/req", "scripts ms/req", "store cmds/req", "store reads/req"]
    header += ["other load"]
    for scenario in dict.fromkeys(x["scenario"] for x in r["rows"]):
        rows = [x for x in r["rows"] if x["scenario"] == scenario]
        direct = next((x for x in rows if x["row"] == "direct"), None)
        bare = next((x for x in rows if x["row"] == "bare"), None)
        lines += [f"## {scenario}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]  # fmt: skip
        for x in rows:
            lines.append(_row(x))
            if x["row"] != "direct" and direct:
                lines.append(_ratio_row(x, direct, "direct"))
            if x["row"] not in ("direct", "bare") and bare:
                lines.append(_ratio_row(x, bare, "bare"))
            if x["row"] != "direct" and direct:
                lines.append(_delta_row(x, direct, "direct"))
        lines.append("")
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, ok in targets(r):
        lines.append(f"| {name} | {measured} | {'yes' if ok else 'NO'} |")
    lines.append("")
    if r.get("ttfb"):
        t = r["ttfb"]
        lines += ["## Time to the first streamed event",
                  "",
                  f"{t['requests_per_target']} streamed requests per target, interleaved, one "
                  f"keep-alive connection each; the upstream waits {t['chunk_delay_ms']} ms "
                  "between content chunks.", "",
                  "| target | p50 ms | p90 ms | p99 ms | max ms |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name in ("direct", "bare", "tollway"):
            s = t[name]
            lines.append(f"| {name} | {s['p50']} | {s['p90']} | {s['p99']} | {s['max']} |")
        lines.append("")
    if r.get("loop_lag"):
        g = r["loop_lag"]
        lines += ["## Event-loop lag with 100k-token prompts", "",
                  f"Prompt: {g['prompt_tokens_exact']:,} tokens (cl100k), "
                  f"{g['prompt_bytes']:,} bytes; Tollway's estimate {g['estimate_tokens']:,} "
                  f"tokens in {g['estimate_ms']} ms (exact tokenizing: "
                  f"{g['exact_tokenize_ms']} ms). A probe task in the Tollway process sleeps "
                  "1 ms in a loop and records how late it wakes.", "",
                  "| window | wake-ups | p50 ms | p99 ms | max ms |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, label in (("idle", "idle, 2 s"), ("small_requests", "400 small requests"),
                            ("big_prompt_requests", f"{g['big_requests']} 100k-token "
                             "requests (half streamed), 2 at a time")):  # fmt: skip
            w = g[name]
            lines.append(f"| {label} | {w['count']} | {w['p50_ms']} | {w['p99_ms']} | "
                         f"{w['max_ms']} |")  # fmt: skip
        lines.append("")
    if r.get("soak"):
        lines += ["## RSS over a soak (fresh process, JSON c50 and stream c20 alternating)", "",
                  "| requests | RSS MB |", "|---|---|"]  # fmt: skip
        lines += [f"| {p['requests']:,} | {p['rss_mb']} |" for p in r["soak"]["points"]]
        bad = sum(p.get("errors", 0) for p in r["soak"]["points"])
        if bad:
            lines += ["", f"{bad} requests of the soak were answered with an error (non-2xx)."]
        lines.append("")
    if r.get("profiles"):
        lines += ["## Profiles (py-spy, Tollway one worker)", ""]
        for name, p in r["profiles"].items():
            lines += [f"### {name} ({p['samples']} samples, `{p['file']}`)", "",
                      "| inclusive % | function |", "|---|---|"]  # fmt: skip
            lines += [f"| {pct:.1f} | `{fn}` |" for fn, pct in p["top"]]
            lines.append("")
    return "\n".join(lines)


def write(results: dict[str, Any], stem: str | None = None) -> tuple[str, Path]:
    out = Path(stem) if stem else (
        HERE / "results" / (results["date"][:16].replace(":", "").replace("T", "-")
                            + "-" + results["mode"])
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    md = markdown(results)
    out.with_suffix(".md").write_text(md + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return md, out
