"""Admin routes for spend caps (on top of `tollway.limits.caps.Caps`): every cap in force,
and run-time overrides of the organization's, a workspace's, a seat tier's, a user's and a
model name or pattern's cap, monthly, daily or weekly (query ``period``).

An override applies to the very next request and wins over the YAML until deleted
(``DELETE`` drops it: the YAML applies again). A cap is USD (string or number, at most 6
decimals) or ``"unlimited"``; answers give money as integer micro-USD (a null cap is
unlimited). A model cap names its model or pattern in the query (``model``), since model
names may contain ``/``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from tollway.config.schema import Cap
from tollway.limits.capplans import PERIODS
from tollway.limits.caps import Caps
from tollway.limits.seats import UNLIMITED
from tollway.proxy.admin.context import (
    BOOL,
    STR,
    AdminContext,
    ApiError,
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


def _caps(c: AdminContext) -> Caps:
    return Caps(c.store, lambda: c.cfg)


async def in_force(c: AdminContext, name: str) -> dict[str, Any]:
    """Every cap of organization `name` in force now (`Caps.in_force`)."""
    return await _caps(c).in_force(name)


async def caps(request: web.Request) -> web.Response:
    name, _ = org(request)
    return answer({"org": name, "caps": await in_force(ctx(request), name)})


class CapSet(Body):
    """A cap on extra usage for the route's period: USD, or "unlimited" (or null, as in
    the YAML)."""

    amount: Cap


def _target(request: web.Request, scope: str) -> tuple[str | None, str]:
    """(the scope's name, the period) of a cap route."""
    period = choice(request, "period", PERIODS, "month")
    if scope == "model":
        pattern = query(request, "model")
        if not pattern:
            raise ApiError(400, "model: a model name or pattern is required")
        return pattern, period
    return request.match_info.get(scope), period


async def _seen(c: AdminContext, name: str, scope: str) -> None:
    """A model pattern's change is seen by this process at once (the others within 1 s)."""
    if scope == "model" and c.users is not None:
        await c.users.entries(name, fresh=True)


def cap_handlers(scope: str) -> tuple[Any, Any]:
    """(set, clear) handlers of the caps of one scope: org, workspace, tier, user (the
    name is the path parameter named after the scope) or model (the query's ``model``)."""

    async def set_cap(request: web.Request) -> web.Response:
        name, _ = org(request)
        b = await body(request, CapSet)
        c = ctx(request)
        which, period = _target(request, scope)
        amount = UNLIMITED if b.amount is None else b.amount
        await _caps(c).set(name, scope, which, amount, period)
        await _seen(c, name, scope)
        return answer({"org": name, "caps": await in_force(c, name)})

    async def clear_cap(request: web.Request) -> web.Response:
        name, _ = org(request)
        c = ctx(request)
        which, period = _target(request, scope)
        removed = await _caps(c).clear(name, scope, which, period)
        await _seen(c, name, scope)
        return answer({"org": name, "removed": removed, "caps": await in_force(c, name)})

    return set_cap, clear_cap


# --- the route table -------------------------------------------------------------------------
_NULLABLE_INT = {"type": ["integer", "null"]}
_ONE = schema_object(("cap", "source"), cap=_NULLABLE_INT, source=STR)
_CAP = schema_object(
    ("cap", "source", "daily", "weekly"), cap=_NULLABLE_INT, source=STR, daily=_ONE, weekly=_ONE
)
_GROUPS = ("workspaces", "tiers", "users", "models")
CAPS = schema_object(
    ("organization", *_GROUPS),
    organization=_CAP,
    **{n: {"type": "object", "additionalProperties": _CAP} for n in _GROUPS},
)
_CAPS_ANSWER = schema_object(("org", "caps"), org=STR, caps=CAPS, removed=BOOL)
_PERIOD = Param(
    "period",
    "The cap's calendar period in server.timezone: month (default), day or week.",
    {"enum": list(PERIODS)},
)
_MODEL = Param(
    "model",
    "A model name or pattern (`claude-opus-*`): the cap is on the extra usage of the "
    "models it matches, across the organization.",
    required=True,
)
_SCOPES = {
    "organization": "org",
    "workspaces": "workspace",
    "tiers": "tier",
    "users": "user",
    "models": "model",
}

ROUTES = [
    Route(
        "GET",
        "/orgs/{org}/caps",
        caps,
        "Spend caps in force now: monthly, daily and weekly, at every scope and per model.",
        "spend",
        _CAPS_ANSWER,
    )
]
for _segment, _scope in _SCOPES.items():
    _path = f"/orgs/{{org}}/caps/{_segment}"
    if _scope not in ("org", "model"):
        _path += f"/{{{_scope}}}"
    _query = (_PERIOD, _MODEL) if _scope == "model" else (_PERIOD,)
    _set, _clear = cap_handlers(_scope)
    _what = {
        "org": "the organization's cap",
        "model": "the organization's cap on a model name or pattern",
    }.get(_scope, f"a {_scope}'s cap")
    ROUTES += [
        Route(
            "PUT",
            _path,
            _set,
            f"Override {_what} for a period (USD or unlimited), from the next request on.",
            "spend",
            _CAPS_ANSWER,
            query=_query,
            body=CapSet,
        ),
        Route(
            "DELETE",
            _path,
            _clear,
            f"Drop the override of {_what} for a period: the config applies again.",
            "spend",
            _CAPS_ANSWER,
            query=_query,
        ),
    ]
