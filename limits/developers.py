"""Cost per developer: what an active developer costs per day and per month, beside the
figures teams running coding assistants compare themselves with, and the traffic one
active developer really produces beside the recommended limits (`tollway.limits.sizing`).

Read from the ledger database (`tollway.limits.history`): a *developer* is a user of the
organization (requests by keys without a user are not a developer's); a developer is
*active* on a day when they sent at least one settled request that day (failed ones too:
they were working). Days are the server's local dates, as settle wrote them.

- mean daily cost: total cost of the developer-days / number of developer-days;
- p90 daily cost: the nearest-rank 90th percentile of the developer-days' costs (the
  smallest cost at or above which 90 % of developer-days lie: sorted ascending, the value at
  rank ceil(0.9 · n));
- monthly cost per developer: the mean over (developer, calendar month) pairs with
  activity of that developer's cost in that month.

Money is integer micro-USD; a mean is rounded with the one rule of `tollway.limits.money`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from tollway.config.schema import Organization
from tollway.limits.history import SETTLED_SQL, History
from tollway.limits.money import div_half_up

# The cost guidance for teams running Claude Code: about $6 per developer per day on
# average, under $12 a day for 90 % of users, $100-200 per developer per month.
REF_MEAN, REF_P90, REF_MONTH = 6_000_000, 12_000_000, (100_000_000, 200_000_000)
REFERENCE = {
    "mean_daily_micro": REF_MEAN,
    "p90_daily_micro": REF_P90,
    "monthly_micro": list(REF_MONTH),
}


@dataclass(frozen=True, slots=True)
class Day:
    day: str
    active_developers: int
    cost: int
    mean_cost: int  # per active developer


@dataclass(frozen=True, slots=True)
class DeveloperCost:
    org: str
    start: str
    end: str
    workspace: str | None
    developers: int  # distinct active developers in the period
    developer_days: int
    cost: int
    mean_daily: int
    p90_daily: int
    monthly: int
    days: list[Day]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reference": REFERENCE}


def mean(total: int, n: int) -> int:
    """total / n in micro-USD, rounded by the one rule (0 when n is 0)."""
    return div_half_up(total, n) if n else 0


def p90(costs: list[int]) -> int:
    """Nearest-rank 90th percentile (0 for no values)."""
    if not costs:
        return 0
    ordered = sorted(costs)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


def report_workspace(
    org_cfg: Organization, org: str, workspace: str | None, client: str | None
) -> str | None:
    """The workspace a report is limited to: `workspace`, or a client's client workspace
    (None: the whole organization). ValueError names what the organization lacks."""
    if client is not None:
        if client not in org_cfg.client_workspaces:
            raise ValueError(f"organization {org!r} has no client workspace for {client!r}")
        return org_cfg.client_workspaces[client]
    if workspace is not None and workspace not in org_cfg.workspaces:
        raise ValueError(f"unknown workspace {workspace!r} in organization {org!r}")
    return workspace


async def developer_cost(
    history: History, org: str, start: str, end: str, workspace: str | None = None
) -> DeveloperCost:
    """Cost per active developer of `org` from `start` to `end` (ISO dates, inclusive),
    optionally only in `workspace` (a client workspace: the assistant's own spend)."""
    await history.catch_up([org])
    where = f"org = ? AND day >= ? AND day <= ? AND {SETTLED_SQL} AND user_id IS NOT NULL"
    where += " AND user_id <> ''"
    params: list[Any] = [org, start, end]
    if workspace is not None:
        where += " AND workspace = ?"
        params.append(workspace)
    rows = await history.db.fetch(
        f"SELECT day, user_id, SUM(cost) FROM ledger_events WHERE {where} "
        "GROUP BY day, user_id ORDER BY day, user_id",
        *params,
    )
    by_day: dict[str, list[int]] = defaultdict(list)
    by_month: dict[tuple[str, str], int] = defaultdict(int)
    for day, user, cost in rows:
        by_day[day].append(int(cost or 0))
        by_month[(user, day[:7])] += int(cost or 0)
    costs = [c for day_costs in by_day.values() for c in day_costs]
    total = sum(costs)
    days = [Day(d, len(cs), sum(cs), mean(sum(cs), len(cs))) for d, cs in sorted(by_day.items())]
    return DeveloperCost(
        org=org,
        start=start,
        end=end,
        workspace=workspace,
        developers=len({user for user, _ in by_month}),
        developer_days=len(costs),
        cost=total,
        mean_daily=mean(total, len(costs)),
        p90_daily=p90(costs),
        monthly=mean(sum(by_month.values()), len(by_month)),
        days=days,
    )


@dataclass(frozen=True, slots=True)
class ObservedPeak:
    """The busiest minute of a period, per active user."""

    active_users: int
    peak_rpm: int  # requests in the busiest minute (by requests)
    peak_tpm: int  # input + output tokens in the busiest minute (by tokens)
    rpm_per_user: Decimal
    tpm_per_user: Decimal


async def observed_peak(history: History, org: str, start: str, end: str) -> ObservedPeak:
    """Peak RPM and TPM of `org`'s settled requests from `start` to `end` (inclusive days),
    each divided by the users active in the period."""
    await history.catch_up([org])
    where = f"org = ? AND day >= ? AND day <= ? AND {SETTLED_SQL}"
    per_minute = await history.db.fetch(
        "SELECT ts / 60000, COUNT(*), SUM(input_tokens + cache_write_tokens + output_tokens) "
        f"FROM ledger_events WHERE {where} GROUP BY ts / 60000",
        org,
        start,
        end,
    )
    users = await history.db.fetch(
        f"SELECT COUNT(DISTINCT user_id) FROM ledger_events WHERE {where} "
        "AND user_id IS NOT NULL AND user_id <> ''",
        org,
        start,
        end,
    )
    active = int(users[0][0] or 0) if users else 0
    rpm = max((int(r[1]) for r in per_minute), default=0)
    tpm = max((int(r[2] or 0) for r in per_minute), default=0)
    share = max(active, 1)
    return ObservedPeak(active, rpm, tpm, Decimal(rpm) / share, Decimal(tpm) / share)
