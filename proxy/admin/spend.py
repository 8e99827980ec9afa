"""Admin routes for spend (on top of `tollway.limits.spend.Spend`): month-to-date spend, monthly
statements, extra usage (run-time overrides), users' status, and limit-increase requests
(list, file, approve, deny). Spend caps: `tollway.proxy.admin.caps`.

Overrides apply to the very next request and win over the YAML until deleted (``DELETE``
drops the override: the YAML applies again). A cap is USD (string or number, at most 6
decimals) or ``"unlimited"``. Answers give money as integer micro-USD, as `Spend` returns
it (``spend``, ``included``, ``extra``, ``cap``; a null cap is unlimited).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field
from tollway.config.schema import Cap, Organization
from tollway.limits.increases import LimitIncreases
from tollway.limits.rkeys import Fields, Scope
from tollway.limits.spend import UNLIMITED, Spend
from tollway.limits.statement import statement_csv
from tollway.proxy.admin import caps as admin_caps
from tollway.proxy.admin.context import (
    BOOL,
    INT,
    STR,
    AdminContext,
    Body,
    answer,
    body,
    choice,
    ctx,
    org,
    query,
    schema_object,
)
from tollway.proxy.admin.openapi import Param, Route


def _spend(c: AdminContext) -> Spend:
    return Spend(c.store, c.clock, lambda: c.cfg)


def _increases(c: AdminContext) -> LimitIncreases:
    return LimitIncreases(_spend(c))


def _month(request: web.Request) -> str | None:
    return request.match_info.get("month") or query(request, "month")


async def month_to_date(request: web.Request) -> web.Response:
    name, _ = org(request)
    return answer(await _spend(ctx(request)).month_to_date(name, _month(request)))


async def statement(request: web.Request) -> web.Response:
    name, _ = org(request)
    fmt = choice(request, "format", ("json", "csv"), "json")
    st = await _spend(ctx(request)).statement(name, _month(request))
    if fmt == "csv":
        return web.Response(text=statement_csv(st), content_type="text/csv")
    return answer(st.to_dict())


class ExtraUsageSet(Body):
    """Extra usage on or off (for the organization, or for one user)."""

    enabled: bool


async def extra_usage(request: web.Request) -> web.Response:
    name, o = org(request)
    spend = _spend(ctx(request))
    users = {u: (await spend.user_status(name, u)).extra_usage for u in sorted(o.users)}
    overrides = await spend.overrides(name)
    return answer(
        {
            "org": name,
            "configured": o.extra_usage.enabled,
            "override": {"1": True, "0": False}.get(overrides.get(Fields.extra(Scope.ORG), "")),
            "users": users,
        }
    )


async def set_extra(request: web.Request) -> web.Response:
    name, _ = org(request)
    b = await body(request, ExtraUsageSet)
    await _spend(ctx(request)).set_extra_usage(name, b.enabled, request.match_info.get("user"))
    return await extra_usage(request)


async def clear_extra(request: web.Request) -> web.Response:
    name, _ = org(request)
    await _spend(ctx(request)).clear_extra_usage(name, request.match_info.get("user"))
    return await extra_usage(request)


async def user_status(request: web.Request) -> web.Response:
    name, _ = org(request)
    status = await _spend(ctx(request)).user_status(name, request.match_info["user"])
    return answer(status.to_dict())


async def pending(request: web.Request) -> web.Response:
    name, _ = org(request)
    found = await _increases(ctx(request)).pending(name)
    return answer({"org": name, "pending": [p.to_dict() for p in found]})


class LimitRequestFile(Body):
    """File a limit-increase request on a user's behalf (one pending per user)."""

    user: str = Field(min_length=1)
    reason: str = Field("", max_length=2000)


async def file_request(request: web.Request) -> web.Response:
    name, _ = org(request)
    b = await body(request, LimitRequestFile)
    filed = await _increases(ctx(request)).file(name, b.user, b.reason)
    return answer(filed.to_dict(), status=201)


class Approval(Body):
    """Approve with exactly one of: a new cap for the user (USD or "unlimited") or a move
    to another seat tier (its included usage and cap)."""

    cap: Cap = None  # absent: not a cap approval; null or "unlimited": no cap
    tier: str | None = None
    note: str = Field("", max_length=2000)


class Denial(Body):
    note: str = Field("", max_length=2000)


async def approve(request: web.Request) -> web.Response:
    name, _ = org(request)
    b = await body(request, Approval)
    user = request.match_info["user"]
    cap = (UNLIMITED if b.cap is None else b.cap) if "cap" in b.model_fields_set else None
    decided = await _increases(ctx(request)).approve(name, user, cap, b.tier, b.note)
    return answer(decided.to_dict())


async def deny(request: web.Request) -> web.Response:
    name, _ = org(request)
    b = await body(request, Denial)
    decided = await _increases(ctx(request)).deny(name, request.match_info["user"], b.note)
    return answer(decided.to_dict())


