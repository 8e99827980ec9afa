"""`tollway reconcile` and `tollway ledger export`.

Exit codes as in `tollway.proxy.cli.main`: 0 ok (reconcile: no drift); 1 reconcile found a
difference between Redis and the ledger; 2 usage or config errors; 3 the store or the
ledger database is unavailable.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from tollway.config.schema import Config
from tollway.limits import export
from tollway.limits.history import history_of
from tollway.limits.money import format_usd
from tollway.limits.reconcile import reconcile
from tollway.limits.store import Store
from tollway.proxy.cli.output import fail as _fail

CONFIG_HELP = "config file (default: $TOLLWAY_CONFIG, then ./tollway.yaml)"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reconcile",
        help="recompute balances and month spend from the ledger and compare with Redis",
    )
    p.add_argument("--org", help="one organization (default: every configured one)")
    p.add_argument("--config", help=CONFIG_HELP)
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("ledger", help="the ledger database")
    ledger_sub = p.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND")
    e = ledger_sub.add_parser("export", help="a month's ledger events as CSV or Parquet")
    e.add_argument("--month", required=True, help="YYYY-MM, in server.timezone")
    e.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file format")
    e.add_argument("--org", help="one organization (default: all)")
    e.add_argument("--output", "-o", help="file to write (default: standard output)")
    e.add_argument("--config", help=CONFIG_HELP)
    e.set_defaults(func=cmd_export)


def _orgs(cfg: Config, org: str | None) -> list[str] | None:
    if org is None:
        return sorted(cfg.organizations)
    return [org] if org in cfg.organizations else None


def cmd_reconcile(args: Any) -> int:
    from tollway.proxy.cli.common import EXIT_REFUSED, EXIT_USAGE, with_store

    async def go(cfg: Config, store: Store) -> int:
        orgs = _orgs(cfg, args.org)
        if orgs is None:
            return _fail(f"unknown organization {args.org!r}", EXIT_USAGE)
        drifts = await reconcile(store, orgs)
        for d in drifts:
            print(
                f"DRIFT {d.org} {d.what}: redis {format_usd(d.redis)} "
                f"ledger {format_usd(d.ledger)} USD"
            )
        print(f"reconciled {len(orgs)} organization(s): {len(drifts)} difference(s)")
        return EXIT_REFUSED if drifts else 0

    return with_store(args, go)


def month_bounds(month: str, timezone: str) -> tuple[int, int]:
    """[start, end) in ms of calendar month ``YYYY-MM`` in `timezone`; ValueError if bad."""
    first = datetime.strptime(month, "%Y-%m").replace(tzinfo=ZoneInfo(timezone))
    year, m = (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
    after = first.replace(year=year, month=m)
    return int(first.timestamp() * 1000), int(after.timestamp() * 1000)


def cmd_export(args: Any) -> int:
    from tollway.proxy.cli.common import EXIT_USAGE, with_store

    async def go(cfg: Config, store: Store) -> int:
        orgs = _orgs(cfg, args.org)
        if orgs is None:
            return _fail(f"unknown organization {args.org!r}", EXIT_USAGE)
        try:
            start, end = month_bounds(args.month, cfg.server.timezone)
        except ValueError:
            return _fail(f"--month: expected YYYY-MM, got {args.month!r}", EXIT_USAGE)
        rows = await history_of(store).export_rows(start, end, args.org, orgs)
        if args.format == "csv":
            data = export.to_csv(rows).encode()
        else:
            try:
                data = export.to_parquet(rows)
            except ImportError:
                return _fail("parquet needs pyarrow: pip install 'tollway[parquet]'", EXIT_USAGE)
        if args.output:
            with open(args.output, "wb") as f:
                f.write(data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return 0

    return with_store(args, go)
