"""Usage, cost and session reports, read from the ledger database (SQL aggregates over one
event per settled request; `tollway.limits.history`).

Contracts:

- ``usage_report`` groups by ``org``, ``workspace``, ``user``, ``key``, ``model`` or
  ``day`` (the day of the server's time zone on which the request settled); every row's
  numbers are sums over the inclusive date range. Requests made without a workspace (or
  user) are gathered in one row whose ``group`` is None, so that the rows of every
  grouping add up to the organization's total.
- ``requests`` counts every forwarded metered request (successful or failed);
  ``failures`` the failed ones, which are never charged. Refused requests are not counted.
- Money is integer micro-USD; ``to_csv``/``to_json`` also write it as exact USD text.
- Sessions: requests carrying a session id, summed (``find_sessions``).
- Events still waiting in Redis are shipped before a report is read, so a report includes
  every request settled before it was asked.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from typing import Any

import orjson
from tollway.limits.history import SessionSums, UsageSums, history_of
from tollway.limits.money import format_usd
from tollway.limits.store import Store

GROUPINGS = ("org", "workspace", "user", "key", "model", "day")
MAX_DAYS = 400  # the longest range one report covers


class ReportError(ValueError):
    """A report asked with bad arguments (unknown grouping, bad or too long date range)."""


@dataclass(slots=True)
class Totals:
    """Counters of one row. ``requests`` includes ``failures``."""

    requests: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost: int = 0  # micro-USD

    def add(self, other: Totals) -> None:
        for f in fields(Totals):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def minus(self, other: Totals) -> Totals:
        out = Totals()
        for f in fields(Totals):
            setattr(out, f.name, getattr(self, f.name) - getattr(other, f.name))
        return out

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) == 0 for f in fields(Totals))

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(Totals) if f.name != "cost"}
        return {**out, "cost_micro": self.cost, "cost_usd": format_usd(self.cost)}


@dataclass(slots=True)
class UsageRow:
    group: str | None  # the workspace, user, key, model or day; None: requests without one
    totals: Totals
    name: str | None = None  # by key: the key's name, when it has one


def name_keys(report: UsageReport, names: dict[str, str]) -> UsageReport:
    """Label the rows of a report by key with the keys' names (key id -> name)."""
    if report.by == "key":
        for row in report.rows:
            row.name = names.get(row.group or "")
    return report


@dataclass(slots=True)
class UsageReport:
    org: str
    by: str
    start: date
    end: date
    rows: list[UsageRow] = field(default_factory=list)
    total: Totals = field(default_factory=Totals)


def date_range(start: str | None, end: str | None, today: date) -> tuple[date, date]:
    """Parse an inclusive ``YYYY-MM-DD`` range. Defaults: ``end`` today, ``start`` 29 days
    before ``end``. Raises ``ReportError`` for bad dates, start after end, or a range over
    ``MAX_DAYS`` days."""

    def parse(text: str, what: str) -> date:
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise ReportError(f"{what}: expected a date as YYYY-MM-DD, got {text!r}") from None

    last = parse(end, "to") if end else today
    first = parse(start, "from") if start else last - timedelta(days=29)
    if first > last:
        raise ReportError(f"from ({first}) is after to ({last})")
    if (last - first).days + 1 > MAX_DAYS:
        raise ReportError(f"the date range is longer than {MAX_DAYS} days")
    return first, last


def _totals(row: UsageSums) -> Totals:
    return Totals(
        requests=row.requests,
        failures=row.failures,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cache_write_tokens=row.cache_write_tokens,
        cache_read_tokens=row.cache_read_tokens,
        cost=row.cost,
    )


async def usage_report(store: Store, org: str, by: str, start: date, end: date) -> UsageReport:
    """Spend, tokens and requests of ``org`` from ``start`` to ``end`` (inclusive), grouped
    ``by`` one of ``GROUPINGS`` (see the module docstring)."""
    if by not in GROUPINGS:
        raise ReportError(f"by: expected one of {', '.join(GROUPINGS)}, got {by!r}")
    history = history_of(store)
    first, last = start.isoformat(), end.isoformat()
    report = UsageReport(org, by, start, end)
    for row in await history.usage(org, "org", first, last):
        report.total.add(_totals(row))
    if by == "org":
        report.rows.append(UsageRow(org, report.total))
        return report
    rows = await history.usage(org, by, first, last)
    named = sorted((r for r in rows if r.group is not None), key=lambda r: r.group or "")
    report.rows += [UsageRow(r.group, _totals(r)) for r in named]
    rest = Totals()
    for r in rows:
        if r.group is None:
            rest.add(_totals(r))
    if not rest.empty:
        report.rows.append(UsageRow(None, rest))
    return report


