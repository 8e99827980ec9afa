"""Admin routes for organizations, and usage and session reports (keys: `keys.py`).

Each admin route module exposes ``ROUTES``, its part of the route table (see
`tollway.proxy.admin.openapi`); `tollway.proxy.admin.app` gathers them.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from aiohttp import web
from tollway.config.schema import Organization
from tollway.limits import reports
from tollway.proxy.admin.auth import caller
from tollway.proxy.admin.context import (
    INT,
    NULLABLE_STR,
    STR,
    ApiError,
    answer,
    choice,
    ctx,
    org,
    query,
    schema_object,
)
from tollway.proxy.admin.openapi import Param, Route

# --- organizations ---------------------------------------------------------------------------


def _org_summary(name: str, o: Organization) -> dict[str, Any]:
    return {
        "org": name,
        "billing_mode": o.billing.mode,
        "workspaces": sorted(o.workspaces),
        "users": sorted(o.users),
        "seat_tiers": sorted(o.seat_tiers),
    }


async def list_orgs(request: web.Request) -> web.Response:
    """Every organization for the operator; an organization's credential sees its own."""
    orgs = ctx(request).cfg.organizations
    who = caller(request)
    return answer({"orgs": [_org_summary(n, orgs[n]) for n in sorted(orgs) if who.sees(n)]})


# --- reports ---------------------------------------------------------------------------------


async def usage(request: web.Request) -> web.Response:
    name, _ = org(request)
    c = ctx(request)
    by = choice(request, "by", reports.GROUPINGS, "day")
    fmt = choice(request, "format", ("json", "csv"), "json")
    try:
        start, end = reports.date_range(
            query(request, "from"), query(request, "to"), date.fromisoformat(c.today())
        )
    except reports.ReportError as e:
        raise ApiError(400, str(e)) from None
    report = await reports.usage_report(c.store, name, by, start, end)
    if by == "key":
        reports.name_keys(report, await c.apikeys.names(name))
    if fmt == "csv":
        return web.Response(text=reports.to_csv(report), content_type="text/csv")
    return answer(reports.report_dict(report))


async def org_session(request: web.Request) -> web.Response:
    name, _ = org(request)
    session_id = request.match_info["session_id"]
    found = await reports.find_sessions(ctx(request).store, [name], session_id)
    if not found:
        raise ApiError(404, f"no session {session_id!r} in organization {name!r}")
    return answer(found[0].as_dict())


async def session(request: web.Request) -> web.Response:
    c = ctx(request)
    session_id = request.match_info["session_id"]
    found = await reports.find_sessions(c.store, c.cfg.organizations, session_id)
    if not found:
        raise ApiError(404, f"no session {session_id!r} in any organization")
    return answer({"sessions": [s.as_dict() for s in found]})


# --- the route table -------------------------------------------------------------------------

_TOTALS = schema_object(
    ("requests", "failures", "cost_micro", "cost_usd"),
    requests=INT,
    failures=INT,
    input_tokens=INT,
    output_tokens=INT,
    cache_write_tokens=INT,
    cache_read_tokens=INT,
    cost_micro=INT,
    cost_usd=STR,
)
_SESSION = schema_object(
    ("org", "session_id", "requests", "cost_micro", "api_ms", "wall_ms"),
    org=STR,
    session_id=STR,
    requests=INT,
    cost_micro=INT,
    cost_usd=STR,
    api_ms=INT,
    wall_ms=INT,
    input_tokens=INT,
    output_tokens=INT,
    first_ms=INT,
    last_ms=INT,
)
_DATE = {"type": "string", "format": "date"}
ROUTES = [
    Route(
        "GET",
        "/orgs",
        list_orgs,
        "List the organizations of the config.",
        "organizations",
        schema_object(("orgs",), orgs={"type": "array", "items": {"type": "object"}}),
    ),
    Route(
        "GET",
        "/orgs/{org}/usage",
        usage,
        "Usage and cost report: spend, tokens and requests by group, over a date range.",
        "reports",
        schema_object(
            ("org", "by", "from", "to", "rows", "total"),
            org=STR,
            by=STR,
            **{"from": _DATE, "to": _DATE},
            rows={
                "type": "array",
                "items": {
                    **_TOTALS,
                    "properties": {**_TOTALS["properties"], "name": NULLABLE_STR},
                },
            },
            total=_TOTALS,
        ),
        query=(
            Param(
                "by",
                "Grouping (default day); rows without a workspace/user are grouped as null; "
                "rows by key carry the key's `name`.",
                {"enum": list(reports.GROUPINGS)},
            ),
            Param("from", "First day, YYYY-MM-DD (default: 29 days before `to`).", _DATE),
            Param("to", "Last day, inclusive, YYYY-MM-DD (default: today).", _DATE),
            Param("format", "json (default) or csv.", {"enum": ["json", "csv"]}),
        ),
        csv=True,
    ),
    Route(
        "GET",
        "/orgs/{org}/sessions/{session_id}",
        org_session,
        "Session report (like `/cost`): cost, API and wall duration, tokens, requests.",
        "reports",
        _SESSION,
    ),
    Route(
        "GET",
        "/sessions/{session_id}",
        session,
        "Find a session in every organization and report it.",
        "reports",
        schema_object(("sessions",), sessions={"type": "array", "items": _SESSION}),
    ),
]