async def caps_section(c: AdminContext, name: str, o: Organization) -> dict[str, Any]:
    """The caps part of the live-limits answer: caps in force and this month's spend."""
    spend = _spend(c)
    return {
        "caps": await admin_caps.in_force(c, name),
        "month_to_date": await spend.month_to_date(name),
    }


# --- the route table -------------------------------------------------------------------------

_NULLABLE_INT = {"type": ["integer", "null"]}
_LINE = schema_object(("spend", "included", "extra"), spend=INT, included=INT, extra=INT)
_LINES = {"type": "object", "additionalProperties": _LINE}
_MTD = schema_object(
    ("org", "month", "organization"),
    org=STR,
    month=STR,
    timezone=STR,
    period_start_ms=INT,
    period_end_ms=INT,
    organization=_LINE,
    workspaces=_LINES,
    users=_LINES,
    keys=_LINES,
)
_EXTRA = schema_object(
    ("org", "configured", "users"),
    org=STR,
    configured=BOOL,
    override={"type": ["boolean", "null"]},
    users={"type": "object", "additionalProperties": BOOL},
)
_USER = schema_object(
    ("user", "spend", "extra", "cap", "extra_usage"),
    user=STR,
    seat={"type": ["string", "null"]},
    workspace={"type": ["string", "null"]},
    included=INT,
    spend=INT,
    extra=INT,
    cap=_NULLABLE_INT,
    cap_source=STR,
    extra_usage=BOOL,
)
_REQUEST = schema_object(
    ("id", "org", "user", "status", "asked_ms"),
    id=STR,
    org=STR,
    user=STR,
    reason=STR,
    status={"enum": ["pending", "approved", "denied"]},
    asked_ms=INT,
    decided_ms=_NULLABLE_INT,
    note=STR,
    decision={"type": "object"},
)
_MONTH_PARAM = Param("month", "A month, YYYY-MM (default: this month).", {"type": "string"})
_FORMAT = Param("format", "json (default) or csv.", {"enum": ["json", "csv"]})

ROUTES = [
    Route(
        "GET",
        "/orgs/{org}/spend",
        month_to_date,
        "Month-to-date spend (included and extra) of the organization, its workspaces, "
        "users and keys.",
        "spend",
        _MTD,
        query=(_MONTH_PARAM,),
    ),
    Route(
        "GET",
        "/orgs/{org}/statements/{month}",
        statement,
        "The month's usage statement per user, cross-checked with the ledger; the "
        "amount due (postpaid extra usage) to invoice.",
        "spend",
        schema_object(("org", "month", "lines", "spend", "amount_due"), lines={"type": "array"}),
        query=(_FORMAT,),
        csv=True,
    ),
    Route(
        "GET",
        "/orgs/{org}/extra-usage",
        extra_usage,
        "Extra usage: the config's setting, the override, and each user's state now.",
        "spend",
        _EXTRA,
    ),
    Route(
        "PUT",
        "/orgs/{org}/extra-usage",
        set_extra,
        "Turn extra usage on or off for the organization (off: off for everyone).",
        "spend",
        _EXTRA,
        body=ExtraUsageSet,
    ),
    Route(
        "DELETE",
        "/orgs/{org}/extra-usage",
        clear_extra,
        "Drop the organization's extra-usage override.",
        "spend",
        _EXTRA,
    ),
    Route(
        "PUT",
        "/orgs/{org}/extra-usage/users/{user}",
        set_extra,
        "Turn extra usage on or off for one user.",
        "spend",
        _EXTRA,
        body=ExtraUsageSet,
    ),
    Route(
        "DELETE",
        "/orgs/{org}/extra-usage/users/{user}",
        clear_extra,
        "Drop a user's extra-usage override.",
        "spend",
        _EXTRA,
    ),
    Route(
        "GET",
        "/orgs/{org}/users/{user}",
        user_status,
        "A user's seat, included usage, month-to-date spend, cap and extra usage.",
        "spend",
        _USER,
    ),
    Route(
        "GET",
        "/orgs/{org}/limit-requests",
        pending,
        "Pending limit-increase requests, oldest first, with each user's status.",
        "approvals",
        schema_object(
            ("org", "pending"),
            org=STR,
            pending={
                "type": "array",
                "items": schema_object(("request", "user"), request=_REQUEST, user=_USER),
            },
        ),
    ),
    Route(
        "POST",
        "/orgs/{org}/limit-requests",
        file_request,
        "File a limit-increase request for a user (one pending per user).",
        "approvals",
        _REQUEST,
        status=201,
        body=LimitRequestFile,
    ),
    Route(
        "POST",
        "/orgs/{org}/limit-requests/{user}/approve",
        approve,
        "Approve a user's pending request: a new cap, or a move to another tier.",
        "approvals",
        _REQUEST,
        body=Approval,
    ),
    Route(
        "POST",
        "/orgs/{org}/limit-requests/{user}/deny",
        deny,
        "Deny a user's pending request; nothing else changes.",
        "approvals",
        _REQUEST,
        body=Denial,
    ),
]
