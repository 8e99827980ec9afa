"""Usage, cost and session reports, read from the counters that settle.lua keeps.

Data (one hash per organization per day of the server's time zone, kept ~13 months)::

    day:<YYYY-MM-DD>   fields "<dim>|<metric>"
                       dim    org | ws=W | user=U | key=K | model=M
                       metric req (successful requests) | fail (failed requests)
                              | in | out | cw | cr (tokens) | cost (micro-USD)
    sess:<id>          req, fail, up_ms, cost, in, out, cw, cr, the same per model as
                       "m|<model>|<metric>", first (earliest request start), last (latest
                       request end), in ms since the epoch
    sessions           sorted set: session id -> last request end (ms)

A day hash holds at most 7 fields per workspace, user, key and model seen that day, so its
size is bounded by the organization's own size, whatever the traffic.

Contracts:

- ``usage_report`` groups by ``org``, ``workspace``, ``user``, ``key``, ``model`` or
  ``day``; every row's numbers are sums of the day counters over the inclusive date range.
  Requests made without a workspace (or user) are gathered in one row whose ``group`` is
  None, so that the rows of every grouping add up to the organization's total.
- ``requests`` counts every forwarded metered request (successful or failed);
  ``failures`` the failed ones, which are never charged. Refused requests are not counted.
- Money is integer micro-USD; ``to_csv``/``to_json`` also write it as exact USD text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from typing import Any

import orjson
from tollway.limits.money import format_usd
from tollway.limits.store import Store

GROUPINGS = ("org", "workspace", "user", "key", "model", "day")
_DIM = {"workspace": "ws", "user": "user", "key": "key", "model": "model"}
MAX_DAYS = 400  # day counters are kept ~13 months (scriptplans.KEEP_MS): older days are empty


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


_METRIC = {
    "in": "input_tokens",
    "out": "output_tokens",
    "cw": "cache_write_tokens",
    "cr": "cache_read_tokens",
    "cost": "cost",
}


def _bump(t: Totals, metric: str, value: int) -> None:
    if metric == "req":
        t.requests += value
    elif metric == "fail":
        t.requests += value
        t.failures += value
    elif metric in _METRIC:
        name = _METRIC[metric]
        setattr(t, name, getattr(t, name) + value)


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


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


async def read_days(store: Store, org: str, when: Sequence[date]) -> list[dict[str, str]]:
    """The day hashes of ``org`` for each date, in one pipelined round trip."""
    pipe = store.client.pipeline(transaction=False)
    for d in when:
        pipe.hgetall(store.keys.day(org, d.isoformat()))
    return list(await store.call("usage_report", pipe.execute))


def group_day(counters: dict[str, str], by: str) -> tuple[Totals, dict[str, Totals]]:
    """(organization totals, totals by group) of one day hash. ``by`` is a grouping other
    than ``day``; ``org`` gives no groups."""
    org = Totals()
    groups: dict[str, Totals] = {}
    prefix = _DIM.get(by, "") + "="
    for name, raw in counters.items():
        dim, _, metric = name.rpartition("|")
        value = int(raw)
        if dim == "org":
            _bump(org, metric, value)
        elif by in _DIM and dim.startswith(prefix):
            _bump(groups.setdefault(dim[len(prefix) :], Totals()), metric, value)
    return org, groups


async def usage_report(store: Store, org: str, by: str, start: date, end: date) -> UsageReport:
    """Spend, tokens and requests of ``org`` from ``start`` to ``end`` (inclusive), grouped
    ``by`` one of ``GROUPINGS`` (see the module docstring)."""
    if by not in GROUPINGS:
        raise ReportError(f"by: expected one of {', '.join(GROUPINGS)}, got {by!r}")
    when = days(start, end)
    report = UsageReport(org, by, start, end)
    merged: dict[str, Totals] = {}
    for d, counters in zip(when, await read_days(store, org, when), strict=True):
        day_total, groups = group_day(counters, by)
        report.total.add(day_total)
        if by == "day" and not day_total.empty:
            report.rows.append(UsageRow(d.isoformat(), day_total))
        for name, t in groups.items():
            merged.setdefault(name, Totals()).add(t)
    if by == "org":
        report.rows.append(UsageRow(org, report.total))
    report.rows += [UsageRow(name, merged[name]) for name in sorted(merged)]
    if by in ("workspace", "user"):
        grouped = Totals()
        for t in merged.values():
            grouped.add(t)
        rest = report.total.minus(grouped)
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


_SESSION_METRICS = {
    "requests": "req",
    "failures": "fail",
    "cost": "cost",
    "input_tokens": "in",
    "output_tokens": "out",
    "cache_write_tokens": "cw",
    "cache_read_tokens": "cr",
}


def session_from_hash(org: str, session_id: str, h: dict[str, str]) -> SessionReport:
    """Read a ``sess:<id>`` hash (totals, ``m|<model>|<metric>`` fields, first, last).
    Sessions settled before the cache kinds were kept apart have them inside ``in``."""
    first, last = int(h.get("first", 0)), int(h.get("last", 0))
    per_model: dict[str, dict[str, int]] = {}
    for name, value in h.items():
        if name.startswith("m|"):
            model, _, metric = name[2:].rpartition("|")
            per_model.setdefault(model, {})[metric] = int(value)
    models = [
        ModelUsage(model=m, **{f: v.get(k, 0) for f, k in _SESSION_METRICS.items()})
        for m, v in per_model.items()
    ]
    models.sort(key=lambda m: (-m.cost, m.model))
    return SessionReport(
        org=org,
        session_id=session_id,
        **{f: int(h.get(k, 0)) for f, k in _SESSION_METRICS.items()},
        api_ms=int(h.get("up_ms", 0)),
        wall_ms=max(0, last - first),
        first_ms=first,
        last_ms=last,
        models=tuple(models),
    )


async def find_sessions(store: Store, orgs: Iterable[str], session_id: str) -> list[SessionReport]:
    """The session in every organization that has one by this id (sessions are stored
    under their organization, and the id alone does not say which: each is tried, in one
    pipelined round trip). Usually one report; empty when none has it."""
    names = sorted(orgs)
    pipe = store.client.pipeline(transaction=False)
    for org in names:
        pipe.hgetall(store.keys.session(org, session_id))
    found = await store.call("session_report", pipe.execute)
    return [session_from_hash(o, session_id, h) for o, h in zip(names, found, strict=True) if h]


async def list_sessions(store: Store, org: str, limit: int = 20) -> list[SessionReport]:
    """The organization's ``limit`` most recent sessions (by their last request's end),
    newest first, read in two round trips. Sessions are kept as long as the day counters."""
    ids = await store.call(
        "session_list", store.client.zrevrange, store.keys.sessions(org), 0, limit - 1
    )
    if not ids:
        return []
    pipe = store.client.pipeline(transaction=False)
    for sid in ids:
        pipe.hgetall(store.keys.session(org, sid))
    found = await store.call("session_report", pipe.execute)
    return [session_from_hash(org, sid, h) for sid, h in zip(ids, found, strict=True) if h]
