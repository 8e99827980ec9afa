"""`tollway developers`: what an active developer costs per day and per month, beside the
reference figures (`tollway.limits.developers`).

Exit codes as in `tollway.proxy.cli.common`: 2 for an unknown organization, workspace or
client, or a bad date; 3 the store is unavailable.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from tollway.config.schema import Config
from tollway.limits import reports
from tollway.limits.clock import SystemClock
from tollway.limits.developers import (
    REF_MEAN,
    REF_MONTH,
    REF_P90,
    DeveloperCost,
    developer_cost,
    report_workspace,
)
from tollway.limits.meter import periods
from tollway.limits.money import format_usd
from tollway.limits.store import Store
from tollway.proxy.cli.common import EXIT_USAGE, with_store
from tollway.proxy.cli.output import fail as _fail
from tollway.proxy.cli.output import format_table


def register(sub: Any) -> None:
    p = sub.add_parser(
        "developers",
        help="cost per active developer per day and per month",
        description="Active developers per day, mean and 90th percentile (nearest rank) of "
        "the daily cost per active developer, and the monthly cost per developer, beside "
        "the figures teams running coding assistants compare with ($6 a day on average, "
        "under $12 for 90 %%, $100-200 a month). A developer is a user of the organization.",
    )
    p.add_argument("--org", required=True, help="organization (from the config)")
    p.add_argument("--from", dest="start", metavar="DATE", help="first day (default: 29 days ago)")
    p.add_argument("--to", dest="end", metavar="DATE", help="last day, inclusive (default: today)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--workspace", help="only requests attributed to this workspace")
    scope.add_argument("--client", help="only a client's requests (its client workspace)")
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table for people (default) or json (micro-USD, with the reference figures)",
    )
    p.add_argument("--config", help="config file (default: $TOLLWAY_CONFIG, then ./tollway.yaml)")
    p.set_defaults(func=developers)


def developers(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
        if args.org not in cfg.organizations:
            return _fail(f"unknown organization {args.org!r}", EXIT_USAGE)
        today = periods(SystemClock().now_ms(), ZoneInfo(cfg.server.timezone))[1]
        try:
            o = cfg.organizations[args.org]
            ws = report_workspace(o, args.org, args.workspace, args.client)
            start, end = reports.date_range(args.start, args.end, date.fromisoformat(today))
        except (ValueError, reports.ReportError) as e:
            return _fail(str(e), EXIT_USAGE)
        r = await developer_cost(store.history, args.org, start.isoformat(), end.isoformat(), ws)
        print(json.dumps(r.to_dict(), indent=2) if args.format == "json" else table(r))
        return 0

    return with_store(args, go)


def table(r: DeveloperCost) -> str:
    where = f" in workspace {r.workspace}" if r.workspace else ""
    head = f"Cost per developer of {r.org}{where}, {r.start} to {r.end}"
    if not r.days:
        return head + "\n\nNo developer requests in this period."
    low, high = REF_MONTH
    summary = format_table(
        ["", "THIS ORGANIZATION", "REFERENCE"],
        [
            ["mean per developer-day", format_usd(r.mean_daily), "~" + usd(REF_MEAN)],
            ["p90 per developer-day", format_usd(r.p90_daily), "<" + usd(REF_P90)],
            ["per developer-month", format_usd(r.monthly), f"{usd(low)}-{usd(high)}"],
        ],
    )
    days = format_table(
        ["DAY", "ACTIVE DEVELOPERS", "COST", "MEAN PER DEVELOPER"],
        [
            [d.day, str(d.active_developers), format_usd(d.cost), format_usd(d.mean_cost)]
            for d in r.days
        ],
    )
    return (
        f"{head}\n{r.developers} developers active on {r.developer_days} developer-days, "
        f"{format_usd(r.cost)} in all\n\n{summary}\n\n{days}"
    )


def usd(micro: int) -> str:
    """Whole dollars for the reference figures ($6, not $6.000000)."""
    return f"${micro // 1_000_000}"
