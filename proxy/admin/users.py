"""Admin routes for users and seats at run time: list, add, change (seat, workspace,
limits, monthly cap), remove. The precedence (`tollway.config.overlay`): the YAML
declares, run-time settings override it field by field, ``"default"`` drops a run-time
setting so the YAML's applies again. A user added here is metered and capped like a YAML
user from its next request, on every replica within a second.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiohttp import web
from pydantic import Field
from tollway.limits.money import parse_usd
from tollway.limits.seats import UNLIMITED
from tollway.limits.spend import Spend
from tollway.limits.users import CLEAR, LIMIT_NAMES, RuntimeUsers, UserError, describe
from tollway.proxy.admin.context import (
    NULLABLE_STR,
    STR,
    AdminContext,
    ApiError,
    Body,
    answer,
    body,
    ctx,
    org,
    schema_object,
)
from tollway.proxy.admin.openapi import Route

Number = str | int | Decimal


class UserAdd(Body):
    """A user added at run time, optionally with a seat tier and a workspace."""

    user: str = Field(min_length=1, max_length=200)
    seat: str | None = None
    workspace: str | None = None


class UserSet(Body):
    """What to change (absent: unchanged; ``"default"``: back to the YAML's)."""

    seat: str | None = None
    workspace: str | None = None
    rpm: Number | None = Field(None, description="Requests per minute, or `default`.")
    tpm: Number | None = Field(None, description="Tokens per minute, or `default`.")
    input_tpm: Number | None = None
    output_tpm: Number | None = None
    monthly_cap: Number | None = Field(
        None, description="USD, `unlimited`, or `default` (the tier's or the YAML's cap)."
    )
    daily_cap: Number | None = Field(None, description="The same, per calendar day.")
    weekly_cap: Number | None = Field(None, description="The same, per calendar week.")


# The user's own caps in a body → their period.
CAP_PERIODS = {"monthly_cap": "month", "daily_cap": "day", "weekly_cap": "week"}


def _caps_of(cap: dict[str, Any]) -> dict[str, Any]:
    """A user's caps in force, as users answers give them (monthly with its source)."""
    return {
        "monthly_cap": cap["cap"],
        "cap_source": cap["source"],
        "daily_cap": cap["daily"]["cap"],
        "weekly_cap": cap["weekly"]["cap"],
    }


def _users(c: AdminContext) -> RuntimeUsers:
    assert c.users is not None  # create_admin_app always gives one
    return c.users


def _spend(c: AdminContext) -> Spend:
    return Spend(c.store, c.clock, lambda: c.cfg)


async def _answer(request: web.Request, name: str, user: str, status: int = 200) -> web.Response:
    c = ctx(request)
    entries = await _users(c).entries(name)
    declared = user in c.holder.base.organizations[name].users
    found = describe(c.cfg.organizations[name], declared, user, entries.get(user))
    cap = (await _spend(c).caps(name))["users"][user]
    return answer({**found, **_caps_of(cap)}, status)


async def list_users(request: web.Request) -> web.Response:
    name, _ = org(request)
    c = ctx(request)
    entries = await _users(c).entries(name, fresh=True)
    yaml_users = c.holder.base.organizations[name].users
    caps = (await _spend(c).caps(name))["users"]
    out = [
        {
            **describe(c.cfg.organizations[name], u in yaml_users, u, entries.get(u)),
            **_caps_of(caps[u]),
        }
        for u in sorted(c.cfg.organizations[name].users)
    ]
    return answer({"org": name, "users": out})


async def add_user(request: web.Request) -> web.Response:
    name, _ = org(request)
    b = await body(request, UserAdd)
    c = ctx(request)
    try:
        await _users(c).add(c.holder.base.organizations[name], name, b.user, b.seat, b.workspace)
    except UserError as e:
        raise ApiError(409 if "already exists" in str(e) else 400, str(e)) from None
    return await _answer(request, name, b.user, 201)


def _cap(value: Number, field: str = "monthly_cap") -> int | str:
    if value in (UNLIMITED, CLEAR):
        return str(value)
    try:
        return parse_usd(value)
    except ValueError as e:
        raise ApiError(400, f"{field}: {e}") from None


async def set_user(request: web.Request) -> web.Response:
    name, _ = org(request)
    user = request.match_info["user"]
    b = await body(request, UserSet)
    c = ctx(request)
    caps = {
        period: _cap(getattr(b, field), field)
        for field, period in CAP_PERIODS.items()
        if getattr(b, field) is not None
    }
    limits = {n: str(getattr(b, n)) for n in LIMIT_NAMES if getattr(b, n) is not None}
    try:
        await _users(c).set(
            c.holder.base.organizations[name], name, user, b.seat, b.workspace, limits
        )
    except UserError as e:
        raise ApiError(404 if "unknown user" in str(e) else 400, str(e)) from None
    for period, cap in caps.items():
        if cap == CLEAR:
            await _spend(c).clear_cap(name, "user", user, period)
        else:
            await _spend(c).set_cap(name, "user", user, cap, period)
    return await _answer(request, name, user)


async def remove_user(request: web.Request) -> web.Response:
    name, _ = org(request)
    user = request.match_info["user"]
    c = ctx(request)
    try:
        gone = await _users(c).remove(c.holder.base.organizations[name], name, user)
    except UserError as e:
        raise ApiError(404, str(e)) from None
    revoked = await c.apikeys.revoke_user(name, user) if gone else []
    note = "removed" if gone else "run-time settings dropped; the YAML still declares the user"
    return answer(
        {"org": name, "user": user, "removed": gone, "revoked_keys": revoked, "note": note}
    )


_NUM = {"type": ["string", "null"]}
_USER = schema_object(
    ("user", "seat", "workspace", "limits", "source"),
    user=STR,
    seat=NULLABLE_STR,
    workspace=NULLABLE_STR,
    limits=schema_object((), **{n: _NUM for n in LIMIT_NAMES}),
    source={"enum": ["config", "runtime", "config+runtime"]},
    runtime={"type": "object"},
    monthly_cap={"type": ["integer", "null"]},
    cap_source=STR,
    daily_cap={"type": ["integer", "null"]},
    weekly_cap={"type": ["integer", "null"]},
)

ROUTES: list[Any] = [
    Route(
        "GET",
        "/orgs/{org}/users",
        list_users,
        "Every user of the organization (YAML and run time) with seat, limits, cap, source.",
        "users",
        schema_object(("org", "users"), org=STR, users={"type": "array", "items": _USER}),
    ),
    Route(
        "POST",
        "/orgs/{org}/users",
        add_user,
        "Add a user at run time (metered and capped from its next request; no YAML edit).",
        "users",
        _USER,
        status=201,
        body=UserAdd,
    ),
    Route(
        "PATCH",
        "/orgs/{org}/users/{user}",
        set_user,
        "Change a user's seat, workspace, limits or caps; `default` falls back to the YAML.",
        "users",
        _USER,
        body=UserSet,
    ),
    Route(
        "DELETE",
        "/orgs/{org}/users/{user}",
        remove_user,
        "Remove a user added at run time and revoke its keys (for a YAML user: drop its "
        "run-time settings).",
        "users",
        schema_object(
            ("org", "user", "removed"),
            org=STR,
            user=STR,
            removed={"type": "boolean"},
            revoked_keys={"type": "array", "items": STR},
        ),
    ),
]