def report_dict(report: UsageReport) -> dict[str, Any]:
    return {
        "org": report.org,
        "by": report.by,
        "from": report.start.isoformat(),
        "to": report.end.isoformat(),
        "rows": [_row_dict(report.by, r) for r in report.rows],
        "total": report.total.as_dict(),
    }


def _row_dict(by: str, r: UsageRow) -> dict[str, Any]:
    if by == "key":
        return {by: r.group, "name": r.name, **r.totals.as_dict()}
    return {by: r.group, **r.totals.as_dict()}


def to_json(report: UsageReport) -> str:
    return orjson.dumps(report_dict(report), option=orjson.OPT_INDENT_2).decode()


CSV_COLUMNS = (
    "requests",
    "failures",
    "input_tokens",
    "output_tokens",
    "cache_write_tokens",
    "cache_read_tokens",
    "cost_usd",
)


def to_csv(report: UsageReport) -> str:
    """One line per row (the group column is named after the grouping; empty for requests
    without one) and no total line, so that the file sums cleanly in a spreadsheet."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = ["name"] if report.by == "key" else []
    w.writerow([report.by, *names, *CSV_COLUMNS])
    for r in report.rows:
        d = r.totals.as_dict()
        label = [r.name or ""] if names else []
        w.writerow([r.group or "", *label, *(d[c] for c in CSV_COLUMNS)])
    return buf.getvalue()


# --- sessions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """One model's share of a session. Tokens by kind; cost in micro-USD."""

    model: str
    requests: int
    failures: int
    cost: int
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(ModelUsage) if f.name != "cost"}
        return {**out, "cost_micro": self.cost, "cost_usd": format_usd(self.cost)}


@dataclass(frozen=True, slots=True)
class SessionReport:
    """A session's totals, like a coding assistant's ``/cost``. Durations in ms:
    ``wall_ms`` runs from the start of its first request (when it was sent upstream) to
    the end of its last one, so it is never shorter than one request; ``api_ms`` is the
    sum of upstream time (above ``wall_ms`` when requests ran in parallel).
    ``input_tokens`` is uncached input; cache writes and reads are counted apart, and
    ``models`` splits everything by model (most expensive first)."""

    org: str
    session_id: str
    requests: int
    failures: int
    cost: int
    api_ms: int
    wall_ms: int
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    first_ms: int
    last_ms: int
    models: tuple[ModelUsage, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        skip = ("cost", "models")
        out = {f.name: getattr(self, f.name) for f in fields(SessionReport) if f.name not in skip}
        return {
            **out,
            "cost_micro": self.cost,
            "cost_usd": format_usd(self.cost),
            "models": [m.as_dict() for m in self.models],
        }


def _sessions(found: Iterable[SessionSums]) -> list[SessionReport]:
    """Reports of per-model session sums, one per (organization, session), in the order
    their first rows came."""
    grouped: dict[tuple[str, str], list[SessionSums]] = {}
    for row in found:
        grouped.setdefault((row.org, row.session), []).append(row)
    out = []
    for (org, sid), rows in grouped.items():
        models = sorted(
            (
                ModelUsage(
                    model=r.model,
                    requests=r.requests,
                    failures=r.failures,
                    cost=r.cost,
                    input_tokens=r.input_tokens,
                    output_tokens=r.output_tokens,
                    cache_write_tokens=r.cache_write_tokens,
                    cache_read_tokens=r.cache_read_tokens,
                )
                for r in rows
            ),
            key=lambda m: (-m.cost, m.model),
        )
        first, last = min(r.first_ms for r in rows), max(r.last_ms for r in rows)
        out.append(
            SessionReport(
                org=org,
                session_id=sid,
                requests=sum(m.requests for m in models),
                failures=sum(m.failures for m in models),
                cost=sum(m.cost for m in models),
                api_ms=sum(r.upstream_ms for r in rows),
                wall_ms=max(0, last - first),
                input_tokens=sum(m.input_tokens for m in models),
                output_tokens=sum(m.output_tokens for m in models),
                cache_write_tokens=sum(m.cache_write_tokens for m in models),
                cache_read_tokens=sum(m.cache_read_tokens for m in models),
                first_ms=first,
                last_ms=last,
                models=tuple(models),
            )
        )
    return out


async def find_sessions(store: Store, orgs: Iterable[str], session_id: str) -> list[SessionReport]:
    """The session in every organization that has one by this id (the id alone does not
    say which organization's it is), sorted by organization. Usually one report; empty
    when none has it."""
    found = await history_of(store).sessions(orgs, session_id)
    return sorted(_sessions(found), key=lambda s: s.org)


async def list_sessions(store: Store, org: str, limit: int = 20) -> list[SessionReport]:
    """The organization's ``limit`` most recent sessions (by their last request's end),
    newest first."""
    found = await history_of(store).recent_sessions(org, limit)
    return sorted(_sessions(found), key=lambda s: (-s.last_ms, s.session_id))
