"""Admin routes for API keys: create (the secret shown once), list, show, edit, revoke,
rotate.

Keys carry a name, an optional expiry, a model allow-list of patterns, tags, their own
limits and budgets (`tollway.limits.apikeys.KeySettings`); creating and editing check them
with the same code (`tollway.limits.keysettings`). Each admin route module exposes
``ROUTES``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from aiohttp import web
from pydantic import Field, field_validator
from tollway.limits.apikeys import DEFAULT_OVERLAP_MS, LIMITS, KeyRecord, KeySettings
from tollway.limits.durations import parse_ms
from tollway.limits.errors import UnknownKey
from tollway.limits.keysettings import SETTINGS, SettingError, record_fields
from tollway.proxy.admin.context import (
    BOOL,
    INT,
    NULLABLE_STR,
    STR,
    ApiError,
    Body,
    answer,
    body,
    ctx,
    member,
    org,
    schema_object,
)
from tollway.proxy.admin.openapi import Route

_LIST = {"type": "array", "items": {"type": "string"}}


def _duration(value: str | None, zero: bool = False) -> str | None:
    if value is not None:
        parse_ms(value, zero=zero)  # ValueError: pydantic names the field
    return value


_AMOUNT = "USD with at most 6 decimals (text or number), at most 1e9"
_LIMIT_HELP = {
    "rpm": "The key's own requests/minute (up to 3 decimals).",
    "tpm": "The key's own tokens/minute.",
    "input_tpm": "The key's own input tokens/minute.",
    "output_tpm": "The key's own output tokens/minute.",
}


class KeySettingsBody(Body):
    """A key's settings (`tollway.limits.keysettings`): typed here, checked there, the
    same rules for creating a key and editing it."""

    name: str | None = None
    expires_in: str | None = Field(
        None, description="The key stops working after this long: `<N>s|m|h|d|w`, e.g. `30d`."
    )
    models: list[str] | None = Field(
        None,
        description="Model patterns the key may call (`*`, `?`), e.g. `gpt-4o*`; "
        "absent or null: every model.",
    )
    tags: list[str] | None = None
    rpm: str | int | Decimal | None = Field(None, description=_LIMIT_HELP["rpm"])
    tpm: str | int | Decimal | None = Field(None, description=_LIMIT_HELP["tpm"])
    input_tpm: str | int | Decimal | None = Field(None, description=_LIMIT_HELP["input_tpm"])
    output_tpm: str | int | Decimal | None = Field(None, description=_LIMIT_HELP["output_tpm"])
    budget: str | int | Decimal | None = Field(
        None, description=f"The key's spend budget per period: {_AMOUNT}; 0 pauses the key."
    )
    budget_period: Literal["day", "week", "month"] | None = Field(
        None, description="Calendar period of the budget in server.timezone (default month)."
    )
    session_budget: str | int | Decimal | None = Field(
        None,
        description=f"What one session id may spend with the key: {_AMOUNT}, more than 0 "
        "(clients may ask less with x-tollway-session-budget).",
    )
    max_in_flight: int | None = Field(
        None, description="At most this many of the key's requests out at once (>= 1)."
    )

    def given(self, *, nulls: bool) -> dict[str, Any]:
        """The settings in the body by name; with `nulls` a null one is kept (it clears
        the setting), else it is left out (not given)."""
        data = self.model_dump(include=set(self.model_fields_set) & set(SETTINGS))
        return {k: v for k, v in data.items() if nulls or v is not None}


class KeyCreate(KeySettingsBody):
    """A new API key of the organization, optionally bound to a workspace and a user."""

    workspace: str | None = None
    user: str | None = None


class KeyPatch(KeySettingsBody):
    """New settings of a key: only the fields present change; null clears one (no limit,
    no budget, no expiry, every model)."""


def _fields(given: dict[str, Any], now_ms: int) -> dict[str, str]:
    try:
        return record_fields(given, now_ms)
    except SettingError as e:
        raise ApiError(400, str(e)) from None


class KeyRotate(Body):
    """Rotate a key's secret."""

    overlap: str | None = Field(
        None,
        description="How long the old secret keeps working: `<N>s|m|h|d|w`; `0s` stops it "
        f"at once (default {DEFAULT_OVERLAP_MS // 3_600_000}h).",
    )

    _overlap = field_validator("overlap")(lambda v: _duration(v, zero=True))


def _key(request: web.Request, r: KeyRecord) -> dict:
    return r.to_dict(ctx(request).clock.now_ms())


