"""The month-end usage statement of an organization, per user and in total.

Built from the month-to-date hash ``mtd:<YYYY-MM>`` (the counters that caps are checked
against) and cross-checked against the ledger database's ``debit`` events whose time falls
in that month (of the configured time zone): the statement is what settle.lua summed, and
`Statement.consistent` says whether the request-by-request record agrees to the
micro-USD: True or False, or None when the ledger does not hold the whole month (events
folded away by a version that kept the ledger only in Redis; the account's
``ledger_folded_ts`` says how far). Pure functions here; `tollway.limits.spend.Spend.statement`
reads the data.

Contracts (money in integer micro-USD):

- one line per user with spend in the month, sorted by user; spend by keys without a user
  (service keys) is one line with ``user`` None;
- ``spend = included + extra`` on every line and in the total; the lines add up to the
  organization's totals exactly;
- ``amount_due`` is the extra usage to invoice: the total extra of a postpaid organization,
  0 for a prepaid one (its extra usage was debited from credits as it happened);
- ``final`` is False while the month is not over (the statement can still grow).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from tollway.limits.money import format_usd
from tollway.limits.rkeys import Fields, Scope


@dataclass(frozen=True, slots=True)
class StatementLine:
    user: str | None  # None: keys without a user
    seat: str | None
    requests: int  # billed requests (from the ledger)
    spend: int
    included: int
    extra: int


@dataclass(frozen=True, slots=True)
class Statement:
    org: str
    month: str  # YYYY-MM
    timezone: str
    billing_mode: str  # prepaid | postpaid
    period_start_ms: int
    period_end_ms: int
    final: bool
    lines: tuple[StatementLine, ...]
    requests: int
    spend: int
    included: int
    extra: int
    amount_due: int
    ledger_spend: int  # sum of the month's debit events
    ledger_extra: int
    consistent: bool | None  # the ledger agrees, line by line (None: could not check)
    discrepancies: tuple[str, ...] = ()
    ledger_complete: bool = True  # False: events of the month were folded away

    def to_dict(self) -> dict:
        return asdict(self)


def _counters(month_hash: Mapping[str, str | int], scope: str) -> tuple[int, int]:
    spend, extra = Fields.spend(scope), Fields.extra(scope)
    return int(month_hash.get(spend, 0)), int(month_hash.get(extra, 0))


def build_statement(
    *,
    org: str,
    month: str,
    timezone: str,
    billing_mode: str,
    period: tuple[int, int],
    now_ms: int,
    month_hash: Mapping[str, str | int],
    ledger: Mapping[str | None, tuple[int, int, int]],
    seats: Mapping[str, str | None],
    ledger_folded_ts: int = 0,
) -> Statement:
    """The statement of `org` for `month` from its month hash and its ledger: user (None:
    keys without a user) → (debit events, cost, extra) of the period. `seats`: user → seat
    tier name, for display. `ledger_folded_ts`: the time of the newest event folded out
    of the ledger (0: none); from `period`'s start on, the cross-check is not made."""
    start, end = period
    users = sorted(
        {
            Scope.split(scope)[1]
            for kind, scope in map(Fields.split, month_hash)
            if kind in ("spend", "extra") and Scope.split(scope)[0] == "user"
        }
    )
    by_user = {user: list(row) for user, row in ledger.items()}  # [requests, cost, extra]

    lines: list[StatementLine] = []
    problems: list[str] = []
    for user in users:
        spend, extra = _counters(month_hash, f"user={user}")
        n, lspend, lextra = by_user.get(user, [0, 0, 0])
        if (lspend, lextra) != (spend, extra):
            problems.append(
                f"user {user!r}: counters {format_usd(spend)}/{format_usd(extra)} extra, "
                f"ledger {format_usd(lspend)}/{format_usd(lextra)} extra"
            )
        lines.append(StatementLine(user, seats.get(user), n, spend, spend - extra, extra))
    spend, extra = _counters(month_hash, "org")
    rest_spend = spend - sum(line.spend for line in lines)
    rest_extra = extra - sum(line.extra for line in lines)
    n_rest, lspend, lextra = by_user.get(None, [0, 0, 0])
    if (lspend, lextra) != (rest_spend, rest_extra):
        problems.append(
            f"keys without a user: counters {format_usd(rest_spend)}/{format_usd(rest_extra)} "
            f"extra, ledger {format_usd(lspend)}/{format_usd(lextra)} extra"
        )
    problems += [
        f"user {user!r}: in the ledger but not in the month counters"
        for user in by_user
        if user is not None and user not in users
    ]
    if rest_spend or rest_extra or n_rest:
        lines.append(
            StatementLine(None, None, n_rest, rest_spend, rest_spend - rest_extra, rest_extra)
        )
    complete = ledger_folded_ts < start
    ledger_spend = sum(row[1] for row in by_user.values())
    ledger_extra = sum(row[2] for row in by_user.values())
    if (ledger_spend, ledger_extra) != (spend, extra):
        problems.append(
            f"organization: counters {format_usd(spend)}/{format_usd(extra)} extra, "
            f"ledger {format_usd(ledger_spend)}/{format_usd(ledger_extra)} extra"
        )
    return Statement(
        org=org,
        month=month,
        timezone=timezone,
        billing_mode=billing_mode,
        period_start_ms=start,
        period_end_ms=end,
        final=now_ms >= end,
        lines=tuple(lines),
        requests=sum(line.requests for line in lines),
        spend=spend,
        included=spend - extra,
        extra=extra,
        amount_due=extra if billing_mode == "postpaid" else 0,
        ledger_spend=ledger_spend,
        ledger_extra=ledger_extra,
        consistent=(not problems) if complete else None,
        discrepancies=tuple(problems) if complete else (),
        ledger_complete=complete,
    )


CSV_COLUMNS = ("user", "seat", "requests", "spend_usd", "included_usd", "extra_usd")


def statement_csv(st: Statement) -> str:
    """CSV: one row per line and a TOTAL row; money as exact USD text."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for line in st.lines:
        w.writerow(
            [
                line.user if line.user is not None else "(keys without a user)",
                line.seat or "",
                line.requests,
                format_usd(line.spend),
                format_usd(line.included),
                format_usd(line.extra),
            ]
        )
    w.writerow(
        [
            "TOTAL",
            "",
            st.requests,
            format_usd(st.spend),
            format_usd(st.included),
            format_usd(st.extra),
        ]
    )
    return out.getvalue()
