"""`tollway recommend --observed`: the recommended limits checked against reality. For an
organization, the busiest minute of a period (requests and tokens, from the ledger
database) divided by the users active in it, beside the recommended per-user range for
its team size (`tollway.limits.sizing`)."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from tollway.config.schema import Config
from tollway.limits import reports, sizing
from tollway.limits.clock import SystemClock
from tollway.limits.developers import observed_peak
from tollway.limits.meter import periods
from tollway.limits.store import Store
from tollway.proxy.cli.common import EXIT_USAGE, with_store
from tollway.proxy.cli.output import fail as _fail
from tollway.proxy.cli.output import format_table


def _within(value: Decimal, low: Decimal | int, high: Decimal | int) -> str:
    if value > high:
        return "above the range"
    return "below the range" if value < low else "within the range"


def observed(args: Any) -> int:
    async def go(cfg: Config, store: Store) -> int:
        if args.org not in cfg.organizations:
            return _fail(f"unknown organization {args.org!r}", EXIT_USAGE)
        today = periods(SystemClock().now_ms(), ZoneInfo(cfg.server.timezone))[1]
        try:
            start, end = reports.date_range(args.start, args.end, date.fromisoformat(today))
        except reports.ReportError as e:
            return _fail(str(e), EXIT_USAGE)
        peak = await observed_peak(store.history, args.org, start.isoformat(), end.isoformat())
        team = args.users if args.users is not None else peak.active_users
        try:
            r = sizing.recommend(max(team, 1))
        except ValueError as e:
            return _fail(str(e), EXIT_USAGE)
        tpm, rpm = (
            peak.tpm_per_user.quantize(Decimal(1)),
            peak.rpm_per_user.quantize(Decimal("0.01")),
        )
        if args.format == "json":
            print(
                json.dumps(
                    {
                        "org": args.org,
                        "from": start.isoformat(),
                        "to": end.isoformat(),
                        "active_users": peak.active_users,
                        "team_size": team,
                        "peak_rpm": peak.peak_rpm,
                        "peak_tpm": peak.peak_tpm,
                        "per_user": {"tpm": str(tpm), "rpm": str(rpm)},
                        "recommended_per_user": {
                            "tpm": list(r.user_tpm),
                            "rpm": [str(v) for v in r.user_rpm],
                        },
                    },
                    indent=2,
                )
            )
            return 0
        rows = [
            [
                "TPM",
                f"{peak.peak_tpm:,}",
                f"{tpm:,}",
                f"{r.user_tpm[0]:,}-{r.user_tpm[1]:,}",
                _within(tpm, *r.user_tpm),
            ],
            [
                "RPM",
                f"{peak.peak_rpm:,}",
                str(rpm),
                f"{r.user_rpm[0]}-{r.user_rpm[1]}",
                _within(rpm, *r.user_rpm),
            ],
        ]
        print(
            f"Observed peak of {args.org}, {start} to {end}: {peak.active_users} active users "
            f"(team size used: {team}, table row {r.row})\n\n"
            + format_table(
                ["", "BUSIEST MINUTE", "PER ACTIVE USER", "RECOMMENDED PER USER", ""], rows
            )
        )
        return 0

    return with_store(args, go)
