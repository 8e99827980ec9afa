"""Admin route for the cost per developer (`tollway.limits.developers`): the same report as
`tollway developers`, as JSON. An organization's owner, admin and billing credentials read
it for their own organization (tag ``reports``)."""

from __future__ import annotations

from datetime import date

from aiohttp import web
from tollway.limits import reports
from tollway.limits.developers import developer_cost, report_workspace
from tollway.proxy.admin.context import INT, STR, ApiError, answer, ctx, org, query, schema_object
from tollway.proxy.admin.openapi import Param, Route

_DATE = {"type": "string", "format": "date"}


async def developers(request: web.Request) -> web.Response:
    name, o = org(request)
    c = ctx(request)
    try:
        workspace = report_workspace(o, name, query(request, "workspace"), query(request, "client"))
        start, end = reports.date_range(
            query(request, "from"), query(request, "to"), date.fromisoformat(c.today())
        )
    except (ValueError, reports.ReportError) as e:
        raise ApiError(400, str(e)) from None
    report = await developer_cost(
        c.store.history, name, start.isoformat(), end.isoformat(), workspace
    )
    return answer(report.to_dict())


_DAY = schema_object(
    ("day", "active_developers", "cost", "mean_cost"),
    day=_DATE,
    active_developers=INT,
    cost=INT,
    mean_cost=INT,
)

ROUTES = [
    Route(
        "GET",
        "/orgs/{org}/developers",
        developers,
        "Cost per active developer: per day (mean, nearest-rank p90) and per month, beside "
        "the reference figures ($6/day mean, < $12/day for 90 %, $100-200/month), micro-USD.",
        "reports",
        schema_object(
            ("org", "start", "end", "developers", "developer_days", "cost", "mean_daily"),
            org=STR,
            start=_DATE,
            end=_DATE,
            workspace={"type": ["string", "null"]},
            developers=INT,
            developer_days=INT,
            cost=INT,
            mean_daily=INT,
            p90_daily=INT,
            monthly=INT,
            days={"type": "array", "items": _DAY},
            reference={"type": "object"},
        ),
        query=(
            Param("from", "First day, YYYY-MM-DD (default: 29 days before `to`).", _DATE),
            Param("to", "Last day, inclusive, YYYY-MM-DD (default: today).", _DATE),
            Param("workspace", "Only requests attributed to this workspace.", {"type": "string"}),
            Param("client", "Only a client's requests (its client workspace).", {"type": "string"}),
        ),
    ),
]
