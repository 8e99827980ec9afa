"""`tollway usage`, `tollway session`, `tollway sessions` and `tollway recommend`.

Exit codes as in `tollway.proxy.cli.common`: 0 ok; 1 refused (no such session); 2 usage or
config errors (unknown organization, bad date, bad number of users); 3 the store is unavailable.
``--format json`` (and ``csv`` for usage, ``yaml`` for recommend) print only the data, for
pipes; ``table`` is for people.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from tollway.config.schema import Config
from tollway.limits import reports, sizing
from tollway.limits.apikeys import ApiKeys
from tollway.limits.clock import SystemClock
from tollway.limits.meter import periods
from tollway.limits.money import format_usd
from tollway.limits.store import Store
from tollway.proxy.cli.common import EXIT_REFUSED, EXIT_USAGE, with_store
from tollway.proxy.cli.observed import observed
from tollway.proxy.cli.output import fail as _fail
from tollway.proxy.cli.output import format_table

CONFIG_HELP = "config file (default: $TOLLWAY_CONFIG, then ./tollway.yaml)"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "usage",
        help="usage and cost report of an organization",
        description="Spend, tokens and requests of an organization over a date range "
        "(days of server.timezone), grouped one way. Requests count every forwarded "
        "request; failures are the failed ones among them (never charged).",
    )
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument(
        "--by",
        choices=reports.GROUPINGS,
        default="day",
        help="one row per day (default), organization, workspace, user, key or model; "
        "requests without a workspace/user are one '(none)' row",
    )
    p.add_argument(
        "--from",
        dest="start",
        metavar="DATE",
        help="first day, YYYY-MM-DD (default: 29 days before --to)",
    )
    p.add_argument(
        "--to", dest="end", metavar="DATE", help="last day, inclusive, YYYY-MM-DD (default: today)"
    )
    p.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="table for people (default), csv or json to export",
    )
    p.add_argument("--config", help=CONFIG_HELP)
    p.set_defaults(func=usage)

    p = sub.add_parser(
        "session",
        help="cost report of a session (like /cost)",
        description="Total cost, API time (sum of upstream time), wall time (first "
        "request's start to last request's end), tokens by kind and by model, and requests "
        "of the requests that carried this session id (header x-tollway-session, or Claude "
        "Code's session header). `tollway sessions --org ORG` lists recent ones.",
    )
    p.add_argument("session_id", metavar="SESSION_ID", help="the session id the client sent")
    p.add_argument("--org", help="look only in this organization (default: every one)")
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table for people (default) or json",
    )
    p.add_argument("--config", help=CONFIG_HELP)
    p.set_defaults(func=session)

    p = sub.add_parser(
        "sessions",
        help="an organization's recent sessions",
        description="The most recent sessions of an organization (by their last request), "
        "newest first, with requests, wall time, models and cost; `tollway session ID` "
        "gives one in full.",
    )
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument("--limit", type=int, default=20, help="how many sessions (default: 20)")
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table for people (default) or json",
    )
    p.add_argument("--config", help=CONFIG_HELP)
    p.set_defaults(func=sessions)

    p = sub.add_parser(
        "recommend",
        help="recommended TPM/RPM limits for a team of N users",
        description="Per-user and organization TPM/RPM for a team of N users, from the "
        "table of recommended per-user limits, with the YAML to paste.",
    )
    p.add_argument(
        "--users",
        type=int,
        metavar="N",
        help="how many people will use the organization (with --observed: default, the "
        "users active in the period)",
    )
    p.add_argument("--org", default="my-org", help="organization name used in the YAML")
    p.add_argument(
        "--observed",
        action="store_true",
        help="check against reality: the organization's busiest minute per active user over "
        "--from/--to (default: the last 30 days), beside the recommended range",
    )
    p.add_argument("--from", dest="start", metavar="DATE", help="with --observed: first day")
    p.add_argument("--to", dest="end", metavar="DATE", help="with --observed: last day")
    p.add_argument(
        "--format",
        choices=("table", "yaml", "json"),
        default="table",
        help="table: explanation and YAML (default); yaml: only the YAML; json: the numbers",
    )
    # Accepted like every command's, so scripts can pass it everywhere; the table of
    # recommended limits does not depend on the config, which is not read.
    p.add_argument("--config", help=CONFIG_HELP + "; not needed: recommend reads no config")
    p.set_defaults(func=recommend)


# --- usage ------------------------------------------------------------------------------


def usage(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
        if args.org not in cfg.organizations:
            known = ", ".join(sorted(cfg.organizations)) or "none"
            return _fail(f"unknown organization {args.org!r} (known: {known})", EXIT_USAGE)
        today = periods(SystemClock().now_ms(), ZoneInfo(cfg.server.timezone))[1]
        try:
            start, end = reports.date_range(args.start, args.end, date.fromisoformat(today))
        except reports.ReportError as e:
            return _fail(str(e), EXIT_USAGE)
        report = await reports.usage_report(store, args.org, args.by, start, end)
        if args.by == "key":
            reports.name_keys(report, await ApiKeys(store).names(args.org))
        if args.format == "json":
            print(reports.to_json(report))
        elif args.format == "csv":
            sys.stdout.write(reports.to_csv(report))
        else:
            print(usage_table(report, cfg.server.timezone))
        return 0

    return with_store(args, go)


def usage_table(report: reports.UsageReport, timezone: str) -> str:
    head = f"Usage of {report.org} by {report.by}, {report.start} to {report.end} ({timezone})"
    if not report.rows:
        return head + "\n\nNo metered requests in this period."
    headers = [
        report.by.upper(),
        "REQUESTS",
        "FAILED",
        "INPUT",
        "OUTPUT",
        "CACHE WRITE",
        "CACHE READ",
        "COST (USD)",
    ]

    def cells(group: str, t: reports.Totals) -> list[str]:
        counts = (
            t.requests,
            t.failures,
            t.input_tokens,
            t.output_tokens,
            t.cache_write_tokens,
            t.cache_read_tokens,
        )
        return [group, *(f"{n:,}" for n in counts), format_usd(t.cost)]

    def label(r: reports.UsageRow) -> str:
        group = r.group if r.group is not None else "(none)"
        return f"{group} ({r.name})" if r.name else group

    rows = [cells(label(r), r.totals) for r in report.rows]
    rows.append(cells("TOTAL", report.total))
    return head + "\n\n" + format_table(headers, rows, range(1, 8))


# --- session ----------------------------------------------------------------------------


def duration(ms: int) -> str:
    """4200 → "4.2s"; 63000 → "1m 3s"; 3723000 → "1h 2m 3s"."""
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    hours, rest = divmod(ms // 1000, 3600)
    minutes, seconds = divmod(rest, 60)
    return (f"{hours}h " if hours else "") + f"{minutes}m {seconds}s"


def _tokens(n: int) -> str:
    return f"{n:,}"


def _kinds(input_: int, output: int, cache_read: int, cache_write: int) -> str:
    """Token counts in the order a coding assistant's /cost prints them."""
    return (
        f"{_tokens(input_)} input, {_tokens(output)} output, "
        f"{_tokens(cache_read)} cache read, {_tokens(cache_write)} cache write"
    )