async def create_key(request: web.Request) -> web.Response:
    name, o = org(request)
    b = await body(request, KeyCreate)
    member(name, o, "workspace", b.workspace)
    member(name, o, "user", b.user)
    if refusal := o.no_keys_for(b.workspace):
        raise ApiError(400, refusal)
    c = ctx(request)
    now = c.clock.now_ms()
    settings = KeySettings.from_fields(_fields(b.given(nulls=False), now))
    record, secret = await c.apikeys.create(name, now, b.workspace, b.user, settings=settings)
    return answer({**_key(request, record), "key": secret}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    name, _ = org(request)
    records = await ctx(request).apikeys.list(name)
    return answer({"keys": [_key(request, r) for r in records]})


async def _get(request: web.Request) -> KeyRecord:
    try:
        return await ctx(request).apikeys.get(request.match_info["key_id"])
    except UnknownKey:
        raise ApiError(404, f"no key {request.match_info['key_id']!r}") from None


async def get_key(request: web.Request) -> web.Response:
    return answer(_key(request, await _get(request)))


async def patch_key(request: web.Request) -> web.Response:
    record = await _get(request)
    b = await body(request, KeyPatch)
    c = ctx(request)
    fields = _fields(b.given(nulls=True), c.clock.now_ms())
    try:
        record = await c.apikeys.update(record.key_id, fields)
    except UnknownKey as e:
        raise ApiError(409, str(e)) from None
    return answer(_key(request, record))


async def revoke_key(request: web.Request) -> web.Response:
    record = await _get(request)
    record = await ctx(request).apikeys.revoke(record.key_id)
    return answer(_key(request, record))


async def rotate_key(request: web.Request) -> web.Response:
    record = await _get(request)
    b = await body(request, KeyRotate)
    overlap = DEFAULT_OVERLAP_MS if b.overlap is None else parse_ms(b.overlap, zero=True)
    c = ctx(request)
    try:
        record, secret = await c.apikeys.rotate(record.key_id, c.clock.now_ms(), overlap)
    except UnknownKey as e:
        raise ApiError(409, str(e)) from None
    return answer({**_key(request, record), "key": secret})


_KEY = schema_object(
    ("id", "org", "name", "hint", "created_ms", "revoked", "status", "models", "tags"),
    id=STR,
    org=STR,
    workspace=NULLABLE_STR,
    user=NULLABLE_STR,
    name=STR,
    hint=STR,
    created_ms=INT,
    created=STR,
    revoked=BOOL,
    status={"enum": ["active", "expired", "revoked"]},
    expires_ms={"type": ["integer", "null"]},
    expires=NULLABLE_STR,
    models=_LIST,
    tags=_LIST,
    rotated_ms={"type": ["integer", "null"]},
    old_secret_until_ms={"type": ["integer", "null"]},
    limits=schema_object((), **{n: NULLABLE_STR for n in LIMITS}),
    budget_micro={"type": ["integer", "null"]},
    budget_period={"type": ["string", "null"]},
    session_budget_micro={"type": ["integer", "null"]},
    max_in_flight={"type": ["integer", "null"]},
)
_WITH_SECRET = {**_KEY, "required": [*_KEY["required"], "key"]}

ROUTES = [
    Route(
        "POST",
        "/orgs/{org}/keys",
        create_key,
        "Create an API key; the answer holds the secret (`key`), shown only this once.",
        "keys",
        _WITH_SECRET,
        status=201,
        body=KeyCreate,
    ),
    Route(
        "GET",
        "/orgs/{org}/keys",
        list_keys,
        "List an organization's keys (never their secrets).",
        "keys",
        schema_object(("keys",), keys={"type": "array", "items": _KEY}),
    ),
    Route("GET", "/keys/{key_id}", get_key, "Show one key.", "keys", _KEY),
    Route(
        "PATCH",
        "/keys/{key_id}",
        patch_key,
        "Change a key's settings: only the fields given change, null clears one; the "
        "same rules as at creation. Every proxy applies it within a second. A revoked key "
        "is 409.",
        "keys",
        _KEY,
        body=KeyPatch,
    ),
    Route(
        "POST",
        "/keys/{key_id}/rotate",
        rotate_key,
        "Give a key a new secret (`key`, shown only this once); the old secret keeps "
        "working until the overlap ends (`old_secret_until_ms`), then is refused (401).",
        "keys",
        _WITH_SECRET,
        body=KeyRotate,
    ),
    Route(
        "POST",
        "/keys/{key_id}/revoke",
        revoke_key,
        "Revoke a key: refused on every proxy from the next request.",
        "keys",
        _KEY,
    ),
]