def session_text(s: reports.SessionReport) -> str:
    first = datetime.fromtimestamp(s.first_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    failed = f" ({s.failures:,} failed, not charged)" if s.failures else ""
    lines = [
        f"Session {s.session_id} ({s.org}, started {first})",
        f"Total cost:            ${format_usd(s.cost)}",
        f"Total duration (API):  {duration(s.api_ms)}",
        f"Total duration (wall): {duration(s.wall_ms)}",
        "Usage:                 "
        + _kinds(s.input_tokens, s.output_tokens, s.cache_read_tokens, s.cache_write_tokens),
        f"Requests:              {s.requests:,}{failed}",
    ]
    if s.models:
        lines.append("Usage by model:")
        width = max(len(m.model) for m in s.models) + 1
        for m in s.models:
            kinds = _kinds(
                m.input_tokens, m.output_tokens, m.cache_read_tokens, m.cache_write_tokens
            )
            lines.append(f"  {m.model + ':':<{width}}  {kinds} (${format_usd(m.cost)})")
    return "\n".join(lines)


def session(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
        if args.org is not None and args.org not in cfg.organizations:
            return _fail(f"unknown organization {args.org!r}", EXIT_USAGE)
        orgs = [args.org] if args.org else list(cfg.organizations)
        found = await reports.find_sessions(store, orgs, args.session_id)
        if not found:
            where = f"organization {args.org!r}" if args.org else "any organization"
            return _fail(f"no session {args.session_id!r} in {where}", EXIT_REFUSED)
        if args.format == "json":
            print(json.dumps({"sessions": [s.as_dict() for s in found]}, indent=2))
        else:
            print("\n\n".join(session_text(s) for s in found))
        return 0

    return with_store(args, go)


def sessions(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
        if args.org not in cfg.organizations:
            known = ", ".join(sorted(cfg.organizations)) or "none"
            return _fail(f"unknown organization {args.org!r} (known: {known})", EXIT_USAGE)
        if args.limit < 1:
            return _fail("--limit must be at least 1", EXIT_USAGE)
        found = await reports.list_sessions(store, args.org, args.limit)
        if args.format == "json":
            print(json.dumps({"sessions": [s.as_dict() for s in found]}, indent=2))
            return 0
        if not found:
            print(f"{args.org}: no sessions")
            return 0
        rows = [
            [
                s.session_id,
                datetime.fromtimestamp(s.last_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
                f"{s.requests:,}",
                duration(s.wall_ms),
                ", ".join(m.model for m in s.models) or "-",
                format_usd(s.cost),
            ]
            for s in found
        ]
        headers = ["SESSION", "LAST REQUEST", "REQUESTS", "WALL", "MODELS", "COST (USD)"]
        print(format_table(headers, rows, (2, 3, 5)))
        return 0

    return with_store(args, go)


# --- recommend --------------------------------------------------------------------------


def _num(value: Decimal | int) -> str:
    if isinstance(value, int):
        return str(value)
    return format(value.normalize(), "f")


def _json(value: Decimal | int) -> int | float:
    """A JSON number; a float's shortest repr gives back the exact decimal text (0.47)."""
    if isinstance(value, int) or value == value.to_integral():
        return int(value)
    return float(value)


def recommend_yaml(r: sizing.Recommendation, org: str) -> str:
    o, u = r.limits["organization"], r.limits["per_user"]
    return (
        f"organizations:\n"
        f"  {org}:\n"
        f"    # {r.users} users x {_num(u['tpm'])} TPM and {_num(u['rpm'])} RPM, shared\n"
        f"    limits: {{rpm: {_num(o['rpm'])}, tpm: {o['tpm']}}}\n"
        f"    # optional, per user, so that no single user takes the whole budget:\n"
        f"    # users:\n"
        f"    #   alice: {{limits: {{rpm: {_num(u['rpm'])}, tpm: {u['tpm']}}}}}\n"
    )


def recommend_text(r: sizing.Recommendation, org: str) -> str:
    def span(low: Decimal | int, high: Decimal | int) -> str:
        fmt = (lambda v: f"{v:,}") if isinstance(low, int) else _num
        return f"{fmt(low)}-{fmt(high)}"

    rows = [
        ["TPM", span(*r.user_tpm), span(*r.org_tpm)],
        ["RPM", span(*r.user_rpm), span(*r.org_rpm)],
    ]
    table = format_table(["", "PER USER", f"ORGANIZATION ({r.users:,} users)"], rows)
    return (
        f"Recommended limits for {r.users:,} users (table row: {r.row} users)\n\n{table}\n\n"
        "The organization limit is shared by everyone in it. It is the number of users\n"
        "times the per-user figure, but nobody is held to an equal share: one person can\n"
        "burst well above it while others are idle. Per-user shares fall as teams grow\n"
        "because fewer people are active at the same moment. Per-user limits are optional:\n"
        "they only stop one user from taking the whole organization's budget.\n\n"
        "Paste into your config (the upper end of each range):\n\n" + recommend_yaml(r, org)
    )


def recommend(args: Any) -> int:
    if args.observed:
        return observed(args)
    if args.users is None:
        return _fail("recommend needs --users N (or --observed --org ORG)", EXIT_USAGE)
    try:
        r = sizing.recommend(args.users)
    except ValueError as e:
        return _fail(str(e), EXIT_USAGE)
    if args.format == "yaml":
        sys.stdout.write(recommend_yaml(r, args.org))
    elif args.format == "json":
        out = {
            "users": r.users,
            "row": r.row,
            "per_user": {"tpm": list(r.user_tpm), "rpm": [_json(v) for v in r.user_rpm]},
            "organization": {"tpm": list(r.org_tpm), "rpm": [_json(v) for v in r.org_rpm]},
            "recommended": {k: {n: _json(v) for n, v in d.items()} for k, d in r.limits.items()},
            "yaml": recommend_yaml(r, args.org),
        }
        print(json.dumps(out, indent=2))
    else:
        print(recommend_text(r, args.org))
    return 0
